"""A mesh as a volume in the NeRF's box: ``Normalization`` maps its coordinates into the box (longest
half-extent ``NORMALISED_HALF_EXTENT``, centred) and back, so an export lands where the mesh was; then its
occupancy and signed distance on a grid.

Occupancy works for open and non-manifold meshes: the surface is voxelised, thickened by one voxel (closing
cracks and small holes), the outside is flood-filled from the box's border, and what it cannot reach is inside.
When the flood reaches everything (a hole larger than a voxel or two: a box without a lid), the generalised
winding number decides instead; a surface that wraps nothing (a plane) stays a one-voxel shell, so the mesh
still guides the shape instead of being refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from scipy import ndimage

from nfsd_server.scene.mesh_files import triangle_areas

NORMALISED_HALF_EXTENT = 0.5  # the mesh's longest half-extent in the box: the size of the starting blob
# Winding numbers (for meshes with holes) on a coarser grid of a decimated mesh: points × faces solid angles.
WINDING_RESOLUTION = 32
WINDING_FACES = 1000
WINDING_CHUNK = 1024  # points at a time: (chunk, faces, 3, 3) float32 ≈ 37 MB


@dataclass(frozen=True)
class Normalization:
    """Mesh coordinates ↔ the NeRF's box: box = (mesh − centre) · scale."""

    centre: tuple[float, float, float]
    scale: float

    @classmethod
    def fit(cls, vertices: np.ndarray, half_extent: float = NORMALISED_HALF_EXTENT) -> "Normalization":
        low, high = vertices.min(axis=0), vertices.max(axis=0)
        return cls(tuple(float(v) for v in (low + high) / 2), half_extent / float((high - low).max() / 2))

    @classmethod
    def of_mesh(cls, mesh: trimesh.Trimesh) -> "Normalization":
        """Fitted to the vertices the faces use: loose vertices do not shift or shrink the object."""
        return cls.fit(np.asarray(mesh.vertices)[np.unique(np.asarray(mesh.faces))])

    def to_box(self, points: np.ndarray) -> np.ndarray:
        return (points - np.asarray(self.centre)) * self.scale

    def from_box(self, points: np.ndarray) -> np.ndarray:
        return points / self.scale + np.asarray(self.centre)


def occupancy_grid(vertices: np.ndarray, faces: np.ndarray, resolution: int, bound: float) -> np.ndarray:
    """(R, R, R) bool, indexed [x, y, z] at ``linspace(-bound, bound, R)``: inside or on the surface.

    ``vertices`` are box coordinates. The surface is sampled densely enough that every voxel it crosses gets a
    sample (≥ 2 per voxel face area), so thin triangles and open edges are marked too.
    """
    pitch = 2.0 * bound / (resolution - 1)
    area = float(triangle_areas(vertices, faces).sum())
    count = int(min(4 * area / pitch**2 + 1000, 5_000_000))
    samples, _ = trimesh.sample.sample_surface(trimesh.Trimesh(vertices, faces, process=False), count, seed=0)
    # Corners and edge midpoints of the faces only: a loose vertex is not surface.
    edge_points = [vertices[faces].reshape(-1, 3), *((vertices[faces[:, i]] + vertices[faces[:, (i + 1) % 3]]) / 2 for i in range(3))]
    points = np.concatenate([samples, *edge_points])
    index = np.clip(np.round((points + bound) / pitch).astype(np.int64), 0, resolution - 1)
    shell = np.zeros((resolution,) * 3, bool)
    shell[tuple(index.T)] = True
    thick = ndimage.binary_dilation(shell, iterations=1)
    filled = ndimage.binary_fill_holes(thick)
    if filled.sum() > thick.sum():
        # Closed up to cracks: undo the thickening, keep the original shell (thin parts stay).
        return ndimage.binary_erosion(filled, iterations=1) | shell
    # The outside leaked in through a hole: what is inside is what the surface mostly wraps around.
    coarse = WINDING_RESOLUTION
    winding = winding_numbers(vertices, faces, coarse, bound)
    zoom = (resolution - 1) / (coarse - 1)
    fine = ndimage.map_coordinates(winding, np.indices((resolution,) * 3).reshape(3, -1) / zoom, order=1)
    return (np.abs(fine.reshape((resolution,) * 3)) > 0.5) | shell


def winding_numbers(vertices: np.ndarray, faces: np.ndarray, resolution: int, bound: float) -> np.ndarray:
    """(R, R, R) generalised winding number (Jacobson et al. 2013) at ``linspace(-bound, bound, R)``³.

    ≈ ±1 inside, 0 outside, fractional near holes: Σ solid angle / 4π over the triangles, each by
    Van Oosterom–Strackee. The mesh is first decimated to ``WINDING_FACES`` (cost is points × faces).
    """
    import fast_simplification

    if len(faces) > WINDING_FACES:
        vertices, faces = fast_simplification.simplify(
            vertices.astype(np.float32), faces.astype(np.int32), target_reduction=1.0 - WINDING_FACES / len(faces)
        )
    triangles = torch.as_tensor(vertices, dtype=torch.float32)[torch.as_tensor(faces.astype(np.int64))]  # (F, 3, 3)
    axis = torch.linspace(-bound, bound, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).view(-1, 3)
    total = torch.zeros(len(points))
    for start in range(0, len(points), WINDING_CHUNK):
        relative = triangles[None] - points[start : start + WINDING_CHUNK, None, None]  # (P, F, 3, 3)
        a, b, c = relative.unbind(2)
        la, lb, lc = a.norm(dim=-1), b.norm(dim=-1), c.norm(dim=-1)
        numerator = (a * torch.cross(b, c, dim=-1)).sum(-1)
        denominator = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        total[start : start + WINDING_CHUNK] = 2.0 * torch.atan2(numerator, denominator).sum(-1)
    return (total / (4 * math.pi)).view((resolution,) * 3).numpy()


def signed_distance_grid(occupancy: np.ndarray, bound: float) -> np.ndarray:
    """(R, R, R) float32 world units, < 0 inside, from the occupancy by two Euclidean distance transforms.

    Half a voxel is taken off each side so the zero level sits between the last inside and first outside sample.
    """
    pitch = 2.0 * bound / (occupancy.shape[0] - 1)
    outside = ndimage.distance_transform_edt(~occupancy)
    inside = ndimage.distance_transform_edt(occupancy)
    return (np.where(occupancy, 0.5 - inside, outside - 0.5) * pitch).astype(np.float32)


def refine_near_surface(
    sdf: np.ndarray, occupancy: np.ndarray, vertices: np.ndarray, faces: np.ndarray, bound: float
) -> np.ndarray:
    """(R, R, R) float32: ``sdf`` with the voxels within two of the surface set to their distance from the
    surface itself, so the zero level is the mesh's, not the occupancy's.

    The occupancy counts every voxel the surface touches as inside, up to ~0.9 voxel outside it, which put a
    sphere's zero level 0.6 voxel out (the object started too large). Near the surface each voxel gets its
    signed distance to the tangent plane at the nearest of dense surface samples; the plane's normal is turned
    to point where ``sdf`` grows (out), so inconsistently wound faces do not flip it. A part thinner than a
    voxel, which no voxel centre lies inside, keeps its occupancy's values instead of vanishing.
    """
    from scipy.spatial import cKDTree

    resolution = sdf.shape[0]
    pitch = 2.0 * bound / (resolution - 1)
    band = np.abs(sdf) <= 2.0 * pitch
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    count = int(min(16 * float(triangle_areas(vertices, faces).sum()) / pitch**2 + 1000, 2_000_000))
    samples, face_index = trimesh.sample.sample_surface(mesh, count, seed=0)
    normals = np.asarray(mesh.face_normals)[face_index]
    finite = np.isfinite(normals).all(axis=1) & (np.linalg.norm(normals, axis=1) > 0.5)  # zero-area faces have none
    samples, normals = samples[finite], normals[finite]

    def sdf_at(points: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(sdf, ((points + bound) / pitch).T, order=1, mode="nearest")

    inward = sdf_at(samples - 1.5 * pitch * normals) > sdf_at(samples + 1.5 * pitch * normals)
    normals[inward] *= -1.0
    axis = np.linspace(-bound, bound, resolution)
    index = np.nonzero(band)
    centres = np.stack([axis[index[0]], axis[index[1]], axis[index[2]]], axis=1)
    _, nearest = cKDTree(samples).query(centres)
    refined = sdf.copy()
    refined[index] = ((centres - samples[nearest]) * normals[nearest]).sum(axis=1)
    inside = refined < 0
    vanished = occupancy & ~inside & ~ndimage.binary_dilation(inside, iterations=1)
    refined[vanished] = sdf[vanished]
    return refined.astype(np.float32)

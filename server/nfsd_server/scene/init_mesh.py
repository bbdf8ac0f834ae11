"""An artist's mesh as the start of a generation: load and check it, fit it into the NeRF's box, and turn it into
the occupancy, signed distance and shape loss that guide training.

Frames: OBJ and PLY are read as they are (+Z up, Blender's world); GLB is glTF's +Y up and is turned to +Z up on
load. ``Normalization`` maps those coordinates into the box (longest half-extent ``NORMALISED_HALF_EXTENT``,
centred) and back, so the export lands where the mesh was.

Occupancy works for open and non-manifold meshes: the surface is voxelised, thickened by one voxel (closing
cracks and small holes), the outside is flood-filled from the box's border, and what it cannot reach is inside.
When the flood reaches everything (a hole larger than a voxel or two: a box without a lid), the generalised
winding number decides instead; a surface that wraps nothing (a plane) stays a one-voxel shell, so the mesh
still guides the shape instead of being refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy import ndimage
from torch import Tensor

import nfsd_contract as contract
from nfsd_server.scene.field import FieldConfig, NeRFField

NORMALISED_HALF_EXTENT = 0.5  # the mesh's longest half-extent in the box: the size of the starting blob
SHAPE_RESOLUTION = 96  # occupancy / signed-distance grid over the box (pitch 2/95 ≈ 0.02 for bound 1)
# Winding numbers (for meshes with holes) on a coarser grid of a decimated mesh: points × faces solid angles.
WINDING_RESOLUTION = 32
WINDING_FACES = 1000
WINDING_CHUNK = 1024  # points at a time: (chunk, faces, 3, 3) float32 ≈ 37 MB
SHAPE_LOSS_POINTS = 4096  # random points per step for the shape loss
SHAPE_LOSS_SOFTNESS = 0.05  # world units: disagreement this close to the surface costs little (Latent-NeRF's σ_S)
# At strength 1, per latent element: the distillation loss sums over the latent's elements, so the shape loss
# scales with them too. Measured with the analytic prior (3×32×32): 1 per element let the prompt carve a cube
# into a ball (volume IoU with the cube 0.52 → 0.78 at 0.3, 0.96 at 3).
SHAPE_LOSS_WEIGHT = 3.0
# Beyond this a coordinate is a unit or export mistake (1e9 m is past the Moon), and squares of it overflow.
MAX_COORDINATE = 1e9
# glTF's +Y up → +Z up (Blender's importer: (x, y, z) → (x, −z, y)).
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


class MeshError(ValueError):
    """The init mesh cannot be used; the message names the problem and the fix."""


def check_mesh_bytes(size: int, name: str) -> None:
    if size == 0:
        raise MeshError(f"init mesh {name!r} is an empty file; export the mesh again as GLB, OBJ or PLY")
    if size > contract.MAX_INIT_MESH_BYTES:
        raise MeshError(
            f"init mesh {name!r} is {size / 2**20:.1f} MiB; the limit is {contract.MAX_INIT_MESH_BYTES // 2**20} MiB "
            "(decimate it first)"
        )


def mesh_format(name: str) -> str:
    """'glb' | 'obj' | 'ply' from the file name, or MeshError."""
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix not in contract.INIT_MESH_FORMATS:
        raise MeshError(f"init mesh {name!r} must be one of {contract.INIT_MESH_FORMATS} (by its extension)")
    return suffix


def load_mesh(path: Path | str) -> trimesh.Trimesh:
    """Read and check an init mesh file: a single triangle mesh, +Z up, vertices and faces as in the file.

    Raises MeshError naming the problem: unknown format, empty or too large a file, unreadable, no faces,
    non-finite vertices, more than ``MAX_INIT_MESH_FACES`` faces, or every face of zero area.
    """
    path = Path(path)
    file_type = mesh_format(path.name)
    if not path.exists():
        raise MeshError(f"init mesh {str(path)!r} does not exist; pass a GLB, OBJ or PLY file")
    if not path.is_file():  # never opened: a FIFO would block the read forever
        raise MeshError(f"init mesh {str(path)!r} is not a regular file (a folder, pipe or device); pass a GLB, OBJ or PLY file")
    check_mesh_bytes(path.stat().st_size, path.name)
    return parse_mesh(path.read_bytes(), file_type, path.name)


def mesh_sha256(path: Path | str) -> str:
    """The file's content hash: what a checkpoint records of its init mesh, since one file can have many paths."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def parse_mesh(data: bytes, file_type: str, name: str) -> trimesh.Trimesh:
    """``load_mesh`` for bytes already in memory (an upload)."""
    import io

    check_mesh_bytes(len(data), name)
    # Before the parse, which holds the whole mesh several times over: a file declaring too many faces costs
    # nothing, and a GLB's structure gets a message that names its flaw.
    check_face_count(declared_triangles(data, file_type, name), name)
    try:
        loaded = trimesh.load(io.BytesIO(data), file_type=file_type, force="mesh", process=False)
    # trimesh's parsers raise whatever their format's reader hits on malformed bytes (ValueError, KeyError,
    # IndexError, struct.error, …); all of them mean the same thing to the artist.
    except Exception as error:  # noqa: BLE001
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise MeshError(f"init mesh {name!r} is not a readable {file_type.upper()} file: {reason}") from error
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise MeshError(f"init mesh {name!r} has no faces; select an object with polygons (not points or curves)")
    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    faces = np.asarray(loaded.faces, dtype=np.int64)
    check_face_count(len(faces), name)
    if not np.isfinite(vertices).all():
        raise MeshError(f"init mesh {name!r} has non-finite (NaN or infinite) vertex positions; fix or re-export it")
    largest = float(np.abs(vertices).max()) if len(vertices) else 0.0
    if largest > MAX_COORDINATE:
        raise MeshError(
            f"init mesh {name!r} has vertex coordinates as large as {largest:.3g}; the limit is {MAX_COORDINATE:.0e} "
            "(apply the object's scale or fix the export's units)"
        )
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshError(f"init mesh {name!r} has faces that index missing vertices; re-export it")
    if file_type == "glb":
        vertices = vertices @ Y_UP_TO_Z_UP.T
    areas = triangle_areas(vertices, faces)
    if not (areas > 1e-12 * max(float(np.ptp(vertices, axis=0).max()), 1e-30) ** 2).any():
        raise MeshError(f"init mesh {name!r} is degenerate: all {len(faces)} faces have zero area")
    uv = getattr(loaded.visual, "uv", None)
    visual = trimesh.visual.TextureVisuals(uv=np.asarray(uv)) if uv is not None and len(uv) == len(vertices) else None
    return trimesh.Trimesh(vertices, faces, visual=visual, process=False)


def check_face_count(faces: int, name: str) -> None:
    if faces > contract.MAX_INIT_MESH_FACES:
        raise MeshError(
            f"init mesh {name!r} has {faces} faces; the limit is {contract.MAX_INIT_MESH_FACES} (decimate it first)"
        )


_OBJ_FACE_LINE = re.compile(rb"(?m)^f[ \t]+([^\n]*)")
_PLY_FACE_ELEMENT = re.compile(rb"(?m)^element[ \t]+face[ \t]+(\d+)")
_GLB_JSON, _GLB_BIN = 0x4E4F534A, 0x004E4942


def declared_triangles(data: bytes, file_type: str, name: str) -> int:
    """How many triangles the file says it holds, read without parsing the mesh (a lower bound for PLY
    polygons). MeshError for a GLB whose structure cannot be loaded (named: an external buffer, a view past
    the end of the file)."""
    if file_type == "obj":
        # A polygon of n corners is n - 2 triangles, as trimesh fans it.
        return sum(max(len(line.split()) - 2, 0) for line in _OBJ_FACE_LINE.findall(data))
    if file_type == "ply":
        header = data[: data.find(b"end_header")] if b"end_header" in data else b""
        return sum(int(count) for count in _PLY_FACE_ELEMENT.findall(header))
    return glb_triangles(data, name)


def glb_triangles(data: bytes, name: str) -> int:
    """Triangles a GLB's primitives declare (indices or vertices / 3), after checking that every buffer is inside
    the file. MeshError naming the flaw."""

    def damaged(why: str) -> MeshError:
        return MeshError(f"init mesh {name!r} is not a readable GLB file: {why}; export it again as glTF Binary (.glb)")

    if len(data) < 20 or data[:4] != b"glTF":
        raise damaged("it does not start with the GLB header ('glTF')")
    json_length, json_type = struct.unpack_from("<II", data, 12)
    if json_type != _GLB_JSON or 20 + json_length > len(data):
        raise damaged("its first chunk is not a complete JSON chunk")
    try:
        document = json.loads(data[20 : 20 + json_length])
    except (UnicodeDecodeError, ValueError) as error:
        raise damaged(f"its JSON chunk is not valid JSON ({error})") from None
    binary_at = 20 + json_length + (-json_length % 4)
    binary_length = 0
    if binary_at + 8 <= len(data):
        length, chunk_type = struct.unpack_from("<II", data, binary_at)
        if chunk_type == _GLB_BIN:
            binary_length = min(length, len(data) - binary_at - 8)
    try:
        for index, buffer in enumerate(document.get("buffers", [])):
            if "uri" in buffer:
                raise MeshError(
                    f"init mesh {name!r} keeps buffer {index} in another file ({str(buffer['uri'])[:80]!r}); "
                    "export it as one self-contained glTF Binary (.glb)"
                )
        for index, view in enumerate(document.get("bufferViews", [])):
            end = int(view.get("byteOffset", 0)) + int(view["byteLength"])
            if end > binary_length:
                raise damaged(
                    f"bufferView {index} ends at byte {end}, past the end of its {binary_length}-byte binary chunk"
                )
        accessors = document.get("accessors", [])
        triangles = 0
        for mesh in document.get("meshes", []):
            for primitive in mesh.get("primitives", []):
                if primitive.get("mode", 4) != 4:  # points and lines: no faces
                    continue
                counted = primitive.get("indices", primitive.get("attributes", {}).get("POSITION"))
                if counted is not None:
                    triangles += int(accessors[counted]["count"]) // 3
    except MeshError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
        raise damaged(f"its JSON does not follow glTF ({type(error).__name__}: {error})") from None
    return triangles


def triangle_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


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


@dataclass
class ShapeGuide:
    """The init mesh, fitted into the box, and what training does with it.

    Shape mode (``keep_geometry`` False): density starts from the mesh (weighted by ``strength`` against the
    blob) and ``loss`` pulls it toward the mesh's occupancy. Texture mode: density is the mesh's, frozen.
    """

    mesh: trimesh.Trimesh  # as loaded (+Z up, the artist's coordinates)
    normalization: Normalization
    sdf: np.ndarray  # (R, R, R) float32, world units over the box
    strength: float
    keep_geometry: bool

    @classmethod
    def from_mesh(cls, mesh: trimesh.Trimesh, strength: float, keep_geometry: bool, bound: float = 1.0) -> "ShapeGuide":
        normalization = Normalization.of_mesh(mesh)
        box_vertices = normalization.to_box(np.asarray(mesh.vertices))
        faces = np.asarray(mesh.faces)
        occupancy = occupancy_grid(box_vertices, faces, SHAPE_RESOLUTION, bound)
        sdf = refine_near_surface(signed_distance_grid(occupancy, bound), occupancy, box_vertices, faces, bound)
        return cls(mesh, normalization, sdf, strength, keep_geometry)

    def field_config(self, config: FieldConfig) -> FieldConfig:
        return replace(
            config, shape_resolution=self.sdf.shape[0], shape_weight=self.strength, frozen_shape=self.keep_geometry
        )

    def attach(self, field: NeRFField) -> None:
        """Write the signed-distance grid into the field (built with ``field_config``)."""
        field.shape_sdf.copy_(torch.from_numpy(self.sdf))

    def loss(self, field: NeRFField, generator: torch.Generator, latent_elements: int) -> Tensor | None:
        """Latent-NeRF's sketch-shape loss, times ``strength``; None where there is nothing to train.

        Σ (1 − exp(−d² / 2τ²)) · BCE(α(σ), inside) over random points, d the distance to the surface, with
        α = 1 − exp(−σ ln2 / σ_surface) (one half at the surface density), so disagreement right at the
        surface, where the prompt may refine the shape, costs little. ``latent_elements``: of one latent, the
        scale of the distillation loss it is added to.
        """
        if self.keep_geometry or self.strength == 0.0:
            return None
        device = field.shape_sdf.device
        points = ((torch.rand((SHAPE_LOSS_POINTS, 3), generator=generator) * 2 - 1) * field.bound).to(device)
        distance = field.shape_distance(points)
        optical_depth = field.density(points).clamp_min(1e-12) * (math.log(2.0) / field.surface_density)
        # −log α and −log(1 − α) in closed form: no clamp of α, so an emptied or saturated point keeps its gradient.
        cross_entropy = torch.where(distance < 0, -torch.log(-torch.expm1(-optical_depth)), optical_depth)
        softening = 1.0 - torch.exp(-(distance**2) / (2 * SHAPE_LOSS_SOFTNESS**2))
        return SHAPE_LOSS_WEIGHT * latent_elements * self.strength * (softening * cross_entropy).mean()


def shape_guide_for(spec, mesh_path: Path | str, bound: float = 1.0) -> ShapeGuide:
    """The guide for a job (a ``JobSpec``) whose init mesh is the file ``mesh_path``; MeshError for a bad file."""
    return ShapeGuide.from_mesh(load_mesh(mesh_path), spec.shape_strength, spec.keep_geometry, bound)

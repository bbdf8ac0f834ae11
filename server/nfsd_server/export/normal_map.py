"""Tangent-space normal map: the dense surface's normals (before decimation) seen from the decimated, UV-mapped mesh.

Conventions are glTF's: OpenGL (+Y green = direction of increasing v), tangents (V, 4) with the handedness in w
and bitangent = cross(normal, tangent.xyz) * w, built the way MikkTSpace builds them (angle-weighted face tangents
projected onto the vertex normal), so Blender's own MikkTSpace tangents decode the map as it was baked.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from nfsd_server.export.texture import SurfaceTexels


def vertex_tangents(vertices: np.ndarray, normals: np.ndarray, faces: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """(V, 4) float32 glTF tangents: xyz unit, along +u and orthogonal to ``normals``; w = ±1 handedness.

    ``uvs`` (V, 2) with v up (trimesh's convention; glTF's flipped t gives the same tangents). Each face's
    tangent is normalised and weighted by its corner angle, as MikkTSpace does; vertices where the faces
    disagree on handedness take the majority (xatlas charts are not mirrored, so this does not arise in practice).
    """
    corners = vertices[faces]  # (F, 3, 3)
    uv = uvs[faces]  # (F, 3, 2)
    edge1, edge2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    duv1, duv2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    uv_area = duv1[:, 0] * duv2[:, 1] - duv2[:, 0] * duv1[:, 1]
    sign = np.where(uv_area < 0, -1.0, 1.0)
    face_tangent = _unit((edge1 * duv2[:, 1:2] - edge2 * duv1[:, 1:2]) * sign[:, None])
    face_bitangent = _unit((edge2 * duv1[:, 0:1] - edge1 * duv2[:, 0:1]) * sign[:, None])
    face_normal = np.cross(edge1, edge2)
    handed = np.where(np.einsum("ij,ij->i", np.cross(face_normal, face_tangent), face_bitangent) < 0, -1.0, 1.0)
    angles = _corner_angles(corners)  # (F, 3)
    tangent = np.zeros((len(vertices), 3))
    handedness = np.zeros(len(vertices))
    for corner in range(3):
        index = faces[:, corner]
        for k in range(3):
            tangent[:, k] += np.bincount(index, face_tangent[:, k] * angles[:, corner], len(vertices))
        handedness += np.bincount(index, handed * angles[:, corner], len(vertices))
    tangent -= normals * np.einsum("ij,ij->i", tangent, normals)[:, None]
    tangent = _unit(tangent, fallback=any_perpendicular(normals))
    return np.concatenate([tangent, np.where(handedness < 0, -1.0, 1.0)[:, None]], axis=1).astype(np.float32)


def surface_normals_at(
    points: np.ndarray, volume: np.ndarray, bound: float, exact: np.ndarray | None = None
) -> np.ndarray:
    """(K, 3) unit outward normals of the dense surface at ``points`` (K, 3) near it: the density's gradient,
    negated (density rises inward), by differences of the trilinear ``volume`` (R, R, R) over [-bound, bound]³,
    one voxel apart.

    The dense marching-cubes surface is this volume's level set, so this is its normal field (what skimage's
    marching cubes reports as normals). Off the surface the sampler's stand-ins make it unreliable within a few
    voxels (``dense_surface_normals`` projects first). ``exact`` (R, R, R) bool: where the volume holds the
    field's own value (the sampler fills points far from the surface with stand-ins); a difference reaching a
    stand-in is taken one-sided instead, and where no difference is exact the normal is zero.
    """
    voxel = 2.0 * bound / (volume.shape[0] - 1)
    grid_points = ((points + bound) / voxel).T  # (3, K) in voxel units
    exact_weight = np.ones((1, 1, 1), np.float32) if exact is None else exact.astype(np.float32)

    def value_at(offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        where = grid_points + offset
        value = ndimage.map_coordinates(volume, where, order=1, mode="nearest")
        if exact is None:
            return value, np.ones(len(value), bool)
        return value, ndimage.map_coordinates(exact_weight, where, order=1, mode="nearest") > 1.0 - 1e-6

    centre, centre_ok = value_at(np.zeros((3, 1)))
    gradient = np.zeros((len(points), 3), np.float32)
    for axis in range(3):
        step = np.zeros((3, 1))
        step[axis] = 1.0
        ahead, ahead_ok = value_at(step)
        behind, behind_ok = value_at(-step)
        backward = np.where(behind_ok & centre_ok, behind - centre, 0.0)
        one_sided = np.where(ahead_ok & centre_ok, centre - ahead, backward)
        gradient[:, axis] = np.where(ahead_ok & behind_ok, (behind - ahead) / 2, one_sided)
    length = np.linalg.norm(gradient, axis=1, keepdims=True)
    return np.where(length > 0, gradient / np.maximum(length, 1e-30), 0.0)


def dense_surface_normals(
    points: np.ndarray, dense_vertices: np.ndarray, dense_faces: np.ndarray, volume: np.ndarray, bound: float,
    exact: np.ndarray | None = None,
) -> np.ndarray:
    """(K, 3) unit outward normals of the dense marching-cubes surface (``dense_vertices`` (D, 3), ``dense_faces``)
    nearest to each of ``points`` (K, 3), which decimation may have left a few voxels off it.

    Each point goes to the tangent plane of its nearest dense vertex (a k-d tree), back onto the surface, where
    the volume's gradient (``surface_normals_at``) is exact and smooth; where no exact difference reaches, the
    dense vertex's own normal (area-weighted faces) stands in.
    """
    vertex_normal = vertex_normals(dense_vertices, dense_faces)
    _, nearest = cKDTree(dense_vertices).query(points, k=1, workers=-1)
    anchor, anchor_normal = dense_vertices[nearest], vertex_normal[nearest]
    on_surface = points - anchor_normal * np.einsum("ij,ij->i", points - anchor, anchor_normal)[:, None]
    gradient_normal = surface_normals_at(on_surface, volume, bound, exact)
    found = np.linalg.norm(gradient_normal, axis=1) > 0.5
    # Marching cubes winds one way for the whole surface: point the mesh normals the way the gradient says.
    if found.any() and np.median(np.einsum("ij,ij->i", gradient_normal[found], anchor_normal[found])) < 0:
        anchor_normal = -anchor_normal
    return np.where(found[:, None], gradient_normal, anchor_normal)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) unit normals: area-weighted face normals summed per vertex (bincount, no Python loop)."""
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    summed = np.stack(
        [np.bincount(faces.ravel(), np.repeat(face_normals[:, k], 3), len(vertices)) for k in range(3)], axis=1
    )
    return _unit(summed)


def bake_normals(
    texels: SurfaceTexels, faces: np.ndarray, normals: np.ndarray, tangents: np.ndarray, target: np.ndarray
) -> np.ndarray:
    """Tangent-space normals (K, 3) in [0, 1] (encoded (n + 1) / 2) at ``texels`` of the mesh (``faces`` into
    ``normals`` (V, 3) and ``tangents`` (V, 4)), whose decoding ``normalize(x T + y B + z N)`` with the interpolated
    frame gives ``target`` (K, 3), the dense surface's normal at each texel."""
    normal = texels.interpolate(normals, faces)
    tangent_w = texels.interpolate(tangents, faces)
    tangent = tangent_w[:, :3]
    bitangent = np.cross(normal, tangent) * np.where(tangent_w[:, 3:] < 0, -1.0, 1.0)
    coefficients = _solve_frames(tangent, bitangent, normal, target)
    return (_unit(coefficients) + 1.0) / 2.0


def decode_normals(encoded: np.ndarray, normal: np.ndarray, tangent_w: np.ndarray) -> np.ndarray:
    """What a glTF viewer shades with: ``encoded`` (K, 3) in [0, 1], interpolated ``normal`` (K, 3) and
    ``tangent_w`` (K, 4) → (K, 3) unit world normals."""
    tangent = tangent_w[:, :3]
    bitangent = np.cross(normal, tangent) * np.where(tangent_w[:, 3:] < 0, -1.0, 1.0)
    x, y, z = np.split(encoded * 2.0 - 1.0, 3, axis=1)
    return _unit(x * tangent + y * bitangent + z * normal)


def _solve_frames(tangent: np.ndarray, bitangent: np.ndarray, normal: np.ndarray, target: np.ndarray) -> np.ndarray:
    """c (K, 3) with c.x T + c.y B + c.z N = target, per row, by Cramer's rule (the frames are near-orthogonal
    but not exactly, after interpolation)."""
    b_cross_n, n_cross_t = np.cross(bitangent, normal), np.cross(normal, tangent)
    t_cross_b = np.cross(tangent, bitangent)
    determinant = np.einsum("ij,ij->i", tangent, b_cross_n)
    determinant = np.where(np.abs(determinant) > 1e-12, determinant, 1e-12)
    solved = np.stack(
        [np.einsum("ij,ij->i", target, cross) for cross in (b_cross_n, n_cross_t, t_cross_b)], axis=1
    )
    return solved / determinant[:, None]


def _corner_angles(corners: np.ndarray) -> np.ndarray:
    """(F, 3) interior angle at each corner of triangles (F, 3, 3)."""
    angles = []
    for corner in range(3):
        to_next = _unit(corners[:, (corner + 1) % 3] - corners[:, corner])
        to_previous = _unit(corners[:, (corner + 2) % 3] - corners[:, corner])
        angles.append(np.arccos(np.clip(np.einsum("ij,ij->i", to_next, to_previous), -1.0, 1.0)))
    return np.stack(angles, axis=1)


def any_perpendicular(normals: np.ndarray) -> np.ndarray:
    """(V, 3) a unit vector perpendicular to each normal (for vertices whose faces have no UV extent)."""
    helper = np.where(np.abs(normals[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    return _unit(np.cross(normals, helper))


def _unit(vectors: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    length = np.linalg.norm(vectors, axis=1, keepdims=True)
    ok = length > 1e-12
    unit = vectors / np.where(ok, length, 1.0)
    if fallback is None:
        return unit
    return np.where(ok, unit, fallback)

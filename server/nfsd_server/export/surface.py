"""Density volume → clean, outward-facing, decimated triangle mesh (world frame, +Z up)."""

from __future__ import annotations

import fast_simplification
import mcubes
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def extract_surface(volume: np.ndarray, threshold: float, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes at ``threshold`` on ``volume`` (R, R, R) over [-bound, bound]³.

    Returns (V, 3) float64 world positions, (F, 3) int64 faces. Only the box around the points above the
    threshold is meshed (marching cubes costs per cell, and objects rarely fill the scene), padded with zero
    density so a surface cut by the scene box is closed (watertight), not open.
    """
    above = volume > threshold
    spans = [np.flatnonzero(above.any(axis=tuple(other for other in range(3) if other != axis))) for axis in range(3)]
    low = np.maximum([span[0] - 1 for span in spans], 0)
    high = np.minimum([span[-1] + 2 for span in spans], volume.shape[0])
    cropped = volume[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    padded = np.pad(cropped, 1, mode="constant", constant_values=0.0)
    vertices, faces = mcubes.marching_cubes(padded, threshold)
    spacing = 2.0 * bound / (volume.shape[0] - 1)
    vertices = (vertices - 1.0 + low) * spacing - bound
    return vertices, faces.astype(np.int64)


def component_labels(n_vertices: int, faces: np.ndarray) -> np.ndarray:
    """(F,) int: the connected component of each face (components share vertices)."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    ones = np.ones(len(edges), np.int8)
    graph = coo_matrix((ones, (edges[:, 0], edges[:, 1])), shape=(n_vertices, n_vertices))
    _, vertex_label = connected_components(graph, directed=False)
    return vertex_label[faces[:, 0]]


def keep_main_components(
    vertices: np.ndarray, faces: np.ndarray, min_fraction: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Drop floaters: components with fewer than ``min_fraction`` of the largest component's faces.

    Components are found on the vertex graph with scipy (vectorised); trimesh's ``split`` builds a face
    adjacency graph in Python-heavy code and is several times slower on a 256³ marching-cubes mesh.
    """
    face_label = component_labels(len(vertices), faces)
    faces_per_label = np.bincount(face_label)
    keep = faces_per_label[face_label] >= min_fraction * faces_per_label.max()
    return compact(vertices, faces[keep])


def compact(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove vertices no face uses and renumber the faces."""
    used, new_faces = np.unique(faces, return_inverse=True)
    return vertices[used], new_faces.reshape(faces.shape)


def orient_outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Faces wound so every component's normals point outward (positive signed volume).

    Marching cubes winds each component consistently, so only a whole-component flip can be needed; the signed
    volume decides it in one vectorised pass, where trimesh's ``fix_normals`` re-walks the face graph.
    """
    face_label = component_labels(len(vertices), faces)
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    signed = np.einsum("ij,ij->i", a, np.cross(b, c))
    flip = np.bincount(face_label, weights=signed) < 0
    oriented = faces.copy()
    oriented[flip[face_label]] = faces[flip[face_label]][:, ::-1]
    return oriented


def decimate(vertices: np.ndarray, faces: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation down to at most ``budget`` faces (unchanged if already within it)."""
    if len(faces) <= budget:
        return vertices, faces
    # The simplifier lands near the target, sometimes a little above it; then retry with a proportionally lower one.
    target = budget
    for _ in range(4):
        new_vertices, new_faces = fast_simplification.simplify(
            vertices.astype(np.float32), faces.astype(np.int32), target_reduction=1.0 - target / len(faces)
        )
        if len(new_faces) <= budget:
            return new_vertices.astype(np.float64), new_faces.astype(np.int64)
        target = int(target * budget / len(new_faces) * 0.99)
    raise RuntimeError(
        f"decimation kept {len(new_faces)} faces after 4 tries, above the budget {budget}; raise poly_budget"
    )

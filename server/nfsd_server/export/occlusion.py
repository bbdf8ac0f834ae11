"""Ambient occlusion from geometry: rays from each vertex through the occupancy grid the surface was meshed from.

Occlusion is low-frequency, so it is computed per vertex of the decimated mesh and interpolated per texel; every
copy of a vertex split by a UV seam gets the same value, so the map has no seams of its own.
"""

from __future__ import annotations

import numpy as np

from nfsd_server.export.normal_map import any_perpendicular

RAYS = 32  # cosine-weighted hemisphere directions per vertex
STEPS = 12  # samples along each ray
# Rays reach half the object's largest side: far enough to see across a handle or a ring's hole, short enough
# that a big flat base does not darken everything above it.
REACH_OF_SIDE = 0.5
START_VOXELS = 2.0  # rays start this far out along the normal, past the voxels the surface itself passes through


def hemisphere_directions(count: int = RAYS) -> np.ndarray:
    """(count, 3) unit directions around +Z, cosine-weighted (a golden-angle spiral on the unit disk lifted to the
    hemisphere), so the occlusion is the plain mean of the rays' visibility."""
    index = np.arange(count) + 0.5
    radius = np.sqrt(index / count)
    angle = index * np.pi * (3.0 - np.sqrt(5.0))
    return np.stack([radius * np.cos(angle), radius * np.sin(angle), np.sqrt(1.0 - radius**2)], axis=1)


def vertex_occlusion(
    vertices: np.ndarray, normals: np.ndarray, inside: np.ndarray, bound: float, reach: float | None = None
) -> np.ndarray:
    """(V,) float32 in [0, 1]: 1 = open sky, 0 = fully occluded.

    ``vertices`` (V, 3), ``normals`` (V, 3) unit, outward, in the field's frame; ``inside`` (R, R, R) bool: the
    grid the surface was meshed from, above the threshold, spanning [-bound, bound]³. ``reach``: how far a
    ray looks for an occluder; None → ``REACH_OF_SIDE`` of the vertices' largest extent.
    """
    resolution = inside.shape[0]
    voxel = 2.0 * bound / (resolution - 1)
    if reach is None:
        reach = REACH_OF_SIDE * float((vertices.max(axis=0) - vertices.min(axis=0)).max())
    distances = np.linspace(0.0, 1.0, STEPS + 1)[1:] ** 2 * max(reach, voxel)  # denser near the surface
    local = hemisphere_directions()
    tangent = any_perpendicular(normals)
    bitangent = np.cross(normals, tangent)
    visible = np.zeros(len(vertices), np.float32)
    starts = vertices + normals * (START_VOXELS * voxel)
    for direction in local:
        world = direction[0] * tangent + direction[1] * bitangent + direction[2] * normals  # (V, 3)
        points = starts[:, None, :] + world[:, None, :] * distances[None, :, None]  # (V, S, 3)
        cells = np.rint((points + bound) / voxel).astype(np.int64)
        in_box = ((cells >= 0) & (cells < resolution)).all(axis=-1)
        cells = np.clip(cells, 0, resolution - 1)
        hit = inside[cells[..., 0], cells[..., 1], cells[..., 2]] & in_box
        visible += ~hit.any(axis=1)
    return visible / len(local)


"""UV unwrap a mesh and bake the field's albedo into a texture, dilated so seams and mips show no background."""

from __future__ import annotations

import numpy as np
import xatlas
from scipy import ndimage

from nfsd_server.export.grid import field_device, query_chunked

CHART_SPLIT = 64
# Candidate texels are tested this many at a time, to bound memory whatever the texture size.
RASTER_CHUNK = 2**21


def unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts packed for a ``texture_size``² texture.

    Returns (vmapping (V',) int: original vertex of each new vertex, faces (F, 3) into the new vertices,
    uvs (V', 2) in [0, 1], OpenGL convention: v = 0 is the image's bottom row).
    """
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices.astype(np.float32), faces.astype(np.uint32))
    chart_options = xatlas.ChartOptions()
    # One growing pass gives charts nearly as good as the default's refinement, in a fraction of the time.
    chart_options.max_iterations = 1
    # xatlas's time grows with chart size (a blob becomes ~10 huge charts, 4 s at 20k faces); capping a chart at
    # 1/CHART_SPLIT of the surface gives ~100 charts in under a second. The extra seams are hidden by dilation.
    triangles = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]), axis=1)
    chart_options.max_chart_area = float(area.sum()) / CHART_SPLIT
    pack_options = xatlas.PackOptions()
    pack_options.resolution = texture_size
    # 2 texels between charts: bilinear filtering and the first mip stay inside a chart after dilation.
    pack_options.padding = 2
    pack_options.bruteForce = False
    pack_options.blockAlign = True
    atlas.generate(chart_options, pack_options)
    vmapping, new_faces, uvs = atlas[0]
    return vmapping.astype(np.int64), new_faces.astype(np.int64), uvs.astype(np.float64)


def rasterise(uvs: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texel centres covered by UV triangles, with the triangle and barycentrics that cover them.

    ``uvs``: (V, 2) in [0, 1] (v up). Returns (texel (K,) flat index row * size + col, row 0 at the image top;
    face (K,) int; barycentric (K, 3) float64). Each triangle's bounding box of texels is expanded with
    repeat/cumsum and tested at once, so there is no per-texel or per-triangle Python loop.
    """
    pixel = np.stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size], axis=1)  # (x right, y down) in texels
    corners = pixel[faces]  # (F, 3, 2)
    low = np.clip(np.floor(corners.min(axis=1) - 0.5).astype(np.int64), 0, size - 1)
    high = np.clip(np.ceil(corners.max(axis=1) - 0.5).astype(np.int64), 0, size - 1)
    extent = high - low + 1
    counts = extent[:, 0] * extent[:, 1]
    texels, face_ids, barycentrics = [], [], []
    ends = np.cumsum(counts)
    start = 0
    while start < len(faces):
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - counts[start] + RASTER_CHUNK, side="right")))
        chunk = np.arange(start, stop)
        start = stop
        face = np.repeat(chunk, counts[chunk])
        offset = np.arange(len(face)) - np.repeat(np.cumsum(counts[chunk]) - counts[chunk], counts[chunk])
        col = low[face, 0] + offset % extent[face, 0]
        row = low[face, 1] + offset // extent[face, 0]
        weights = _barycentric(corners[face], np.stack([col + 0.5, row + 0.5], axis=1))
        inside = (weights >= -1e-6).all(axis=1)
        texels.append(row[inside] * size + col[inside])
        face_ids.append(face[inside])
        barycentrics.append(weights[inside])
    return np.concatenate(texels), np.concatenate(face_ids), np.concatenate(barycentrics)


def _barycentric(triangles: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Barycentric weights (K, 3) of ``points`` (K, 2) in ``triangles`` (K, 3, 2); degenerate → all -1 (outside)."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    v0, v1, v2 = b - a, c - a, points - a
    denominator = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    ok = np.abs(denominator) > 1e-12
    safe = np.where(ok, denominator, 1.0)
    w1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / safe
    w2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / safe
    weights = np.stack([1.0 - w1 - w2, w1, w2], axis=1)
    weights[~ok] = -1.0
    return weights


def bake_albedo(
    field, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, size: int, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Albedo at every covered texel centre: (image (size, size, 3) float32 in [0, 1], covered (size, size) bool).

    ``vertices`` (V, 3) world positions and ``uvs`` (V, 2) share indexing through ``faces`` (F, 3).
    Uncovered texels are left black; ``dilate`` fills them.
    """
    texel, face, weights = rasterise(uvs, faces, size)
    points = np.einsum("kj,kjd->kd", weights, vertices[faces[face]]).astype(np.float32)
    colours = query_chunked(field.albedo, points, chunk_size, field_device(field))
    image = np.zeros((size * size, 3), np.float32)
    covered = np.zeros(size * size, bool)
    image[texel] = np.clip(colours, 0.0, 1.0)
    covered[texel] = True
    return image.reshape(size, size, 3), covered.reshape(size, size)


def dilate(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Every uncovered texel takes the colour of its nearest covered texel: (H, W, 3) → (H, W, 3).

    Filling the whole image (not a few rings) means no mip level ever averages in a background colour.
    """
    if covered.all() or not covered.any():
        return image
    nearest = ndimage.distance_transform_edt(~covered, return_distances=False, return_indices=True)
    return image[nearest[0], nearest[1]]

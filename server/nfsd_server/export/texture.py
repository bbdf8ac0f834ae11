"""UV unwrap a mesh and bake the field's albedo into a texture, dilated so seams and mips show no background."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xatlas
from scipy import ndimage

from nfsd_server.export.grid import field_device, query_chunked

CHART_SPLIT = 64
FACES_PER_CHART = 250
PIECE_FACES = 5000  # faces per mesh handed to xatlas (see ``unwrap``)
# Candidate texels are tested this many at a time, to bound memory whatever the texture size.
RASTER_CHUNK = 2**21


def unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts packed for a ``texture_size``² texture.

    Returns (vmapping (V',) int: original vertex of each new vertex, faces (F, 3) into the new vertices,
    uvs (V', 2) in [0, 1], OpenGL convention: v = 0 is the image's bottom row).

    xatlas's chart growing costs more than linearly in the faces of one mesh (64 s at 200k faces as one mesh,
    ``benchmarks/uv_unwrap_cost.py``), so the surface goes in as pieces of about ``PIECE_FACES`` nearby faces
    (Morton order of the face centres); xatlas charts each piece on its own threads and packs all their charts
    into one atlas. A piece's edge is a seam like any chart's, hidden by dilation.
    """
    triangles = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]), axis=1)
    pieces = np.array_split(np.argsort(_morton_codes(triangles.mean(axis=1))), max(1, -(-len(faces) // PIECE_FACES)))
    atlas = xatlas.Atlas()
    piece_vertices = []
    for piece in pieces:
        used, local_faces = np.unique(faces[piece], return_inverse=True)
        piece_vertices.append(used)
        atlas.add_mesh(vertices[used].astype(np.float32), local_faces.reshape(-1, 3).astype(np.uint32))
    chart_options = xatlas.ChartOptions()
    # One growing pass gives charts nearly as good as the default's refinement, in a fraction of the time.
    chart_options.max_iterations = 1
    # Time also grows with chart size (a blob becomes ~10 huge charts, 4 s at 20k faces): a chart holds at most
    # 1/CHART_SPLIT of the surface, or about FACES_PER_CHART faces on a dense mesh.
    chart_options.max_chart_area = float(area.sum()) / max(CHART_SPLIT, len(faces) / FACES_PER_CHART)
    pack_options = xatlas.PackOptions()
    pack_options.resolution = texture_size
    # 2 texels between charts: bilinear filtering and the first mip stay inside a chart after dilation.
    pack_options.padding = 2
    pack_options.bruteForce = False
    pack_options.blockAlign = True
    atlas.generate(chart_options, pack_options)
    vmappings, new_faces, uv_list, offset = [], [], [], 0
    for index, used in enumerate(piece_vertices):
        vmapping, piece_faces, uvs = atlas[index]
        vmappings.append(used[vmapping.astype(np.int64)])
        new_faces.append(piece_faces.astype(np.int64) + offset)
        uv_list.append(uvs.astype(np.float64))
        offset += len(vmapping)
    return np.concatenate(vmappings), np.concatenate(new_faces), np.concatenate(uv_list)


def _morton_codes(points: np.ndarray) -> np.ndarray:
    """(N,) int64 Z-order codes of ``points`` (N, 3) on a 1024³ grid over their box: sorting by them keeps
    neighbours together."""
    low, high = points.min(axis=0), points.max(axis=0)
    cells = ((points - low) / np.maximum(high - low, 1e-12) * 1023).astype(np.int64)
    codes = np.zeros(len(points), np.int64)
    for bit in range(10):
        for axis in range(3):
            codes |= ((cells[:, axis] >> bit) & 1) << (3 * bit + axis)
    return codes


def rasterise(uvs: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texel centres covered by UV triangles, with the triangle and barycentrics that cover them.

    ``uvs``: (V, 2) in [0, 1] (v up). Returns (texel (K,) flat index row * size + col, row 0 at the image top;
    face (K,) int; barycentric (K, 3) float32). Each triangle's bounding box of texels is expanded with
    repeat/cumsum and tested at once, so there is no per-texel or per-triangle Python loop.
    """
    pixel = np.stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size], axis=1)  # (x right, y down) in texels
    corners = pixel[faces]  # (F, 3, 2)
    low = np.clip(np.floor(corners.min(axis=1) - 0.5).astype(np.int64), 0, size - 1)
    high = np.clip(np.ceil(corners.max(axis=1) - 0.5).astype(np.int64), 0, size - 1)
    extent = high - low + 1
    counts = extent[:, 0] * extent[:, 1]
    weights_of = _barycentric_planes(corners, low)
    ends = np.cumsum(counts)
    texels, face_ids, barycentrics = [], [], []
    start = 0
    while start < len(faces):
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - counts[start] + RASTER_CHUNK, side="right")))
        chunk = np.arange(start, stop)
        start = stop
        face = np.repeat(chunk, counts[chunk])
        offset = np.arange(len(face)) - np.repeat(ends[chunk] - counts[chunk], counts[chunk])
        col, row = np.divmod(offset, extent[face, 1])  # column-major inside the box: col outer, row inner
        planes = weights_of[face]  # (K, 2, 3): w1, w2 as a * col + b * row + c, relative to the box corner
        col_f, row_f = col.astype(np.float32)[:, None], row.astype(np.float32)[:, None]
        w12 = planes[:, :, 0] * col_f + planes[:, :, 1] * row_f + planes[:, :, 2]
        weights = np.concatenate([1.0 - w12.sum(axis=1, keepdims=True), w12], axis=1)
        inside = (weights >= -1e-5).all(axis=1)
        texels.append((low[face[inside], 1] + row[inside]) * size + low[face[inside], 0] + col[inside])
        face_ids.append(face[inside])
        barycentrics.append(weights[inside])
    return np.concatenate(texels), np.concatenate(face_ids), np.concatenate(barycentrics)


def _barycentric_planes(corners: np.ndarray, low: np.ndarray) -> np.ndarray:
    """(F, 2, 3) float32: barycentrics w1, w2 of texel centre (low + (col, row) + 0.5) as a * col + b * row + c.

    Barycentrics are affine in the texel position, so three numbers per weight and face replace a per-texel
    solve. Degenerate (zero-area) triangles get planes that put every texel outside.
    """
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    origin = low + 0.5 - a  # first texel centre relative to vertex a
    v0, v1 = b - a, c - a
    denominator = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    ok = np.abs(denominator) > 1e-12
    inverse = np.where(ok, 1.0 / np.where(ok, denominator, 1.0), 0.0)
    # w1 = (p × v1) / d, w2 = (v0 × p) / d with p = origin + (col, row)
    w1 = np.stack([v1[:, 1], -v1[:, 0], origin[:, 0] * v1[:, 1] - v1[:, 0] * origin[:, 1]], axis=1)
    w2 = np.stack([-v0[:, 1], v0[:, 0], v0[:, 0] * origin[:, 1] - origin[:, 0] * v0[:, 1]], axis=1)
    planes = np.stack([w1, w2], axis=1) * inverse[:, None, None]
    planes[~ok, :, 2] = -1.0
    return planes.astype(np.float32)


@dataclass(frozen=True)
class SurfaceTexels:
    """The texels a UV-mapped mesh covers, each with its face, barycentrics and 3D point, for every map's bake.

    texel (K,) flat index row * size + col (row 0 at the image top); face (K,); weights (K, 3) float32;
    points (K, 3) float32 on the mesh; size: the texture's side.
    """

    texel: np.ndarray
    face: np.ndarray
    weights: np.ndarray
    points: np.ndarray
    size: int

    def interpolate(self, per_vertex: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """A per-vertex attribute (V, C) at every texel: (K, C) float32, barycentric blend of its face's corners."""
        return np.einsum("kj,kjc->kc", self.weights, per_vertex[faces[self.face]].astype(np.float32))

    def image(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-texel values (K, C) → (image (size, size, C) float32, zero where uncovered; covered (size, size))."""
        image = np.zeros((self.size * self.size, values.shape[1]), np.float32)
        covered = np.zeros(self.size * self.size, bool)
        image[self.texel] = values
        covered[self.texel] = True
        return image.reshape(self.size, self.size, -1), covered.reshape(self.size, self.size)


def surface_texels(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, size: int) -> SurfaceTexels:
    """Rasterise ``uvs`` (V, 2) at ``size``² and put each covered texel on the mesh (``vertices`` (V, 3),
    ``faces``)."""
    texel, face, weights = rasterise(uvs, faces, size)
    points = np.einsum("kj,kjd->kd", weights, vertices[faces[face]].astype(np.float32))
    return SurfaceTexels(texel, face, weights, points, size)


def bake_albedo(
    field, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, size: int, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Albedo at every covered texel centre: (image (size, size, 3) float32 in [0, 1], covered (size, size) bool).

    ``vertices`` (V, 3) world positions and ``uvs`` (V, 2) share indexing through ``faces`` (F, 3).
    Uncovered texels are left black; ``dilate`` fills them.
    """
    return bake_albedo_at(field, surface_texels(vertices, faces, uvs, size), chunk_size)


def bake_albedo_at(field, texels: SurfaceTexels, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``bake_albedo`` on texels already rasterised (the exporter shares them between its maps)."""
    colours = query_chunked(field.albedo, texels.points, chunk_size, field_device(field))
    return texels.image(np.clip(colours, 0.0, 1.0))


def dilate(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Every uncovered texel takes the value of its nearest covered texel: (H, W, C) → (H, W, C).

    Filling the whole image (not a few rings) means no mip level ever averages in a background colour.
    """
    return dilate_all([image], covered)[0]


def dilate_all(images: list[np.ndarray], covered: np.ndarray) -> list[np.ndarray]:
    """``dilate`` for maps sharing one coverage: the nearest-texel search runs once for all of them."""
    if covered.all() or not covered.any():
        return images
    nearest = ndimage.distance_transform_edt(~covered, return_distances=False, return_indices=True)
    return [image[nearest[0], nearest[1]] for image in images]

"""Texture mode's export: bake the field's albedo onto the artist's own mesh, keeping its vertices and faces.

The mesh's UVs are used when it has them (one per vertex: the vertex count stays exactly the file's); otherwise
xatlas unwraps it, which splits vertices only along its seams (every position is still one of the mesh's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from nfsd_server.export import texture
from nfsd_server.export.glb import ExportReport, json_safe, textured_mesh, write_glb
from nfsd_server.scene.mesh_volume import Normalization

CHUNK_SIZE = 2**18


def export_onto_mesh(
    field,
    mesh: trimesh.Trimesh,
    normalization: Normalization,
    out_path: Path,
    texture_size: int,
    metadata: dict[str, Any] | None = None,
) -> ExportReport:
    """Write ``mesh`` at its own coordinates (+Z up, as loaded) with the field's albedo baked on its UVs;
    ``normalization`` maps it into the field's box."""
    out_path = Path(out_path)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    uv = getattr(mesh.visual, "uv", None)
    if uv is not None and len(uv) == len(vertices):
        vmapping, uv_faces, uvs = np.arange(len(vertices)), faces, np.asarray(uv, dtype=np.float64)
    else:
        vmapping, uv_faces, uvs = texture.unwrap(vertices, faces, texture_size)
    # The field lives in the box: bake where each texel's surface point is there, write the mesh where it was.
    box_vertices = normalization.to_box(vertices)[vmapping]
    image, covered = texture.bake_albedo(field, box_vertices, uv_faces, uvs, texture_size, CHUNK_SIZE)
    image = texture.dilate(image, covered)
    normals = mesh.vertex_normals[vmapping]
    mesh = textured_mesh(vertices[vmapping], normals, uv_faces, uvs, image)
    write_glb(mesh, out_path, json_safe(metadata or {}))
    return ExportReport(path=out_path, n_vertices=len(mesh.vertices), n_faces=len(mesh.faces))

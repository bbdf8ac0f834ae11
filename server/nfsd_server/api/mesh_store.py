"""Uploaded init meshes: ``<data_dir>/meshes/<id>.<format>``, checked once on upload, found again by id."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from nfsd_blender import contract
from nfsd_server.files import write_atomic
from nfsd_server.scene.init_mesh import parse_mesh

MESH_FOLDER = "meshes"
MESH_ID_PATTERN = r"^[0-9a-f]{32}$"


def save_mesh(data_dir: Path, data: bytes, file_type: str) -> tuple[str, int, int]:
    """Check ``data`` as an init mesh (MeshError if bad) and store it: (id, vertices, faces)."""
    mesh = parse_mesh(data, file_type, f"upload.{file_type}")
    mesh_id = uuid.uuid4().hex
    folder = Path(data_dir) / MESH_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{mesh_id}.{file_type}", data)
    return mesh_id, len(mesh.vertices), len(mesh.faces)


def mesh_path(data_dir: Path, mesh_id: str | None) -> str | None:
    """The stored file of an uploaded mesh id (None for None); ValueError naming the id if there is none."""
    if mesh_id is None:
        return None
    if re.match(MESH_ID_PATTERN, mesh_id):
        for file_type in contract.INIT_MESH_FORMATS:
            path = Path(data_dir) / MESH_FOLDER / f"{mesh_id}.{file_type}"
            if path.is_file():
                return str(path)
    raise ValueError(f"init_mesh {mesh_id!r} is not a mesh uploaded to this server; upload it with POST /v1/meshes")

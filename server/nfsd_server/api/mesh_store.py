"""Uploaded init meshes: ``<data_dir>/meshes/<id>.<format>``, checked once on upload, found again by id.

A job reads its mesh from here when it runs (and again when it exports, and after a restart), so a mesh is
only ever purged while no queued or running job names it; see ``purge_meshes``.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path

import nfsd_contract as contract
from nfsd_server.files import write_atomic
from nfsd_server.scene.mesh_files import check_face_count, declared_triangles, parse_mesh

MESH_FOLDER = "meshes"
MESH_ID_PATTERN = r"^[0-9a-f]{32}$"
# A stored mesh, or what ``write_atomic`` left of one if the server died mid-upload (``.<name>.<hex>.tmp``).
_STORED_NAME = re.compile(
    rf"^(\.)?([0-9a-f]{{32}})\.({'|'.join(contract.INIT_MESH_FORMATS)})(\.[0-9a-f]{{32}}\.tmp)?$"
)

log = logging.getLogger(__name__)


class UploadFaceCount:
    """Faces counted as an upload arrives (a lower bound: OBJ face lines, PLY's declared count), so a file with
    far too many is refused after its first megabytes instead of after a parse of all of them."""

    def __init__(self, file_type: str, name: str):
        self.file_type, self.name = file_type, name
        self.faces = 0
        self._tail = b"\n"  # the first line starts after a virtual newline
        self._header = b""

    def feed(self, chunk: bytes) -> None:
        """Count ``chunk``; MeshError once the count passes the limit."""
        if self.file_type == "obj":
            text = self._tail + chunk
            # A match is 3 bytes, so none lies wholly in the 2-byte tail counted last time.
            self.faces += text.count(b"\nf ") + text.count(b"\nf\t")
            self._tail = text[-2:]
        elif self.file_type == "ply" and self._header is not None:
            self._header += chunk[: 65536]
            if b"end_header" in self._header:
                self.faces = declared_triangles(self._header, "ply", self.name)
                self._header = None  # counted once
            elif len(self._header) >= 65536:  # no header end in 64 KiB: the parse will say what is wrong
                self._header = None
        check_face_count(self.faces, self.name)


def save_mesh(data_dir: Path, data: bytes, file_type: str) -> tuple[str, int, int]:
    """Check ``data`` as an init mesh (MeshError if bad) and store it: (id, vertices, faces)."""
    mesh = parse_mesh(data, file_type, f"upload.{file_type}")
    mesh_id = uuid.uuid4().hex
    folder = Path(data_dir) / MESH_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{mesh_id}.{file_type}", data)
    return mesh_id, len(mesh.vertices), len(mesh.faces)


def mesh_path(data_dir: Path, mesh_id: str | None) -> Path | None:
    """The stored file of an uploaded mesh id (None for None); ValueError naming the id if there is none."""
    if mesh_id is None:
        return None
    if re.match(MESH_ID_PATTERN, mesh_id):
        for file_type in contract.INIT_MESH_FORMATS:
            path = Path(data_dir) / MESH_FOLDER / f"{mesh_id}.{file_type}"
            if path.is_file() and not path.is_symlink():  # the server writes files; a link may lead anywhere
                return path
    raise ValueError(f"init_mesh {mesh_id!r} is not a mesh uploaded to this server; upload it with POST /v1/meshes")


def purge_meshes(data_dir: Path, older_than_s: float, in_use: set[str], now_s: float) -> list[str]:
    """Delete stored meshes last modified more than ``older_than_s`` before ``now_s`` (epoch seconds) whose id
    is not in ``in_use``; return the ids deleted, sorted.

    Only names this module writes are touched. A symlink is removed as a link (its target is never read or
    deleted), and a meshes folder that is itself a link is left alone: nothing outside the data dir goes.
    """
    folder = Path(data_dir) / MESH_FOLDER
    if folder.is_symlink() or not folder.is_dir():
        if folder.is_symlink():
            log.warning("not purging uploaded meshes: %s is a symlink", folder)
        return []
    deleted = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _STORED_NAME.fullmatch(entry.name)
            if match is None or match.group(2) in in_use or entry.is_dir(follow_symlinks=False):
                continue
            try:
                if now_s - entry.stat(follow_symlinks=False).st_mtime <= older_than_s:
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as error:  # the purge runs on the worker thread: one stuck file must not stop it
                log.warning("cannot delete the uploaded mesh %s: %s", entry.path, error)
                continue
            if not (match.group(1) or match.group(4)):
                deleted.append(match.group(2))
    return sorted(deleted)

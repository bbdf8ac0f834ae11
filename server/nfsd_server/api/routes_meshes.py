"""``/v1/meshes``: upload the mesh a job starts from (the artist's selected object); jobs name it by id."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

import nfsd_contract as contract
from nfsd_server.api.auth import require_token
from nfsd_server.api.errors import ApiError, disk_refused
from nfsd_server.api.mesh_store import UploadFaceCount, save_mesh
from nfsd_server.api.schemas import ErrorBody
from nfsd_server.scene.mesh_files import MeshError

MeshFormat = Literal[contract.INIT_MESH_FORMATS]  # type: ignore[valid-type]

router = APIRouter(
    prefix=f"{contract.API_PREFIX}/meshes",
    tags=["meshes"],
    dependencies=[Depends(require_token)],
    responses={401: {"model": ErrorBody, "description": "Missing or wrong bearer token"}},
)


class MeshCreated(BaseModel):
    id: str = Field(description="Pass it as a job's init_mesh.")
    vertices: int
    faces: int


@router.post(
    "", status_code=201, response_model=MeshCreated,
    responses={
        415: {"model": ErrorBody, "description": "The body is not declared as application/octet-stream"},
        422: {"model": ErrorBody, "description": "Not a usable mesh; detail says why"},
        507: {"model": ErrorBody, "description": "The server cannot store the mesh (disk full or not writable)"},
    },
)
async def upload_mesh(
    request: Request,
    format: MeshFormat = Query(description="The body's file format (Blender's world frame, +Z up; GLB +Y up)."),
) -> MeshCreated:
    """Upload a GLB, OBJ or PLY file as the raw request body (at most ``MAX_INIT_MESH_BYTES``)."""
    limit = contract.MAX_INIT_MESH_BYTES
    body = bytearray()
    faces = UploadFaceCount(format, f"upload.{format}")
    try:
        async for chunk in request.stream():  # stop reading at a limit instead of buffering whatever is sent
            body += chunk
            if len(body) > limit:
                raise ApiError(
                    422, f"the mesh is over {limit // 2**20} MiB", hint="decimate it or apply fewer modifiers"
                )
            faces.feed(chunk)
        # Off the event loop (a parse takes seconds and would stall every other request), one at a time (a
        # parse holds the mesh several times over in memory).
        mesh_id, vertices, face_count = await asyncio.to_thread(
            _save_one_at_a_time, request.app.state.manager.data_dir, bytes(body), format
        )
    except MeshError as error:
        raise ApiError(422, str(error), hint="select another object, or fix this one and send it again") from None
    except OSError as error:
        raise disk_refused("cannot store the mesh on the server", error) from None
    return MeshCreated(id=mesh_id, vertices=vertices, faces=face_count)


_PARSING = threading.Lock()


def _save_one_at_a_time(data_dir: Path, data: bytes, file_type: str) -> tuple[str, int, int]:
    with _PARSING:
        return save_mesh(data_dir, data, file_type)

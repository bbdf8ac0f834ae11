"""``/v1/meshes``: upload the mesh a job starts from (the artist's selected object); jobs name it by id."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

import nfsd_contract as contract
from nfsd_server.api.auth import require_token
from nfsd_server.api.errors import ApiError
from nfsd_server.api.mesh_store import save_mesh
from nfsd_server.api.schemas import ErrorBody
from nfsd_server.scene.init_mesh import MeshError

MeshFormat = Literal[contract.INIT_MESH_FORMATS]  # type: ignore[valid-type]

router = APIRouter(
    prefix="/v1/meshes",
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
    responses={422: {"model": ErrorBody, "description": "Not a usable mesh; detail says why"}},
)
async def upload_mesh(
    request: Request,
    format: MeshFormat = Query(description="The body's file format (Blender's world frame, +Z up; GLB +Y up)."),
) -> MeshCreated:
    """Upload a GLB, OBJ or PLY file as the raw request body (at most ``MAX_INIT_MESH_BYTES``)."""
    limit = contract.MAX_INIT_MESH_BYTES
    body = bytearray()
    async for chunk in request.stream():  # stop reading at the limit instead of buffering whatever is sent
        body += chunk
        if len(body) > limit:
            raise ApiError(
                422, f"the mesh is over {limit // 2**20} MiB", hint="decimate it or apply fewer modifiers"
            )
    try:
        mesh_id, vertices, faces = save_mesh(request.app.state.manager.data_dir, bytes(body), format)
    except MeshError as error:
        raise ApiError(422, str(error), hint="select another object, or fix this one and send it again") from None
    return MeshCreated(id=mesh_id, vertices=vertices, faces=faces)

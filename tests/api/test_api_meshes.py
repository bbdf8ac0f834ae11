"""``POST /v1/meshes``: the artist's mesh goes up once, bad ones are 422 with the reason, jobs start from its id."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from api_helpers import wait_for
import nfsd_contract as contract


def cube_bytes(file_type: str = "ply") -> bytes:
    return trimesh.creation.box(extents=(2.0, 2.0, 2.0)).export(file_type=file_type)


def upload(client, data: bytes, file_type: str = "ply"):
    return client.post(f"/v1/meshes?format={file_type}", content=data,
                       headers={"Content-Type": "application/octet-stream"})


@pytest.mark.parametrize("file_type", contract.INIT_MESH_FORMATS)
def test_api_mesh_upload_returns_an_id_and_its_size(client, file_type):
    response = upload(client, cube_bytes(file_type), file_type)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert len(body["id"]) == 32 and body["faces"] == 12 and body["vertices"] >= 8


def open_box() -> bytes:
    box = trimesh.creation.box()
    return trimesh.Trimesh(box.vertices, box.faces[2:], process=False).export(file_type="ply")


def test_api_open_meshes_are_accepted(client):
    assert upload(client, open_box()).status_code == 201  # handled by winding numbers, not refused


def test_api_bad_meshes_are_422_with_the_reason(client, monkeypatch):
    nan_cube = trimesh.creation.box()
    nan_cube.vertices[0] = (np.nan, 0, 0)
    flat = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 1, 2]], process=False)
    cases = [
        (b"", "ply", "is an empty file"),
        (b"garbage", "glb", "is not a readable GLB file"),
        (nan_cube.export(file_type="ply"), "ply", "non-finite"),
        (flat.export(file_type="ply"), "ply", "degenerate"),
        (b"v 0 0 0\n", "obj", "has no faces"),
    ]
    for data, file_type, message in cases:
        response = upload(client, data, file_type)
        assert response.status_code == 422, (message, response.json())
        assert message in response.json()["detail"] and response.json()["hint"]
    assert upload(client, cube_bytes(), "stl").status_code == 422
    monkeypatch.setattr(contract, "MAX_INIT_MESH_FACES", 11)
    assert "the limit is 11" in upload(client, cube_bytes()).json()["detail"]
    monkeypatch.setattr(contract, "MAX_INIT_MESH_BYTES", 100)
    response = upload(client, cube_bytes())
    assert response.status_code == 422 and "MiB" in response.json()["detail"]


def test_api_mesh_upload_needs_the_token(client):
    response = client.post("/v1/meshes?format=ply", content=cube_bytes(), headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401


def test_api_job_starts_from_an_uploaded_mesh(client, fake_pipeline):
    mesh_id = upload(client, cube_bytes()).json()["id"]
    response = client.post("/v1/jobs", json=contract.job_request(
        "a red ball", init_mesh=mesh_id, shape_strength=0.25, keep_geometry=True))
    assert response.status_code == 202, response.json()
    job_id = response.json()["id"]
    status = wait_for(lambda: (s := client.get(f"/v1/jobs/{job_id}").json())["state"] == "done" and s, what="done")
    assert status["request"]["init_mesh"] == mesh_id  # the id, not the server's path
    assert status["request"]["shape_strength"] == 0.25 and status["request"]["keep_geometry"] is True
    spec = fake_pipeline.specs_seen[-1]
    assert spec.init_mesh == mesh_id and spec.keep_geometry  # the job carries the id it was given…
    assert fake_pipeline.init_mesh_paths[-1].name == f"{mesh_id}.ply"  # …and runs on the file it names


def test_api_job_with_an_unknown_mesh_id_is_422(client):
    response = client.post("/v1/jobs", json=contract.job_request("a red ball", init_mesh="0" * 32))
    assert response.status_code == 422
    assert "is not a mesh uploaded to this server" in response.json()["detail"]
    response = client.post("/v1/jobs", json={"prompt": "a red ball", "shape_strength": 1.5})
    assert response.status_code == 422


def test_api_a_mesh_far_larger_than_a_job_body_uploads(client):
    """Mesh uploads have their own cap (50 MB), not the 64 KiB every JSON body gets."""
    data = trimesh.creation.icosphere(subdivisions=5).export(file_type="ply")
    assert len(data) > 4 * 64 * 1024
    response = upload(client, data)
    assert response.status_code == 201, response.json()
    assert response.json()["faces"] == 20 * 4**5

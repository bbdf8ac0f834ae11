"""Retention beyond finished jobs: uploaded meshes and job folders set aside for a bad record go once older than
the retention age (ages set with ``os.utime``), never while a queued or running job needs them, never outside
the data dir."""

from __future__ import annotations

import logging
import os
import time
import uuid

import pytest
import trimesh

from api_helpers import RED_BALL, submit, wait_for, wait_state

DAY_S = 86400
NOTHING = {"deleted": [], "set_aside": [], "meshes": []}


def upload_cube(client) -> str:
    data = trimesh.creation.box(extents=(2.0, 2.0, 2.0)).export(file_type="ply")
    response = client.post("/v1/meshes?format=ply", content=data, headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def age(path, days: float) -> None:
    """Set ``path``'s mtime (a link's own, not its target's) ``days`` into the past."""
    then = time.time() - days * DAY_S
    os.utime(path, (then, then), follow_symlinks=False)


def test_api_an_old_unused_mesh_is_purged_and_one_a_queued_job_names_survives_until_it_ran(make_client, tmp_path):
    meshes = tmp_path / "jobs" / "meshes"
    idle = make_client(start_worker=False, retention_days=30)
    needed, unused, fresh = upload_cube(idle), upload_cube(idle), upload_cube(idle)
    job_id = submit(idle, init_mesh=needed)
    for mesh_id in (needed, unused):
        age(meshes / f"{mesh_id}.ply", 40)
    assert idle.delete("/v1/jobs").json() == NOTHING | {"meshes": [unused]}
    assert sorted(path.name for path in meshes.iterdir()) == sorted([f"{needed}.ply", f"{fresh}.ply"])
    # A restart purges at start-up: the queued job is listed by then, its mesh kept, and the job runs on it.
    restarted = make_client(data_dir=tmp_path / "jobs", retention_days=30)
    assert wait_state(restarted, job_id, ("done", "failed"))["state"] == "done"
    # Once no queued or running job names it, the old mesh goes with the purge that follows the job.
    wait_for(lambda: not (meshes / f"{needed}.ply").exists(), what="the used mesh to be purged after its job")
    assert (meshes / f"{fresh}.ply").exists()  # uploaded just now: inside the age


def test_api_a_running_job_keeps_its_mesh_through_an_on_demand_purge(client, fake_pipeline, tmp_path):
    mesh_id = upload_cube(client)
    fake_pipeline.gate.clear()
    job_id = submit(client, init_mesh=mesh_id)
    wait_state(client, job_id, "running")
    age(tmp_path / "jobs" / "meshes" / f"{mesh_id}.ply", 10)  # old for this purge, not for the 30-day policy
    assert client.delete("/v1/jobs", params={"older_than_s": 0}).json()["meshes"] == []
    fake_pipeline.gate.set()
    assert wait_state(client, job_id, ("done", "failed"))["state"] == "done"
    assert client.delete("/v1/jobs", params={"older_than_s": 0}).json()["meshes"] == [mesh_id]
    response = client.post("/v1/jobs", json={**RED_BALL, "init_mesh": mesh_id})
    assert response.status_code == 422 and "upload it with POST /v1/meshes" in response.json()["detail"]


def test_api_an_interrupted_job_resumes_on_its_old_mesh_after_a_restart(make_client, fake_pipeline, tmp_path):
    before = make_client(retention_days=30)
    mesh_id = upload_cube(before)
    fake_pipeline.pause_at_step = 7  # a checkpoint at 5: the restart resumes from there
    job_id = submit(before, init_mesh=mesh_id)
    wait_for(lambda: before.get(f"/v1/jobs/{job_id}").json()["step"] == 7, what="step 7")
    before.__exit__(None, None, None)  # the server stops mid-run: its record still says running
    age(tmp_path / "jobs" / "meshes" / f"{mesh_id}.ply", 40)
    fake_pipeline.pause_at_step = None
    fake_pipeline.gate.set()
    after = make_client(data_dir=tmp_path / "jobs", retention_days=30)  # purges at start-up
    status = wait_state(after, job_id, ("done", "failed"))
    assert (status["state"], status["resumed_from_step"], status["error"]) == ("done", 5, None)
    assert fake_pipeline.init_mesh_paths[-1].name == f"{mesh_id}.ply"


def test_a_mesh_purged_while_a_job_is_submitted_refuses_the_job_instead_of_queueing_it(tmp_path, fake_pipeline):
    from nfsd_server.api.jobs import JobManager
    from nfsd_server.api.mesh_store import save_mesh
    from nfsd_server.api.schemas import JobRequest

    manager = JobManager(tmp_path / "jobs", default_prior="analytic", device="cpu", run_fn=fake_pipeline)
    data = trimesh.creation.box().export(file_type="ply")
    mesh_id, _, _ = save_mesh(manager.data_dir, data, "ply")
    resolve = manager.resolve

    def resolve_then_purged(request):  # the purge runs between resolve() and the job being listed
        resolved = resolve(request)
        (manager.data_dir / "meshes" / f"{mesh_id}.ply").unlink()
        return resolved

    manager.resolve = resolve_then_purged
    with pytest.raises(ValueError, match="not a mesh uploaded to this server"):
        manager.submit(JobRequest(prompt="a red ball", init_mesh=mesh_id))
    assert manager.list() == ([], 0)
    assert sorted(path.name for path in manager.data_dir.iterdir()) == ["meshes"]  # no job folder left behind


def plant_bad_record(data_dir, name: str | None = None):
    folder = data_dir / (name or uuid.uuid4().hex)
    folder.mkdir(parents=True)
    (folder / "job.json").write_text("{ not json")
    return folder


def test_api_set_aside_job_folders_go_after_the_retention_age_and_are_counted(make_client, tmp_path, caplog):
    data_dir = tmp_path / "jobs"
    old, recent, later = plant_bad_record(data_dir), plant_bad_record(data_dir), plant_bad_record(data_dir)
    foreign = plant_bad_record(data_dir, "my-notes")  # not a job id: not the server's folder to delete
    for folder in (old, foreign):
        age(folder, 40)
    age(later, 20)
    with caplog.at_level(logging.INFO, logger="nfsd_server.api.job_store"):
        client = make_client(data_dir=data_dir, retention_days=30)
    assert not old.exists() and recent.exists() and later.exists() and foreign.exists()
    assert any("1 set-aside job folder(s)" in message for message in caplog.messages)
    assert client.delete("/v1/jobs").json() == NOTHING
    ten_days = client.delete("/v1/jobs", params={"older_than_s": 10 * DAY_S}).json()
    assert ten_days == NOTHING | {"set_aside": [later.name]}
    assert not later.exists() and recent.exists() and client.get("/v1/jobs").json()["total"] == 0


def test_api_links_are_purged_as_links_and_their_targets_outside_the_data_dir_are_untouched(make_client, tmp_path):
    data_dir = tmp_path / "jobs"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("keep me")
    outside_job = outside / "job"  # a job folder elsewhere, linked into the data dir: set aside at load
    outside_job.mkdir()
    (outside_job / "job.json").write_text("{}")
    linked_folder = data_dir / uuid.uuid4().hex
    data_dir.mkdir()
    linked_folder.symlink_to(outside_job, target_is_directory=True)
    holding_link = plant_bad_record(data_dir)  # a set-aside folder holding a link out
    (holding_link / "secret.txt").symlink_to(secret)
    meshes = data_dir / "meshes"
    meshes.mkdir()
    linked_mesh = meshes / f"{uuid.uuid4().hex}.ply"
    linked_mesh.symlink_to(secret)
    for path in (linked_folder, holding_link / "secret.txt", holding_link, linked_mesh, secret, outside_job):
        age(path, 40)

    make_client(data_dir=data_dir, retention_days=30)
    assert not os.path.lexists(linked_folder) and not holding_link.exists() and not os.path.lexists(linked_mesh)
    assert secret.read_text() == "keep me" and (outside_job / "job.json").read_text() == "{}"


def test_api_a_meshes_folder_that_links_out_of_the_data_dir_is_not_purged(make_client, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    stranger = outside / f"{uuid.uuid4().hex}.ply"
    stranger.write_text("someone else's file")
    age(stranger, 40)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "meshes").symlink_to(outside, target_is_directory=True)
    client = make_client(data_dir=tmp_path / "jobs", retention_days=30)
    assert client.delete("/v1/jobs", params={"older_than_s": 0}).json() == NOTHING
    assert stranger.read_text() == "someone else's file"


def test_api_without_an_age_limit_meshes_and_set_aside_folders_stay(make_client, tmp_path):
    bad = plant_bad_record(tmp_path / "jobs")
    age(bad, 400)
    client = make_client(data_dir=tmp_path / "jobs", retention_days=None)
    mesh_id = upload_cube(client)
    age(tmp_path / "jobs" / "meshes" / f"{mesh_id}.ply", 400)
    assert client.delete("/v1/jobs").json() == NOTHING
    assert bad.exists() and (tmp_path / "jobs" / "meshes" / f"{mesh_id}.ply").exists()

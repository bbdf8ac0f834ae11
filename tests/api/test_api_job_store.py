"""What the job store keeps across restarts: records, recovery, set-aside records, retention, and a disk that
refuses to write (FastAPI's TestClient, pipeline and prior loader faked)."""

from __future__ import annotations

import json

import pytest

from api_helpers import RED_BALL, refuse_job_records, submit, wait_for, wait_state


def _finished_job_record(client, tmp_path) -> tuple[str, dict]:
    job_id = submit(client)
    wait_state(client, job_id, "done")
    return job_id, json.loads((tmp_path / "jobs" / job_id / "job.json").read_text())


def _plant(tmp_path, record: dict) -> str:
    """A copy of ``record`` under a fresh job id, as a hand edit or another version might leave it."""
    import uuid

    job_id = uuid.uuid4().hex
    (tmp_path / "jobs" / job_id).mkdir()
    (tmp_path / "jobs" / job_id / "job.json").write_text(json.dumps({**record, "id": job_id}))
    return job_id


def test_api_restart_queues_queued_jobs_again_and_resumes_the_interrupted_one(make_client, fake_pipeline, tmp_path):
    before = make_client()
    done = submit(before)
    wait_state(before, done, "done")
    fake_pipeline.pause_at_step = 7  # checkpoints at 5 and 10: the restart must resume from 5
    running, queued = submit(before), submit(before, prompt="a blue cube")
    wait_for(lambda: before.get(f"/v1/jobs/{running}").json()["step"] == 7, what="step 7")
    before.__exit__(None, None, None)  # the server stops while the job runs
    record = json.loads((tmp_path / "jobs" / running / "job.json").read_text())
    assert record["state"] == "running" and record["step"] == 7  # not failed: the next start resumes it

    fake_pipeline.pause_at_step = None
    fake_pipeline.gate.set()
    after = make_client(data_dir=tmp_path / "jobs")
    assert [job["id"] for job in after.get("/v1/jobs").json()["jobs"]] == [queued, running, done]
    resumed, then = wait_state(after, running, "done"), wait_state(after, queued, "done")
    assert resumed["resumed_from_step"] == 5 and resumed["error"] is None and resumed["step"] == 12
    assert then["resumed_from_step"] is None and then["error"] is None
    assert fake_pipeline.started_from == {"a red ball": 5, "a blue cube": 0}
    assert fake_pipeline.started[-2:] == ["a red ball", "a blue cube"]  # in their original order
    assert after.get(f"/v1/jobs/{done}/result.glb").status_code == 200


def test_api_a_crashed_job_without_a_checkpoint_starts_over(make_client, client, tmp_path):
    job_id = submit(client)
    record = json.loads((tmp_path / "jobs" / job_id / "job.json").read_text())
    wait_state(client, job_id, "done")
    crashed = record | {"id": "f" * 32, "state": "running", "step": 3, "started_at": record["created_at"]}
    (tmp_path / "jobs" / crashed["id"]).mkdir()
    (tmp_path / "jobs" / crashed["id"] / "job.json").write_text(json.dumps(crashed))
    (tmp_path / "jobs" / crashed["id"] / "checkpoint.safetensors").write_bytes(b"torn")
    after = make_client(data_dir=tmp_path / "jobs")
    status = wait_state(after, crashed["id"], "done")
    assert status["resumed_from_step"] == 0 and status["step"] == 12
    assert (tmp_path / "jobs" / crashed["id"] / "checkpoint.safetensors.unreadable").read_bytes() == b"torn"


def test_api_unwritable_data_dir_is_507_and_the_server_goes_on(client, tmp_path):
    store = client.app.state.manager.store
    good_dir, store.data_dir = store.data_dir, tmp_path / "a-file"
    store.data_dir.write_text("not a folder")
    response = client.post("/v1/jobs", json=RED_BALL)
    assert response.status_code == 507 and "job folder" in response.json()["detail"]
    store.data_dir = good_dir
    wait_state(client, submit(client), "done")


def test_api_unreadable_job_records_are_skipped_at_start(make_client, client, tmp_path):
    kept = submit(client)
    wait_state(client, kept, "done")
    odd = json.loads((tmp_path / "jobs" / kept / "job.json").read_text()) | {"id": "0" * 32, "state": "paused"}
    for name, text in {"garbage": "{not json", "0" * 32: json.dumps(odd)}.items():
        (tmp_path / "jobs" / name).mkdir()
        (tmp_path / "jobs" / name / "job.json").write_text(text)
    restarted = make_client(data_dir=tmp_path / "jobs")
    assert [job["id"] for job in restarted.get("/v1/jobs").json()["jobs"]] == [kept]


@pytest.mark.parametrize(
    "change",
    [
        {"glb_name": "../../../../etc/passwd"},
        {"glb_name": "/etc/passwd"},
        {"created_at": "2026-01-01T00:00:00"},  # timezone-naive: used to stop the server from starting
        {"step": "abc"},  # used to make every GET /v1/jobs a 500
        {"metadata": ["not", "a", "dict"]},  # used to make result.json a 500
        {"request": {"prompt": "a red ball"}},  # missing resolved fields
        {"state": "paused"},
    ],
    ids=["dotdot", "absolute", "naive-time", "step-string", "metadata-list", "request-unresolved", "state"],
)
def test_api_a_bad_job_record_is_set_aside_and_the_rest_serve(make_client, client, tmp_path, caplog, change):
    kept, record = _finished_job_record(client, tmp_path)
    bad = _plant(tmp_path, record | change)
    restarted = make_client(data_dir=tmp_path / "jobs")
    listed = restarted.get("/v1/jobs")
    assert listed.status_code == 200 and [job["id"] for job in listed.json()["jobs"]] == [kept]
    assert restarted.get(f"/v1/jobs/{bad}/result.glb").status_code == 404
    assert restarted.get(f"/v1/jobs/{kept}/result.glb").status_code == 200
    assert restarted.get(f"/v1/jobs/{kept}/result.json").status_code == 200
    assert any("setting aside" in message and bad in message for message in caplog.messages)


def test_api_a_job_recorded_before_the_janus_guard_existed_reads_back_without_it(make_client, client, tmp_path):
    kept, record = _finished_job_record(client, tmp_path)
    assert record["request"]["janus_guard"] is True  # today's default
    old = _plant(tmp_path, record | {"request": {k: v for k, v in record["request"].items() if k != "janus_guard"}})
    restarted = make_client(data_dir=tmp_path / "jobs")
    assert restarted.get(f"/v1/jobs/{old}").json()["request"]["janus_guard"] is False
    assert restarted.get(f"/v1/jobs/{kept}").json()["request"]["janus_guard"] is True


def test_api_a_result_swapped_for_a_link_outside_the_job_folder_is_not_served(client, tmp_path):
    job_id, record = _finished_job_record(client, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients")
    glb = tmp_path / "jobs" / job_id / record["glb_name"]
    glb.unlink()
    glb.symlink_to(secret)
    response = client.get(f"/v1/jobs/{job_id}/result.glb")
    assert response.status_code == 404 and "not for clients" not in response.text
    assert "not in its folder" in response.json()["detail"]


def test_api_a_job_that_cannot_be_recorded_is_refused_507_and_leaves_nothing(client, tmp_path, monkeypatch):
    import nfsd_server.api.job_store as jobs_module  # where job records are written

    real_write = jobs_module.write_atomic
    refuse_job_records(monkeypatch)
    response = client.post("/v1/jobs", json=RED_BALL)
    assert response.status_code == 507, response.text
    assert "No space left on device" in response.json()["detail"] and "free disk space" in response.json()["hint"]
    assert list((tmp_path / "jobs").iterdir()) == [] and client.get("/v1/jobs").json()["jobs"] == []
    monkeypatch.setattr(jobs_module, "write_atomic", real_write)
    wait_state(client, submit(client), "done")


def test_api_purge_deletes_finished_jobs_and_their_folders_only(client, fake_pipeline, tmp_path):
    finished = [submit(client) for _ in range(2)]
    for job_id in finished:
        wait_state(client, job_id, "done")
    fake_pipeline.gate.clear()
    running, queued = submit(client), submit(client)
    wait_state(client, running, "running")
    nothing = {"deleted": [], "set_aside": [], "meshes": []}
    assert client.delete("/v1/jobs", params={"older_than_s": 3600}).json() == nothing
    assert client.delete("/v1/jobs", params={"older_than_s": 0}).json() == nothing | {"deleted": finished}
    for job_id in finished:
        assert not (tmp_path / "jobs" / job_id).exists()
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert {job["id"] for job in client.get("/v1/jobs").json()["jobs"]} == {running, queued}
    assert client.delete("/v1/jobs", params={"older_than_s": -1}).status_code == 422


def test_api_retention_keeps_the_newest_finished_jobs_and_drops_old_ones(make_client, client, tmp_path):
    old = submit(client)
    wait_state(client, old, "done")
    record = json.loads((tmp_path / "jobs" / old / "job.json").read_text())
    (tmp_path / "jobs" / old / "job.json").write_text(json.dumps(record | {"finished_at": "2020-01-01T00:00:00+00:00"}))
    restarted = make_client(data_dir=tmp_path / "jobs", retention_days=30, max_finished=2)
    assert not (tmp_path / "jobs" / old).exists()  # finished in 2020: deleted at start-up
    newer = []
    for _ in range(3):  # one at a time: once the third is done the first may already be purged (404)
        newer.append(submit(restarted))
        wait_state(restarted, newer[-1], "done")
    wait_for(lambda: restarted.get("/v1/jobs").json()["total"] == 2, what="the oldest finished job to go")
    assert [job["id"] for job in restarted.get("/v1/jobs").json()["jobs"]] == newer[:0:-1]

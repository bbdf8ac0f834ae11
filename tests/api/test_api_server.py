"""A real `python -m nfsd_server serve --port 0 --parent-stdin` on loopback, driven over HTTP as the add-on does.

The end-to-end tests train for real with the analytic prior ("a red ball", draft preset, a few steps).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time

import httpx
import psutil
import pytest
import trimesh
from PIL import Image

from api_helpers import AUTH, SpawnedServer, wait_for

RED_BALL = {"prompt": "a red ball", "prior": "analytic", "preset": "draft", "steps": 10, "poly_budget": 1000,
            "texture_size": 512, "seed": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    spawned = SpawnedServer(tmp_path_factory.mktemp("served-jobs"))
    yield spawned
    spawned.kill()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        yield client


def status_of(http, job_id: str) -> dict:
    response = http.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_state(http, job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict:
    def reached():
        status = status_of(http, job_id)
        return status if status["state"] in states else None

    return wait_for(reached, timeout, f"job {job_id} to reach {states}")


def test_api_server_announces_itself_once_and_serves_health(server):
    assert set(server.announcement) == {"port", "pid", "version"}
    assert server.announcement["pid"] == server.process.pid and server.port > 0
    health = httpx.get(f"{server.url}/v1/health", timeout=10).json()  # no token needed
    assert health["version"] == server.announcement["version"] and health["default_prior"] == "analytic"


def test_api_server_rejects_missing_and_wrong_tokens(server):
    assert httpx.get(f"{server.url}/v1/jobs", timeout=10).status_code == 401
    wrong = httpx.get(f"{server.url}/v1/jobs", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong token"
    assert httpx.get(f"{server.url}/v1/jobs", headers=AUTH, timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [({"prompt": ""}, "prompt"), ({"prompt": "a red ball", "steps": -1}, "steps"),
     ({"prompt": "a red ball", "texture_size": 1 << 20}, "texture_size"), ({"prompt": ["a red ball"]}, "prompt"),
     ({"prompt": "a red ball", "unknown": 1}, "unknown")],
)
def test_api_server_bad_bodies_are_422(http, body, field):
    response = http.post("/v1/jobs", json=body)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == field


def test_api_server_exits_when_parent_stdin_closes(tmp_path):
    spawned = SpawnedServer(tmp_path / "jobs")
    try:
        pid = spawned.process.pid
        assert psutil.pid_exists(pid)
        assert spawned.close_stdin_and_wait(timeout=15) == 0
        wait_for(lambda: not psutil.pid_exists(pid), 5, "the server process to be gone")
        assert spawned.process.stdout.read() == b""  # the spawn line was the only thing on stdout
    finally:
        spawned.kill()


def test_api_server_refuses_non_loopback_without_token(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "NFSD_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "nfsd_server", "serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "without a token" in result.stderr


def test_api_server_failed_job_does_not_stop_the_next(http):
    missing_model = http.post("/v1/jobs", json={"prompt": "a red ball", "prior": "stable-diffusion",
                                               "model": "/nonexistent/model-folder", "steps": 5}).json()["id"]
    failed = wait_state(http, missing_model, ("failed", "done", "cancelled"))
    assert failed["state"] == "failed" and "/nonexistent/model-folder" in failed["error"]
    assert "Traceback" not in failed["error"] and failed["hint"]
    assert http.get("/v1/health").json()["running_job"] is None


@pytest.fixture(scope="module")
def red_ball(server):
    """The real pipeline, once per module: a prompt the analytic prior does not know, then "a red ball"."""
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as http:
        unknown = http.post("/v1/jobs", json={**RED_BALL, "prompt": "a purple elephant"}).json()["id"]
        job_id = http.post("/v1/jobs", json=RED_BALL).json()["id"]
        steps_seen = []
        while (status := status_of(http, job_id))["state"] not in ("done", "failed", "cancelled"):
            steps_seen.append(status["step"])
            time.sleep(0.05)
        return {"id": job_id, "status": status, "steps_seen": steps_seen, "unknown": status_of(http, unknown)}


def test_api_server_unknown_prompt_fails_and_the_next_job_runs(red_ball):
    assert red_ball["unknown"]["state"] == "failed" and "a purple elephant" in red_ball["unknown"]["error"]
    assert red_ball["status"]["state"] == "done", red_ball["status"]


def test_api_server_generates_a_red_ball_end_to_end(red_ball, http):
    status, steps_seen, job_id = red_ball["status"], red_ball["steps_seen"], red_ball["id"]
    assert status["state"] == "done", status
    assert any(0 < step < RED_BALL["steps"] for step in steps_seen), steps_seen  # progress showed while training
    assert steps_seen == sorted(steps_seen)
    assert status["step"] == status["total"] == RED_BALL["steps"] and status["has_preview"]

    preview = http.get(f"/v1/jobs/{job_id}/preview.png")
    assert preview.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(preview.content)).mode == "RGB"
    glb = http.get(f"/v1/jobs/{job_id}/result.glb")
    from nfsd_server.export import slugify

    assert glb.status_code == 200 and f'filename="{slugify("a red ball")}.glb"' in glb.headers["content-disposition"]
    mesh = trimesh.load(io.BytesIO(glb.content), file_type="glb", force="mesh")
    assert 0 < len(mesh.faces) <= RED_BALL["poly_budget"]
    metadata = http.get(f"/v1/jobs/{job_id}/result.json").json()
    assert metadata["prompt"] == "a red ball" and metadata["seed"] == RED_BALL["seed"]
    assert http.get("/v1/health").json()["models_loaded"] == ["analytic"]


def test_api_server_cancels_running_and_queued_jobs(http, red_ball):
    running = http.post("/v1/jobs", json={**RED_BALL, "steps": 100_000}).json()["id"]
    queued = http.post("/v1/jobs", json=RED_BALL).json()["id"]
    assert http.delete(f"/v1/jobs/{queued}").json()["state"] == "cancelled"
    wait_for(lambda: status_of(http, running)["step"] > 0, 90, "the long job to train")
    asked_at = http.delete(f"/v1/jobs/{running}").json()["step"]
    cancelled = wait_state(http, running, ("cancelled", "failed", "done"), timeout=30)
    assert cancelled["state"] == "cancelled" and cancelled["step"] <= asked_at + 1
    assert status_of(http, queued)["started_at"] is None


def test_api_server_restart_lists_results_and_resumes_the_interrupted_job(server, red_ball, tmp_path):
    data_dir = tmp_path / "jobs"
    done = red_ball["id"]
    shutil.copytree(server.data_dir / done, data_dir / done)  # a finished job from an earlier run
    first = SpawnedServer(data_dir)
    try:
        with httpx.Client(base_url=first.url, headers=AUTH, timeout=30) as http:
            interrupted = http.post("/v1/jobs", json={**RED_BALL, "steps": 100_000}).json()["id"]
            wait_for(lambda: status_of(http, interrupted)["step"] > 0, 90, "the long job to train")
    finally:
        first.kill()  # a crash: no graceful shutdown, job.json still says running
    second = SpawnedServer(data_dir)
    try:
        with httpx.Client(base_url=second.url, headers=AUTH, timeout=30) as http:
            jobs = {job["id"]: job for job in http.get("/v1/jobs").json()["jobs"]}
            assert jobs[done]["state"] == "done" and http.get(f"/v1/jobs/{done}/result.glb").status_code == 200
            # Killed before its first checkpoint (every 200 steps): it starts over, and says so.
            assert jobs[interrupted]["state"] in ("queued", "running") and jobs[interrupted]["error"] is None
            assert jobs[interrupted]["resumed_from_step"] == 0
            wait_for(lambda: status_of(http, interrupted)["step"] > 0, 90, "the resumed job to train")
            assert http.delete(f"/v1/jobs/{interrupted}").status_code == 200
    finally:
        second.close_stdin_and_wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--device", "warp-drive"], "unknown device 'warp-drive'"), (["--port", "70000"], "--port must be in 0..65535"),
     (["--host", "192.0.2.1", "--token", ""], "without a token"),
     (["--token", " "], "must be visible characters without spaces"),
     (["--token", "abc def"], "must be visible characters without spaces")],
)
def test_api_serve_bad_arguments_are_one_line_exit_2(tmp_path, capsys, monkeypatch, args, message):
    from nfsd_server.cli import main

    monkeypatch.delenv("NFSD_TOKEN", raising=False)
    assert main(["serve", "--data-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_api_served_connections_have_nagle_off():
    import socket

    from nfsd_server.api.server import bind_socket

    listener = bind_socket("127.0.0.1", 0)
    try:
        listener.listen(1)
        with socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
            with accepted:
                # What asyncio (and so uvicorn) checks before it sets TCP_NODELAY on a connection, and the result.
                assert listener.proto == socket.IPPROTO_TCP
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listener.close()


def test_api_server_exits_0_on_sigterm(tmp_path):
    import signal

    spawned = SpawnedServer(tmp_path / "jobs")
    try:
        spawned.process.send_signal(signal.SIGTERM)
        assert spawned.process.wait(30) == 0
    finally:
        spawned.kill()

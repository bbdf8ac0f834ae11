"""`nfsd serve --ray`: the same /v1 job API, with jobs running concurrently on a (loopback, 2-CPU) Ray cluster."""

from __future__ import annotations

import os
import shutil
import signal

import pytest
from farm_helpers import FAST_JOB, wait_until
from fastapi.testclient import TestClient
from nfsd_server.api.app import ServerConfig, create_app
from nfsd_server.train import CHECKPOINT_NAME

pytestmark = pytest.mark.slow  # ~25–45 s each on 2 busy cores (actors import torch; jobs train for real)


@pytest.fixture
def http(tmp_path, ray_executor):
    app = create_app(ServerConfig(data_dir=tmp_path / "jobs", default_prior="analytic"), executor=ray_executor)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _status(http, job_id):
    return http.get(f"/v1/jobs/{job_id}").json()


def _submit(http, prompt, **overrides):
    response = http.post("/v1/jobs", json={**FAST_JOB, "prompt": prompt, "seed": 0, **overrides})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _wait_finished(http, job_id, timeout=180):
    return wait_until(
        lambda: (status := _status(http, job_id))["state"] in ("done", "failed", "cancelled") and status,
        timeout, f"job {job_id} to finish", every=0.2,
    )


def _worker_of(executor, job_id, other_than=None):
    """The identity of the Ray worker running ``job_id`` (once it is not ``other_than``'s pid)."""
    def current():
        identity = next((who for folder, who in executor.running().items() if folder.endswith(job_id)), None)
        return identity if identity and identity["pid"] != other_than else None

    return wait_until(current, 120, f"a worker to run job {job_id}")


def test_ray_server_runs_two_jobs_at_once_and_cancel_reaches_the_running_task(http, ray_executor):
    assert http.get("/v1/health").json()["device"] == "ray: 2 CPU workers"
    long = _submit(http, "a blue cube", steps=5000)
    short = _submit(http, "a red ball")
    # Both train at the same moment: two jobs, two workers.
    wait_until(lambda: all((s := _status(http, job))["state"] == "running" and s["step"] > 0 for job in (long, short)),
               120, "both jobs to be training at once", every=0.1)
    asked_at = http.delete(f"/v1/jobs/{long}").json()["step"]
    cancelled = _wait_finished(http, long, timeout=60)
    assert cancelled["state"] == "cancelled" and cancelled["step"] <= asked_at + 25, (asked_at, cancelled)
    finished = _wait_finished(http, short)
    assert finished["state"] == "done", finished
    assert finished["step"] == 40
    glb = http.get(f"/v1/jobs/{short}/result.glb")
    assert glb.status_code == 200 and glb.content[:4] == b"glTF"
    assert http.get(f"/v1/jobs/{short}/preview.png").content[:8] == b"\x89PNG\r\n\x1a\n"
    metadata = http.get(f"/v1/jobs/{short}/result.json").json()
    assert metadata["faces"] > 0 and metadata["farm"]["attempts"] == 1 and metadata["farm"]["lost_workers"] == []


def test_ray_server_retries_a_killed_worker_once_then_fails_naming_it(http, ray_executor, tmp_path):
    # A checkpoint to resume from: a finished 20-step run of the same settings leaves one at step 20.
    warm = _submit(http, "a green torus", steps=20)
    assert _wait_finished(http, warm)["state"] == "done"
    # Killed once: the job is retried on a fresh worker, from the checkpoint in its folder, and ends done.
    job = _submit(http, "a green torus", steps=60)
    first = _worker_of(ray_executor, job)
    wait_until(lambda: _status(http, job)["step"] > 0, 120, "the job to train")
    shutil.copy(tmp_path / "jobs" / warm / CHECKPOINT_NAME, tmp_path / "jobs" / job / CHECKPOINT_NAME)
    os.kill(first["pid"], signal.SIGKILL)
    _worker_of(ray_executor, job, other_than=first["pid"])
    frozen = _status(http, job)["step"]  # the dead worker's last report
    assert frozen < 20
    resumed_at = wait_until(lambda: (step := _status(http, job)["step"]) != frozen and step, 120, "the retry to step")
    assert resumed_at > 20, f"the retry started at step {resumed_at}, not from the step-20 checkpoint"
    finished = _wait_finished(http, job)
    assert finished["state"] == "done", finished
    farm = http.get(f"/v1/jobs/{job}/result.json").json()["farm"]
    assert farm["attempts"] == 2 and farm["lost_workers"] == [f"worker pid {first['pid']} on {first['host']} (cpu)"]

    # Killed on both attempts: failed, with a message naming both lost workers; the server stays up.
    job = _submit(http, "a red ball", steps=5000)
    lost = []
    for _ in range(2):
        worker = _worker_of(ray_executor, job, other_than=lost[-1] if lost else None)
        os.kill(worker["pid"], signal.SIGKILL)
        lost.append(worker["pid"])
    failed = _wait_finished(http, job)
    assert failed["state"] == "failed" and "died 2 times" in failed["error"], failed
    assert all(f"worker pid {pid} " in failed["error"] for pid in lost), failed["error"]
    assert http.get("/v1/health").status_code == 200 and len(http.get("/v1/jobs").json()["jobs"]) == 3

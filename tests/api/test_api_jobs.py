"""The job API through FastAPI's TestClient, with the pipeline and prior loader faked (fast, deterministic)."""

from __future__ import annotations

import io
import json

import pytest
import trimesh
from PIL import Image

from api_helpers import RED_BALL, TOKEN, submit, wait_for, wait_state
from nfsd_contract import NFSD_NEGATIVE_PROMPT


def test_api_job_runs_to_done_with_progress_preview_and_result(client, tmp_path):
    job_id = submit(client, seed=7)
    status = wait_state(client, job_id, "done")
    assert status["step"] == status["total"] == 12
    assert status["loss"] == pytest.approx(1 / 12)
    assert status["error"] is None and status["queue_position"] is None
    assert status["started_at"] and status["finished_at"] and status["created_at"] <= status["started_at"]
    assert status["has_preview"] and status["preview_step"] == 12

    preview = client.get(f"/v1/jobs/{job_id}/preview.png")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(preview.content)).size == (16, 16)

    glb = client.get(f"/v1/jobs/{job_id}/result.glb")
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
    assert 'filename="a_red_ball.glb"' in glb.headers["content-disposition"]
    mesh = trimesh.load(io.BytesIO(glb.content), file_type="glb", force="mesh")
    assert len(mesh.faces) > 0

    assert client.get(f"/v1/jobs/{job_id}/result.json").json() == {
        "prompt": "a red ball", "seed": 7, "method": "nfsd", "steps": 12,
    }
    # The folder on disk says the same as the API.
    record = json.loads((tmp_path / "jobs" / job_id / "job.json").read_text())
    assert record["state"] == "done" and record["glb_name"] == "a_red_ball.glb"


def test_api_defaults_are_resolved_at_submit_and_echoed(make_client):
    client = make_client(default_prior="stable-diffusion", default_model="some/model")
    job_id = submit(client, prompt="  a red ball  ", steps=None, preset="draft")
    request = client.get(f"/v1/jobs/{job_id}").json()["request"]
    assert request["prompt"] == "a red ball"  # stripped
    assert request["negative_prompt"] == NFSD_NEGATIVE_PROMPT
    assert request["guidance_scale"] == 7.5 and request["steps"] == 400  # NFSD default, draft preset's steps
    assert request["prior"] == "stable-diffusion" and request["model"] == "some/model"
    assert 0 <= request["seed"] < 2**31

    sds = client.get(f"/v1/jobs/{submit(client, method='sds', seed=5, prior='analytic')}").json()["request"]
    assert sds["guidance_scale"] == 100.0 and sds["seed"] == 5
    assert sds["model"] is None  # the analytic prior has no model; the server default is for Stable Diffusion
    seeds = {client.get(f"/v1/jobs/{submit(client)}").json()["request"]["seed"] for _ in range(3)}
    assert len(seeds) > 1  # random when not given


def test_api_jobs_run_in_order_with_queue_positions_and_list_newest_first(client, fake_pipeline):
    fake_pipeline.gate.clear()
    first, second, third = submit(client), submit(client, prompt="a blue cube"), submit(client, prompt="a green torus")
    wait_state(client, first, "running")
    assert client.get(f"/v1/jobs/{second}").json()["queue_position"] == 0
    assert client.get(f"/v1/jobs/{third}").json()["queue_position"] == 1
    listed = client.get("/v1/jobs").json()["jobs"]
    assert [job["id"] for job in listed] == [third, second, first]
    assert [job["queue_position"] for job in listed] == [1, 0, None]
    health = client.get("/v1/health").json()
    assert health["queue_length"] == 2 and health["running_job"] == first

    fake_pipeline.gate.set()
    wait_state(client, third, "done")
    assert fake_pipeline.started == ["a red ball", "a blue cube", "a green torus"]


def test_api_cancel_running_job_stops_within_one_step(client, fake_pipeline):
    fake_pipeline.step_s = 0.02
    job_id = submit(client, steps=100_000)
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["step"] >= 3, what="a few steps")
    answer = client.delete(f"/v1/jobs/{job_id}")
    assert answer.status_code == 200 and answer.json()["state"] in ("running", "cancelled")
    status = wait_state(client, job_id, "cancelled")
    assert status["step"] <= answer.json()["step"] + 1
    assert fake_pipeline.cancelled_at["a red ball"] <= answer.json()["step"] + 1
    assert status["finished_at"] is not None
    assert client.get(f"/v1/jobs/{job_id}/result.glb").status_code == 409


def test_api_cancel_queued_job_never_starts(client, fake_pipeline):
    fake_pipeline.gate.clear()
    running, queued = submit(client), submit(client, prompt="a blue cube")
    wait_state(client, running, "running")
    answer = client.delete(f"/v1/jobs/{queued}")
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
    fake_pipeline.gate.set()
    wait_state(client, running, "done")
    after = submit(client, prompt="a green torus")  # the worker goes on past the cancelled job
    wait_state(client, after, "done")
    assert fake_pipeline.started == ["a red ball", "a green torus"]
    assert client.get(f"/v1/jobs/{queued}").json()["started_at"] is None


def test_api_cancel_of_finished_job_is_a_noop(client):
    job_id = submit(client)
    done = wait_state(client, job_id, "done")
    answer = client.delete(f"/v1/jobs/{job_id}")
    assert answer.status_code == 200 and answer.json() == done


def test_api_failed_job_reports_error_and_next_job_runs(client):
    bad_prompt = submit(client, prompt="a purple elephant")
    bad_model = submit(client, prior="stable-diffusion", model="/nonexistent/model")
    good = submit(client)
    for job_id, words in ((bad_prompt, "a purple elephant"), (bad_model, "/nonexistent/model")):
        status = wait_state(client, job_id, "failed")
        assert words in status["error"] and "Traceback" not in status["error"]
        assert status["hint"]
    assert wait_state(client, good, "done")["error"] is None


def test_api_same_model_stays_warm_between_jobs(client, fake_loader):
    for prompt in ("a red ball", "a blue cube"):
        wait_state(client, submit(client, prompt=prompt), "done")
    assert fake_loader.loads == [("analytic", None, "cpu")]
    wait_state(client, submit(client, prior="stable-diffusion", model="tiny/sd"), ("done", "failed"))
    assert len(fake_loader.loads) == 2  # another model is a new load…
    assert client.get("/v1/health").json()["models_loaded"] == ["stable-diffusion:tiny/sd"]  # …evicting the first


def test_api_dtype_reaches_the_loader_and_a_new_dtype_is_a_new_load(client, fake_loader):
    wait_state(client, submit(client, prior="stable-diffusion", model="tiny/sd"), ("done", "failed"))
    wait_state(client, submit(client, prior="stable-diffusion", model="tiny/sd", dtype="fp32"), ("done", "failed"))
    assert fake_loader.dtypes == ["auto", "fp32"]
    assert client.post("/v1/jobs", json={"prompt": "a red ball", "dtype": "fp8"}).status_code == 422


def test_api_encoder_reaches_the_loader(client, fake_loader):
    wait_state(client, submit(client, prior="stable-diffusion", model="tiny/sd", encoder="taesd"), ("done", "failed"))
    assert fake_loader.encoders == ["taesd"]
    assert client.post("/v1/jobs", json={"prompt": "a red ball", "encoder": "tiny"}).status_code == 422


def test_api_non_finite_loss_is_reported_as_null(client, fake_pipeline):
    fake_pipeline.loss = float("nan")
    fake_pipeline.gate.clear()
    job_id = submit(client)
    wait_state(client, job_id, "running")
    fake_pipeline.gate.set()
    assert wait_state(client, job_id, "done")["loss"] is None


ROUTES = [
    ("get", "/v1/jobs"), ("post", "/v1/jobs"), ("get", "/v1/jobs/{id}"), ("delete", "/v1/jobs/{id}"),
    ("get", "/v1/jobs/{id}/preview.png"), ("get", "/v1/jobs/{id}/result.glb"), ("get", "/v1/jobs/{id}/result.json"),
]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": TOKEN}], ids=["none", "wrong", "basic", "no-scheme"])
def test_api_every_job_route_needs_the_token(client, headers):
    job_id = submit(client)
    for method, path in ROUTES:
        response = client.request(method, path.format(id=job_id), headers={"Authorization": ""} | headers,
                                  json=RED_BALL if method == "post" else None)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["hint"]
    assert client.get("/v1/health", headers={"Authorization": ""}).status_code == 200


def test_api_without_a_token_a_loopback_server_accepts_anyone(make_client):
    client = make_client(token=None)
    assert client.get("/v1/jobs", headers={"Authorization": ""}).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 1001}, "prompt"),
        ({"prompt": "a red\nball"}, "prompt"),
        ({"prompt": "\u200b\u200c\u2060\ufeff"}, "prompt"),  # zero-width only
        ({"prompt": "\u00a0\u3000"}, "prompt"),  # no-break and ideographic spaces only
        ({"prompt": "a red ball", "negative_prompt": "bad\x00"}, "negative_prompt"),
        ({"prompt": 123}, "prompt"),
        ({"steps": -5}, "steps"),
        ({"steps": 0}, "steps"),
        ({"steps": "10"}, "steps"),
        ({"steps": 10.5}, "steps"),
        ({"seed": True}, "seed"),
        ({"seed": 2**31}, "seed"),
        ({"texture_size": 8192}, "texture_size"),
        ({"poly_budget": 99}, "poly_budget"),
        ({"guidance_scale": 0}, "guidance_scale"),
        ({"guidance_scale": 501}, "guidance_scale"),
        ({"method": "vsd"}, "method"),
        ({"preset": "ultra"}, "preset"),
        ({"prior": "dall-e"}, "prior"),
        ({"init_mesh": "Cube"}, "init_mesh"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_api_bad_body_is_422_naming_the_field(client, body, field):
    response = client.post("/v1/jobs", json={"prompt": "a red ball", **body})
    assert response.status_code == 422
    assert any(error["loc"][-1] == field for error in response.json()["detail"]), response.json()
    assert field in response.json()["hint"]
    assert client.get("/v1/jobs").json()["jobs"] == []


@pytest.mark.parametrize("raw", [b"{not json", b'{"prompt": "a red ball", "guidance_scale": NaN}', b"[]", b""])
def test_api_malformed_body_is_422_not_500(client, raw):
    response = client.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["hint"]
    assert "fix 0" not in response.json()["hint"] and "fix 1" not in response.json()["hint"]


def test_api_a_json_syntax_error_hint_says_so(client):
    response = client.post("/v1/jobs", content=b'{"prompt": "a red ball",}', headers={"Content-Type": "application/json"})
    assert response.json()["hint"] == "the body is not valid JSON (error at character 24); send one JSON object"


def test_api_unknown_job_is_404_and_unfinished_result_is_409(client, fake_pipeline):
    for method, path in ROUTES[2:]:
        response = client.request(method, path.format(id="0" * 32))
        assert response.status_code == 404 and "no job" in response.json()["detail"]
    fake_pipeline.gate.clear()
    job_id = submit(client)
    wait_state(client, job_id, "running")
    preview = client.get(f"/v1/jobs/{job_id}/preview.png")
    assert preview.status_code == 404 and "no preview yet" in preview.json()["detail"]
    for suffix in ("result.glb", "result.json"):
        response = client.get(f"/v1/jobs/{job_id}/{suffix}")
        assert response.status_code == 409 and "running" in response.json()["detail"]


def test_api_unexpected_error_is_500_json_without_traceback(client):
    def broken():
        raise RuntimeError("secret internals")

    client.app.state.manager.list = broken
    response = client.get("/v1/jobs")
    assert response.status_code == 500
    assert response.json()["detail"] == "internal server error" and "secret" not in response.text


def test_api_health_reports_server_settings_and_withholds_details_without_the_token(make_client, fake_pipeline):
    client = make_client(default_model="my/model")
    fake_pipeline.gate.clear()
    job_id = submit(client)
    wait_state(client, job_id, "running")
    health = client.get("/v1/health").json()
    assert health["device"] == "cpu" and health["default_prior"] == "analytic" and health["default_model"] == "my/model"
    assert health["memory"]["rss_bytes"] > 10_000_000 and health["memory"]["cuda_allocated_bytes"] is None
    assert health["queue_length"] == 0 and health["running_job"] == job_id and health["models_loaded"] == ["analytic"]
    assert health["authenticated"] is True
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        anonymous = client.get("/v1/health", headers=headers).json()
        assert anonymous == {
            "version": health["version"], "device": "cpu", "default_prior": "analytic", "authenticated": False,
            "default_model": None, "models_loaded": None, "queue_length": None, "running_job": None, "memory": None,
        }
    open_server = make_client(token=None)
    assert open_server.get("/v1/health", headers={"Authorization": ""}).json()["authenticated"] is True


def test_api_only_model_loading_errors_get_the_model_hint(client, monkeypatch):
    import errno

    def disk_full_while_training(spec, prior, out_dir, callbacks, resume=False, files=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(client.app.state.manager._executor, "_generate", disk_full_while_training)
    full = wait_state(client, submit(client), "failed")
    assert "hub id" not in full["hint"] and "disk is full" in full["hint"]
    bad_model = wait_state(client, submit(client, prior="stable-diffusion", model="/nonexistent/model"), "failed")
    assert "hub id" in bad_model["hint"]


def test_api_the_queue_is_capped_with_429(make_client, tmp_path):
    client = make_client(start_worker=False, max_queued=2)
    first, _ = submit(client), submit(client)
    refused = client.post("/v1/jobs", json=RED_BALL)
    assert refused.status_code == 429 and "2 jobs are already queued" in refused.json()["detail"]
    assert refused.json()["hint"] and refused.headers["retry-after"] == "30"
    assert len(list((tmp_path / "jobs").iterdir())) == 2  # the refused job left no folder
    client.delete(f"/v1/jobs/{first}")
    submit(client)  # room again


def test_api_job_list_is_paged_newest_first(make_client):
    client = make_client(start_worker=False)
    ids = [submit(client) for _ in range(5)]
    everything = client.get("/v1/jobs").json()
    assert [job["id"] for job in everything["jobs"]] == ids[::-1]
    assert everything["total"] == 5 and everything["next_offset"] is None
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [job["id"] for job in page["jobs"]] == ids[:2:-1] and page["next_offset"] == 2 and page["total"] == 5
    last = client.get("/v1/jobs", params={"limit": 2, "offset": 4}).json()
    assert [job["id"] for job in last["jobs"]] == ids[:1] and last["next_offset"] is None
    assert client.get("/v1/jobs", params={"limit": 1001}).status_code == 422
    assert client.get("/v1/jobs", params={"offset": -1}).status_code == 422


def test_api_benchmark_models_need_the_server_flag(make_client):
    client = make_client(start_worker=False)
    refused = client.post("/v1/jobs", json={**RED_BALL, "prior": "stable-diffusion", "model": "random:sd21-base"})
    assert refused.status_code == 403 and "--allow-benchmark-models" in refused.json()["detail"]
    allowed = make_client(start_worker=False, allow_benchmark_models=True)
    assert allowed.post("/v1/jobs", json={**RED_BALL, "prior": "stable-diffusion", "model": "random:tiny"}).status_code == 202


@pytest.mark.parametrize("offline", ["env", "unreachable"])
def test_api_an_uncached_hub_model_fails_at_once_while_offline(tmp_path, fake_pipeline, monkeypatch, offline):
    import nfsd_server.api.jobs as jobs_module
    from nfsd_server.api.jobs import JobManager
    from nfsd_server.api.schemas import JobRequest

    loads = []
    monkeypatch.setattr(jobs_module, "load_prior", lambda *args: loads.append(args))
    if offline == "unreachable":  # no offline flag, but nothing answers where the hub should be
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    manager = JobManager(tmp_path / "jobs", device="cpu", run_fn=fake_pipeline)  # the real (checked) loader
    manager.start()
    try:
        job = manager.submit(JobRequest(prompt="a red ball", prior="stable-diffusion", model="nobody/no-such-model"))
        status = wait_for(lambda: (s := manager.status(job.id)).state == "failed" and s, what="the job to fail")
    finally:
        manager.stop()
    assert "'nobody/no-such-model' is not in this server's model cache" in status.error and "offline" in status.error
    assert loads == []  # diffusers was never asked (it would retry for ~20 s)


def test_api_created_at_order_is_queue_order(make_client, monkeypatch):
    """Two submits race: the one whose clock reading comes first must also be first in the queue."""
    import threading
    from datetime import datetime as real_datetime

    import nfsd_server.api.jobs as jobs_module

    client = make_client(start_worker=False)
    second_done, first_read = threading.Event(), threading.Event()

    class SlowFirstClock(real_datetime):
        @classmethod
        def now(cls, tz=None):
            value = real_datetime.now(tz)
            if not first_read.is_set():
                first_read.set()
                second_done.wait(0.5)  # the other submit runs now, if it can
            return value

    monkeypatch.setattr(jobs_module, "datetime", SlowFirstClock)
    first = threading.Thread(target=submit, args=(client,))
    first.start()
    first_read.wait(5)
    submit(client, prompt="a blue cube")
    second_done.set()
    first.join(5)
    listed = client.get("/v1/jobs").json()["jobs"][::-1]  # oldest first
    assert [job["queue_position"] for job in listed] == [0, 1]
    assert listed[0]["created_at"] <= listed[1]["created_at"]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("{file}", "is a file, not a folder"),
        ("/no/such/folder", "model folder '/no/such/folder' does not exist"),
        ("/" + "m" * 4095, "(4096 characters)"),
        ("not a hub id!", "is neither a folder on the server nor a hub id"),
    ],
    ids=["file", "missing", "too-long", "not-an-id"],
)
def test_model_source_problems_are_one_short_line(tmp_path, model, message):
    from nfsd_server.model_source import check_model

    (tmp_path / "unet.safetensors").write_bytes(b"weights")
    with pytest.raises(ValueError) as error:
        check_model(model.format(file=tmp_path / "unet.safetensors"))
    assert message in str(error.value) and "\n" not in str(error.value) and len(str(error.value)) < 300

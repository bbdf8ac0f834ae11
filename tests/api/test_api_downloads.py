"""``/v1/models/downloads`` against a fake hub on loopback (HF_ENDPOINT) holding the tiny random Stable Diffusion:
only the prior's files, progress in bytes, cancel, resume after a cancel and after a server restart (per file: what
finished is not fetched again), the offline message, and a downloaded model that loads."""

from __future__ import annotations

import itertools

import pytest
from fastapi.testclient import TestClient

from api_helpers import AUTH, TOKEN, wait_for
from fake_hub import FakeHub
from nfsd_server.api.app import ServerConfig, create_app
from nfsd_server.downloads import files_to_fetch

PRIOR_FILES = [
    "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json", "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json",
]
_names = (f"nfsd-test/tiny-sd-{n}" for n in itertools.count())  # one cache folder per test


def test_files_to_fetch_takes_configs_and_one_safetensors_set_per_component():
    repo = ["model_index.json", "README.md", "unet/config.json", "unet/diffusion_pytorch_model.bin",
            "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
            "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors", "tokenizer/vocab.json",
            "tokenizer/merges.txt", "scheduler/scheduler_config.json", "safety_checker/model.safetensors",
            "v2-1_512-ema-pruned.ckpt"]
    assert files_to_fetch(repo) == [
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json", "text_encoder/model.safetensors",
        "tokenizer/merges.txt", "tokenizer/vocab.json", "scheduler/scheduler_config.json"]
    fp16 = files_to_fetch(repo, variant="fp16")
    # Only the UNet runs in fp16 (dtype_policy): its fp16 weights replace the plain ones; the text encoder's
    # fp16 variant is left (it runs in fp32), and the VAE has none.
    assert fp16 == [name.replace("unet/diffusion_pytorch_model.safetensors",
                                 "unet/diffusion_pytorch_model.fp16.safetensors") for name in files_to_fetch(repo)]
    with pytest.raises(ValueError, match="the repo's unet has no safetensors weights"):
        files_to_fetch(["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin"])


def go_online(monkeypatch):
    """tests/conftest.py sets both offline flags (huggingface_hub honours either); the download child must go out."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


@pytest.fixture
def hub(tiny_sd_dir, monkeypatch):
    repo = next(_names)
    hub = FakeHub({repo: tiny_sd_dir}, throttle_s=0.004)
    hub.repo = repo
    go_online(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub
    hub.close()


def _client(data_dir) -> TestClient:
    app = create_app(ServerConfig(data_dir=data_dir, token=TOKEN, default_prior="analytic"))
    client = TestClient(app, headers=AUTH, raise_server_exceptions=False)
    client.__enter__()
    return client


def _wait(client, download_id, until, what, timeout=60.0) -> dict:
    return wait_for(lambda: (s := client.get(f"/v1/models/downloads/{download_id}").json()) if until(
        client.get(f"/v1/models/downloads/{download_id}").json()) else None, timeout, what)


def _cached(repo: str, name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, name), str)


def _stopped_half_way(client, download_id, repo) -> list[str]:
    """Wait until the VAE is in the cache and the UNet (the largest, ~1 s at the hub's pace) is not; the files
    that then finished."""
    vae, unet = "vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"
    _wait(client, download_id, lambda s: s["state"] == "running" and _cached(repo, vae) and not _cached(repo, unet),
          "a download half-way", timeout=30)
    return [name for name in PRIOR_FILES if _cached(repo, name)]


def _fetched_again(hub, finished) -> list[str]:
    """Of ``finished``, what the hub served more than once (a resume must fetch only what had not finished)."""
    names = [name for name, _ in hub.gets]
    return [name for name in finished if names.count(name) > 1]


def test_a_download_fetches_only_what_the_prior_loads_and_the_model_serves_a_job(hub, tmp_path, monkeypatch):
    client = _client(tmp_path / "data")
    try:
        assert client.post("/v1/models/downloads", json={"model": "not a hub id"}).status_code == 422
        started = client.post("/v1/models/downloads", json={"model": hub.repo})
        assert started.status_code == 202
        download_id = started.json()["id"]
        seen = []
        done = wait_for(lambda: seen.append(s := client.get(f"/v1/models/downloads/{download_id}").json())
                        or (s if s["state"] in ("done", "failed") else None), 60, "the download")
        assert done["state"] == "done", done["error"]
        assert sorted(done["files"]) == sorted(PRIOR_FILES)
        assert done["total_bytes"] == done["bytes_done"] == hub.total_bytes(hub.repo, PRIOR_FILES)
        assert any(0 < s["bytes_done"] < s["total_bytes"] for s in seen if s["total_bytes"])  # progress moved
        assert {name for name, _ in hub.gets} == set(PRIOR_FILES)  # no TAESD, nothing the prior does not read
        listed = {m["id"]: m for m in client.get("/v1/models").json()["models"]}
        assert listed[hub.repo]["cached"] is True
        again = client.post("/v1/models/downloads", json={"model": hub.repo}).json()
        assert again["state"] == "done" and len(hub.gets) == len(PRIOR_FILES)  # nothing fetched twice
        # The downloaded model serves a job, offline (from the cache alone).
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        hub.close()
        job = client.post("/v1/jobs", json={"prompt": "a hamburger", "prior": "stable-diffusion", "model": hub.repo,
                                            "encoder": "vae", "preset": "draft", "steps": 2, "poly_budget": 1000,
                                            "texture_size": 512}).json()["id"]
        ended = wait_for(lambda: (s := client.get(f"/v1/jobs/{job}").json())["state"] in ("done", "failed") and s,
                         120, "the job on the downloaded model")
        assert ended["state"] == "done", (ended["error"], ended["hint"])
        assert client.get(f"/v1/jobs/{job}/result.glb").content[:4] == b"glTF"
    finally:
        client.__exit__(None, None, None)


def test_cancel_then_start_again_fetches_only_what_had_not_finished(hub, tmp_path):
    client = _client(tmp_path / "data")
    try:
        download_id = client.post("/v1/models/downloads", json={"model": hub.repo}).json()["id"]
        finished = _stopped_half_way(client, download_id, hub.repo)
        cancelled = client.delete(f"/v1/models/downloads/{download_id}").json()
        assert cancelled["state"] == "cancelled"
        kept = client.get(f"/v1/models/downloads/{download_id}").json()
        assert 0 < kept["bytes_done"] < kept["total_bytes"] and "vae/diffusion_pytorch_model.safetensors" in finished
        assert client.post("/v1/models/downloads", json={"model": hub.repo}).json()["state"] == "planning"
        done = _wait(client, download_id, lambda s: s["state"] in ("done", "failed"), "the resumed download")
        assert done["state"] == "done", done["error"]
        assert _fetched_again(hub, finished) == []
        assert [name for name, _ in hub.gets].count("unet/diffusion_pytorch_model.safetensors") == 2
    finally:
        client.__exit__(None, None, None)


def test_a_download_survives_a_server_restart(hub, tmp_path):
    first = _client(tmp_path / "data")
    download_id = first.post("/v1/models/downloads", json={"model": hub.repo}).json()["id"]
    finished = _stopped_half_way(first, download_id, hub.repo)
    first.__exit__(None, None, None)  # the server stops mid-download
    second = _client(tmp_path / "data")
    try:
        done = _wait(second, download_id, lambda s: s["state"] in ("done", "failed"), "the download after restart")
        assert done["state"] == "done", done["error"]
        assert done["bytes_done"] == hub.total_bytes(hub.repo, PRIOR_FILES)
        assert _fetched_again(hub, finished) == []
    finally:
        second.__exit__(None, None, None)


def test_offline_the_download_fails_with_what_to_do(tmp_path, monkeypatch):
    go_online(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    client = _client(tmp_path / "data")
    try:
        download_id = client.post("/v1/models/downloads", json={"model": "nfsd-test/offline"}).json()["id"]
        failed = _wait(client, download_id, lambda s: s["state"] in ("done", "failed"), "the failure")
    finally:
        client.__exit__(None, None, None)
    assert failed["state"] == "failed"
    assert failed["error"].startswith("cannot reach the Hugging Face hub at http://127.0.0.1:9")
    assert failed["hint"].startswith("connect this server to the internet and press Download again")
    assert client.app.state.downloads.list()[0].state == "failed"


def test_a_job_on_a_model_that_is_not_downloaded_fails_with_the_right_hint(tmp_path):
    client = _client(tmp_path / "data")  # tests/conftest.py: offline
    try:
        job = client.post("/v1/jobs", json={"prompt": "a hamburger", "prior": "stable-diffusion",
                                            "model": "nfsd-test/not-downloaded", "steps": 2}).json()["id"]
        failed = wait_for(lambda: (s := client.get(f"/v1/jobs/{job}").json())["state"] == "failed" and s, 30,
                          "the job to fail")
    finally:
        client.__exit__(None, None, None)
    assert "is not in this server's model cache" in failed["error"] and "offline" in failed["error"]
    # not "the prior or the pipeline rejected these settings", which sent the artist to change the settings
    assert failed["hint"] == ("pick a model this server has (Download fetches one from the add-on's Model menu) "
                              "and submit again")


@pytest.mark.parametrize("model", ["owner/name.", "owner/name-", "owner/na--me"])
def test_a_model_id_the_hub_would_refuse_is_a_422_naming_it(tmp_path, model):
    # The fuzz found these: they pass the owner/name pattern but the hub's own check raised inside the route (500).
    client = _client(tmp_path / "data")
    try:
        response = client.post("/v1/models/downloads", json={"model": model})
        nothing_started = client.get("/v1/models/downloads").json()["downloads"]
    finally:
        client.__exit__(None, None, None)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "model"]
    assert nothing_started == []


def test_a_download_the_disk_cannot_record_is_a_507_and_is_not_started(tmp_path, monkeypatch):
    import errno

    from nfsd_server.downloads import DownloadManager

    def refuse(self, download):
        raise OSError(errno.ENOSPC, "No space left on device")

    client = _client(tmp_path / "data")
    try:
        monkeypatch.setattr(DownloadManager, "_persist", refuse)
        response = client.post("/v1/models/downloads", json={"model": "nfsd-test/no-room"})
        listed = client.get("/v1/models/downloads").json()["downloads"]
    finally:
        client.__exit__(None, None, None)
    assert response.status_code == 507 and "No space left on device" in response.json()["detail"]
    assert listed == []


def test_a_cuda_server_fetches_the_fp16_unet_and_the_prior_loads_it(tiny_sd_dir, tmp_path):
    """What a CUDA server downloads (the UNet's fp16 variant only) is what the fp16 prior loads; without the
    variant it casts the plain weights."""
    import shutil

    import torch

    from nfsd_server.downloads import weights_variant
    from nfsd_server.guidance.stable_diffusion import load_unet

    assert weights_variant("cpu") is None
    folder = tmp_path / "fp16-unet"
    shutil.copytree(tiny_sd_dir, folder)
    plain = load_unet(str(folder), torch.float32)
    plain.to(torch.float16).save_pretrained(folder / "unet", variant="fp16")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()  # as downloaded: the variant only
    listing = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in files_to_fetch(listing, variant="fp16")
    unet = load_unet(str(folder), torch.float16)
    assert unet.dtype == torch.float16
    weight = next(iter(unet.state_dict().values()))
    assert torch.equal(weight, next(iter(plain.state_dict().values())).to(torch.float16))
    cast = load_unet(str(tiny_sd_dir), torch.float16)  # no variant there: the plain weights, cast
    assert cast.dtype == torch.float16

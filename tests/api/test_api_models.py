"""GET /v1/models: known hub models, the Hugging Face cache (scanned, never fetched) and local folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import constants

from nfsd_contract import DEFAULT_MODEL
from nfsd_server.guidance.stable_diffusion import TAESD_MODEL


def _fake_cached_repo(repo_id: str, files: dict[str, bytes]) -> None:
    """A hub repo laid out as huggingface_hub caches it: blobs, a snapshot linking to them, refs/main."""
    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    rev = "0" * 40
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    for i, (name, data) in enumerate(files.items()):
        blob = repo / "blobs" / f"blob{i}"
        blob.write_bytes(data)
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).unlink(missing_ok=True)
        (snap / name).symlink_to(blob)


def _fake_cached_pipeline(repo_id: str, payload: bytes) -> None:
    _fake_cached_repo(repo_id, {"model_index.json": b"{}", "unet/weights.bin": payload})


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache of this test's own, so a fake TAESD never reaches tests that load the real one."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _by_id(response):
    assert response.status_code == 200, response.text
    return {entry["id"]: entry for entry in response.json()["models"]}


def test_models_need_the_token(make_client):
    client = make_client()
    assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_the_bundled_micro_model_is_offered_offline_under_its_short_name(make_client):
    from nfsd_server.model_source import BUNDLED_MODELS

    micro = _by_id(make_client().get("/v1/models"))["micro"]
    weights = sum(f.stat().st_size for f in BUNDLED_MODELS["micro"].rglob("*") if f.is_file())
    assert micro == {
        "id": "micro", "label": "Micro demo model (bundled, offline)", "prior": "stable-diffusion", "model": "micro",
        "source": "builtin", "cached": True, "size_bytes": weights, "download_bytes": None, "default": False,
        "taesd_cached": True,
    }


def test_default_model_not_cached_says_how_big_the_download_is(make_client):
    models = _by_id(make_client(default_prior="stable-diffusion").get("/v1/models"))
    assert models["analytic"] == {
        "id": "analytic", "label": "Analytic (offline test shapes)", "prior": "analytic", "model": None,
        "source": "builtin", "cached": True, "size_bytes": 0, "download_bytes": None, "default": False,
        "taesd_cached": True,
    }
    sd = models[DEFAULT_MODEL]
    assert (sd["cached"], sd["size_bytes"], sd["default"], sd["prior"]) == (False, None, True, "stable-diffusion")
    assert sd["download_bytes"] > 4_000_000_000


def test_cached_hub_pipeline_and_local_folder_are_listed_with_sizes(make_client, tmp_path):
    _fake_cached_pipeline("someone/tiny-sd", b"x" * 1000)
    local = tmp_path / "jobs" / "models" / "my-finetune"
    (local / "unet").mkdir(parents=True)
    (local / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (local / "unet" / "w.bin").write_bytes(b"y" * 500)
    (tmp_path / "jobs" / "models" / "not-a-pipeline").mkdir()
    models = _by_id(make_client(default_prior="analytic").get("/v1/models"))
    hub = models["someone/tiny-sd"]
    assert (hub["cached"], hub["source"], hub["download_bytes"]) == (True, "hub", None)
    assert hub["size_bytes"] == 1002  # both blobs
    mine = models[str(local)]
    assert (mine["source"], mine["cached"], mine["model"], mine["label"]) == ("local", True, str(local),
                                                                               "my-finetune (local)")
    assert mine["size_bytes"] == len(json.dumps({"_class_name": "StableDiffusionPipeline"})) + 500
    assert not any("not-a-pipeline" in key for key in models)
    assert models["analytic"]["default"] is True and not models[DEFAULT_MODEL]["default"]


def _local_pipeline(root: Path, name: str, taesd: bool) -> Path:
    folder = root / "models" / name
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    if taesd:
        (folder / "taesd").mkdir()
        (folder / "taesd" / "config.json").write_text("{}")
    return folder


def test_taesd_cached_says_whether_the_fast_encoder_needs_a_download(make_client, tmp_path, empty_hub_cache):
    data_dir = tmp_path / "jobs"
    plain, own = _local_pipeline(data_dir, "plain", taesd=False), _local_pipeline(data_dir, "own", taesd=True)
    _fake_cached_pipeline("someone/tiny-sd", b"x" * 10)
    models = _by_id(make_client(data_dir=data_dir).get("/v1/models"))
    assert {key: entry["taesd_cached"] for key, entry in models.items()} == {
        "analytic": True, "micro": True, DEFAULT_MODEL: False, "someone/tiny-sd": False, str(plain): False,
        str(own): True,
    }

    # Only part of TAESD in the cache (an interrupted download) is still a download.
    _fake_cached_repo(TAESD_MODEL, {"config.json": b"{}"})
    models = _by_id(make_client(data_dir=data_dir).get("/v1/models"))
    assert not models[DEFAULT_MODEL]["taesd_cached"]

    _fake_cached_repo(TAESD_MODEL, {"config.json": b"{}", "diffusion_pytorch_model.safetensors": b"w" * 100})
    models = _by_id(make_client(data_dir=data_dir).get("/v1/models"))
    assert TAESD_MODEL not in models  # an encoder, not a model to pick
    assert {key: entry["taesd_cached"] for key, entry in models.items()} == {
        "analytic": True, "micro": True, DEFAULT_MODEL: True, "someone/tiny-sd": True, str(plain): True,
        str(own): True,
    }

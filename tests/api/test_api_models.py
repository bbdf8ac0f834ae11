"""GET /v1/models: known hub models, the Hugging Face cache (scanned, never fetched) and local folders."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import constants

from nfsd_blender.contract import DEFAULT_MODEL


def _fake_cached_pipeline(repo_id: str, payload: bytes) -> None:
    """A hub repo laid out as huggingface_hub caches it: blobs, a snapshot linking to them, refs/main."""
    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    rev = "0" * 40
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    (snap / "unet").mkdir(parents=True, exist_ok=True)
    for name, data in (("model_index.json", b"{}"), ("unet/weights.bin", payload)):
        blob = repo / "blobs" / f"blob{len(data)}"
        blob.write_bytes(data)
        (snap / name).symlink_to(blob)


def _by_id(response):
    assert response.status_code == 200, response.text
    return {entry["id"]: entry for entry in response.json()["models"]}


def test_models_need_the_token(make_client):
    client = make_client()
    assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_default_model_not_cached_says_how_big_the_download_is(make_client):
    models = _by_id(make_client(default_prior="stable-diffusion").get("/v1/models"))
    assert models["analytic"] == {
        "id": "analytic", "label": "Analytic (offline test shapes)", "prior": "analytic", "model": None,
        "source": "builtin", "cached": True, "size_bytes": 0, "download_bytes": None, "default": False,
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

"""``/v1/models``: what the server can generate with, and what is already on disk, so the add-on can offer a
picker and say "downloads 5.2 GB" before a job stalls on it offline."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from nfsd_contract import API_PREFIX, BUNDLED_MODEL_LABELS, DEFAULT_MODEL
from nfsd_server.api.auth import require_token
from nfsd_server.api.schemas import ErrorBody
from nfsd_server.guidance.stable_diffusion import TAESD_MODEL, TAESD_SUBFOLDER
from nfsd_server.model_source import BUNDLED_MODELS

router = APIRouter(
    prefix=API_PREFIX,
    tags=["models"],
    dependencies=[Depends(require_token)],
    responses={401: {"model": ErrorBody, "description": "Missing or wrong bearer token"}},
)

# What the loader fetches (unet + text encoder + vae, fp32 safetensors) for the hub models we know.
KNOWN_DOWNLOAD_BYTES = {DEFAULT_MODEL: 5_160_000_000}
PIPELINE_FILE = "model_index.json"  # a diffusers pipeline folder (or hub repo) has one at its root
LOCAL_MODELS_DIR = "models"  # <data-dir>/models/<name>/ are offered as local models
# TAESD's hub repo is a bare AutoencoderTiny (no model_index.json): what from_pretrained reads at its root.
TAESD_CONFIG = "config.json"
TAESD_WEIGHTS_STEM = "diffusion_pytorch_model."  # .safetensors or .bin


class ModelInfo(BaseModel):
    id: str = Field(description="Stable key: 'analytic', a bundled model's name, a hub id, or a local folder's path.")
    label: str = Field(description="What the picker shows.")
    prior: str = Field(description="The job's 'prior' for this model.")
    model: str | None = Field(description="The job's 'model' (hub id or folder); null for the analytic prior.")
    source: Literal["builtin", "hub", "local"]
    cached: bool = Field(description="True when no download is needed (in the Hugging Face cache, or local).")
    size_bytes: int | None = Field(description="Size on disk when cached; null otherwise.")
    download_bytes: int | None = Field(description="About how much a first use downloads; null when cached or unknown.")
    default: bool = Field(description="The server's default model (what a job with model null uses).")
    taesd_cached: bool = Field(
        description=f"Whether TAESD (encoder 'taesd', or 'auto' where the preset picks it) is available without a "
        f"download: in the Hugging Face cache as {TAESD_MODEL}, or the local model folder's {TAESD_SUBFOLDER}/. "
        "True for the analytic prior, which needs none."
    )


class ModelList(BaseModel):
    models: list[ModelInfo]
    cache_dir: str | None = Field(description="The Hugging Face cache scanned; null when it does not exist yet.")


def _root_files(repo) -> list[set[str]]:
    """The file names at each cached revision's snapshot root."""
    return [{f.file_name for f in rev.files if f.file_path.parent == rev.snapshot_path} for rev in repo.revisions]


def _hub_cache() -> tuple[dict[str, int], bool, str | None]:
    """({repo id: bytes on disk} of the diffusers pipelines in the Hugging Face cache, whether TAESD is there
    with its config and weights, the cache folder) — a scan of the folder, no network."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(constants.HF_HUB_CACHE)  # the same folder it reports as cache_dir
    except CacheNotFound:
        return {}, False, None
    found, taesd = {}, False
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        roots = _root_files(repo)
        if any(PIPELINE_FILE in names for names in roots):
            found[repo.repo_id] = repo.size_on_disk
        if repo.repo_id == TAESD_MODEL:
            taesd = any(TAESD_CONFIG in names and any(n.startswith(TAESD_WEIGHTS_STEM) for n in names)
                        for names in roots)
    return found, taesd, str(constants.HF_HUB_CACHE)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def list_models(data_dir: Path, default_prior: str, default_model: str | None) -> ModelList:
    cached, taesd_cached, cache_dir = _hub_cache()
    default_model = default_model or DEFAULT_MODEL
    models = [ModelInfo(
        id="analytic", label="Analytic (offline test shapes)", prior="analytic", model=None, source="builtin",
        cached=True, size_bytes=0, download_bytes=None, default=default_prior == "analytic", taesd_cached=True,
    )]
    for name, folder in BUNDLED_MODELS.items():
        if (folder / PIPELINE_FILE).is_file():
            models.append(ModelInfo(
                id=name, label=BUNDLED_MODEL_LABELS[name], prior="stable-diffusion", model=name, source="builtin",
                cached=True, size_bytes=_folder_bytes(folder), download_bytes=None,
                default=default_prior == "stable-diffusion" and default_model == name,
                taesd_cached=(folder / TAESD_SUBFOLDER).is_dir(),
            ))
    hub_ids = list(dict.fromkeys([*KNOWN_DOWNLOAD_BYTES, *sorted(cached)]))
    local = sorted(p for p in (data_dir / LOCAL_MODELS_DIR).glob("*") if (p / PIPELINE_FILE).is_file())
    if Path(default_model).is_dir():
        local = [Path(default_model), *[p for p in local if p != Path(default_model)]]
    elif default_model not in hub_ids and default_model not in BUNDLED_MODELS:
        hub_ids.append(default_model)
    for repo_id in hub_ids:
        is_cached = repo_id in cached
        models.append(ModelInfo(
            id=repo_id, label=repo_id, prior="stable-diffusion", model=repo_id, source="hub", cached=is_cached,
            size_bytes=cached.get(repo_id), download_bytes=None if is_cached else KNOWN_DOWNLOAD_BYTES.get(repo_id),
            default=default_prior == "stable-diffusion" and repo_id == default_model, taesd_cached=taesd_cached,
        ))
    for folder in local:
        models.append(ModelInfo(
            id=str(folder), label=f"{folder.name} (local)", prior="stable-diffusion", model=str(folder),
            source="local", cached=True, size_bytes=_folder_bytes(folder), download_bytes=None,
            default=default_prior == "stable-diffusion" and str(folder) == default_model,
            taesd_cached=taesd_cached or (folder / TAESD_SUBFOLDER).is_dir(),
        ))
    return ModelList(models=models, cache_dir=cache_dir)


@router.get("/models", response_model=ModelList)
def models(request: Request) -> ModelList:
    """Known and cached models; never touches the network."""
    jobs = request.app.state.manager
    return list_models(jobs.data_dir, jobs.default_prior, jobs.default_model)

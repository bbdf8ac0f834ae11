"""The HTTP contract (``/v1``) as pydantic models: every request and response body the add-on sees.

Changing a field here changes the public API; ``tests/api/test_api_contract.py`` pins it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nfsd_blender import contract
from nfsd_blender.contract import FINISHED_STATES, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, NFSD_NEGATIVE_PROMPT
from nfsd_server.api.mesh_store import MESH_ID_PATTERN
from nfsd_server.settings import check_text, check_visible

# Literal types built from the contract's tuples, so the OpenAPI enums are the add-on's enums.
JobState = Literal[contract.JOB_STATES]  # type: ignore[valid-type]
Method = Literal[contract.METHODS]  # type: ignore[valid-type]
PresetName = Literal[contract.PRESETS]  # type: ignore[valid-type]
TextureSize = Literal[contract.TEXTURE_SIZES]  # type: ignore[valid-type]
PriorName = Literal[contract.PRIORS]  # type: ignore[valid-type]
Dtype = Literal[contract.DTYPES]  # type: ignore[valid-type]
Encoder = Literal[contract.ENCODERS]  # type: ignore[valid-type]
__all__ = ["FINISHED_STATES", "JobState", "JobRequest", "ResolvedJobRequest", "JobStatus"]
# Documented in the schema so clients (and the fuzzer) know the rule; enforced by the validator below,
# which gives a readable message instead of a regex dump.
_NO_CONTROL_CHARS = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"


class JobRequest(BaseModel):
    """``POST /v1/jobs``: what to generate. ``null`` means "the server's / method's / preset's default"."""

    # strict: a string "5" for an int or true for a number is a client bug; say so instead of guessing.
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS,
        description="What to make, e.g. 'a red ball'. Surrounding whitespace is stripped; 1–1000 characters, "
        "no control characters.",
        json_schema_extra={"pattern": _NO_CONTROL_CHARS},
    )
    negative_prompt: str = Field(
        default=NFSD_NEGATIVE_PROMPT, max_length=MAX_PROMPT_CHARS,
        description="NFSD's negative prompt (p_neg); may be empty.",
        json_schema_extra={"pattern": _NO_CONTROL_CHARS},
    )
    method: Method = "nfsd"
    guidance_scale: float | None = Field(
        default=None, gt=0, le=contract.MAX_GUIDANCE_SCALE, allow_inf_nan=False,
        description="Classifier-free guidance scale; null → "
        + ", ".join(f"{scale:g} for {method}" for method, scale in contract.DEFAULT_GUIDANCE_SCALE.items()) + ".",
    )
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="null → a random seed, chosen at submit and echoed back."
    )
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS, description="Training steps; null → the preset's.")
    preset: PresetName = contract.DEFAULT_PRESET
    poly_budget: int = Field(
        default=contract.DEFAULT_POLY_BUDGET, ge=contract.MIN_POLY_BUDGET, le=contract.MAX_POLY_BUDGET,
        description="Maximum faces of the exported mesh.",
    )
    texture_size: TextureSize = contract.DEFAULT_TEXTURE_SIZE
    prior: PriorName | None = Field(
        default=None, description="null → the server's --default-prior. 'analytic' is the offline test prior."
    )
    model: str | None = Field(
        default=None, min_length=1, max_length=contract.MAX_MODEL_CHARS,
        description="Hub id or local diffusers folder on the server; null → the server's --default-model "
        "(ignored by the analytic prior).",
    )
    dtype: Dtype = Field(
        default=contract.DEFAULT_DTYPE,
        description="UNet precision: auto (fp16 on CUDA, fp32 elsewhere), fp16, bf16 (GPUs with native bf16 only), "
        "fp32 (if the model produces NaN in half precision).",
    )
    encoder: Encoder = Field(
        default=contract.DEFAULT_ENCODER,
        description="What encodes RGB renders after the latent phase: auto (the preset's: taesd for draft and "
        "standard, vae for high), vae (the model's own) or taesd (madebyollin/taesd, much cheaper; downloaded "
        "once, or in the server's model cache, or the model folder's taesd/).",
    )
    init_mesh: str | None = Field(
        default=None, pattern=MESH_ID_PATTERN,
        description="Start from this mesh: an id from POST /v1/meshes (the artist's selected object); null → none.",
    )
    shape_strength: float | None = Field(
        default=None, ge=0, le=1, allow_inf_nan=False,
        description=f"0..1, how closely the result keeps init_mesh's shape; null → {contract.DEFAULT_SHAPE_STRENGTH:g}.",
    )
    keep_geometry: bool = Field(
        default=False, description="Texture init_mesh itself: its vertices and faces are kept, only colour is generated."
    )

    @field_validator("prompt", mode="before")
    @classmethod
    def _strip_prompt(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _plain_text(cls, value: str, info) -> str:
        if info.field_name == "prompt":
            check_visible(value, "prompt")
        check_text(value, info.field_name)
        return value


class ResolvedJobRequest(JobRequest):
    """The request as the job runs it: seed, guidance scale, steps and prior filled in at submit."""

    guidance_scale: float = Field(gt=0, le=contract.MAX_GUIDANCE_SCALE)  # type: ignore[assignment]
    seed: int = Field(ge=0, le=MAX_SEED)  # type: ignore[assignment]
    steps: int = Field(ge=1, le=MAX_STEPS)  # type: ignore[assignment]
    prior: PriorName  # type: ignore[assignment]
    shape_strength: float = Field(default=contract.DEFAULT_SHAPE_STRENGTH, ge=0, le=1)  # type: ignore[assignment]


class JobCreated(BaseModel):
    id: str = Field(description="The job id (hex); use it in /v1/jobs/{id}.")


class JobStatus(BaseModel):
    """``GET /v1/jobs/{id}``: where a job is. Poll it; previews and results have their own URLs."""

    id: str
    state: JobState
    step: int = Field(description="Training steps done.")
    total: int = Field(description="Training steps in all.")
    loss: float | None = Field(description="Latest training loss; null before the first step.")
    eta_s: float | None = Field(description="Estimated seconds of training left; null when unknown.")
    queue_position: int | None = Field(description="0 = runs next; null unless queued.")
    error: str | None = Field(description="Why the job failed, in one line; null unless failed.")
    hint: str | None = Field(description="What to try next after a failure; null when there is nothing to add.")
    request: ResolvedJobRequest
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    has_preview: bool = Field(description="True once /v1/jobs/{id}/preview.png has an image.")
    preview_step: int | None = Field(description="The training step the current preview shows.")
    resumed_from_step: int | None = Field(
        default=None,
        description="Set when a server restart interrupted the job: the step it continues from (its last "
        "checkpoint; 0 = started over). null otherwise.",
    )


MAX_PAGE = 1000  # jobs per GET /v1/jobs page
DEFAULT_PAGE = 100


class JobList(BaseModel):
    jobs: list[JobStatus] = Field(description="Jobs this server knows, newest first: one page (see limit/offset).")
    total: int = Field(description="How many jobs the server knows in all.")
    next_offset: int | None = Field(description="The offset of the next page; null on the last page.")


class PurgeResult(BaseModel):
    deleted: list[str] = Field(description="Ids of the finished jobs deleted (with their files), oldest first.")
    set_aside: list[str] = Field(description="Job folders deleted that were set aside at start-up (a bad job.json).")
    meshes: list[str] = Field(description="Ids of uploaded meshes deleted (none that a queued or running job names).")


class MemoryUsage(BaseModel):
    rss_bytes: int
    cuda_allocated_bytes: int | None = Field(description="null without CUDA.")


class Health(BaseModel):
    """``GET /v1/health`` (no token needed): is the server up, and what is it holding.

    Without a valid token (on a server that has one) only version, device and default_prior are filled in;
    what the server is doing and holding is null.
    """

    version: str
    device: str
    default_prior: str
    authenticated: bool = Field(description="False: the fields below are withheld (null); send the token.")
    default_model: str | None
    models_loaded: list[str] | None = Field(description="Warm priors as 'prior' or 'prior:model', e.g. 'analytic'.")
    queue_length: int | None = Field(description="Jobs waiting (not counting the running one).")
    running_job: str | None
    memory: MemoryUsage | None


class ErrorBody(BaseModel):
    """Every error response: what went wrong and, when we know, how to fix it."""

    detail: Any = Field(description="A sentence, or for 422 the list of field errors (each with its 'loc').")
    hint: str | None = None

"""The HTTP contract (``/v1``) as pydantic models: every request and response body the add-on sees.

Changing a field here changes the public API; ``tests/api/test_api_contract.py`` pins it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

import nfsd_contract as contract
from nfsd_contract import (
    FIELDS, FINISHED_STATES, JobSpec, check_text, check_visible, info, request_default, strip_spaces, value_type,
)
from nfsd_server.api.mesh_store import MESH_ID_PATTERN

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"  # a job's id, and the name of its folder in the data dir
JobState = Literal[contract.JOB_STATES]  # type: ignore[valid-type]
__all__ = ["FINISHED_STATES", "JobState", "JobRequest", "JobSpec", "JobStatus"]
# Documented in the schema so clients (and the fuzzer) know the rule; enforced by the validator below,
# which gives a readable message instead of a regex dump.
_NO_CONTROL_CHARS = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
# What only HTTP adds to a field: a mesh is named by the id POST /v1/meshes returned, an edit's source by its
# job id, not by a path.
_HTTP_ONLY = {
    "init_mesh": {"pattern": MESH_ID_PATTERN, "description": "Start from this mesh: an id from "
                  "POST /v1/meshes (the artist's selected object); null → none."},
    "edit_of": {"pattern": JOB_ID_PATTERN, "description": "Edit this finished job's asset: its job id (the server "
                "keeps a job's checkpoint while it is kept); the prompt says what it should become; null → a new "
                "asset."},
}


def _request_field(spec_field) -> tuple[Any, Any]:
    """(annotation, pydantic Field) of one job field in the request: its type, enum, limits and default."""
    field_info, kind = info(spec_field), value_type(spec_field)
    annotation: Any = Literal[field_info.choices] if field_info.choices else kind  # type: ignore[valid-type]
    if field_info.nullable:
        annotation = annotation | None
    limits: dict[str, Any] = {}
    if field_info.minimum is not None:
        limits["gt" if field_info.exclusive_minimum else "ge"] = field_info.minimum
    if field_info.maximum is not None:
        limits["le"] = field_info.maximum
    if kind is float:
        limits["allow_inf_nan"] = False
    if field_info.min_length is not None:
        limits["min_length"] = field_info.min_length
    if field_info.max_length is not None:
        limits["max_length"] = field_info.max_length
    if spec_field.name in ("prompt", "negative_prompt", "source_prompt"):
        limits["json_schema_extra"] = {"pattern": _NO_CONTROL_CHARS}
    description = field_info.help[:1].upper() + field_info.help[1:] + "."
    limits |= {"description": description} | _HTTP_ONLY.get(spec_field.name, {})
    if spec_field.name == "prompt":
        return annotation, Field(**limits)
    return annotation, Field(default=request_default(spec_field), **limits)


class _RequestBase(BaseModel):
    # strict: a string "5" for an int or true for a number is a client bug; say so instead of guessing.
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("prompt", mode="before", check_fields=False)
    @classmethod
    def _strip_prompt(cls, value: Any) -> Any:
        return strip_spaces(value) if isinstance(value, str) else value

    @field_validator("prompt", "negative_prompt", check_fields=False)
    @classmethod
    def _plain_text(cls, value: str, info) -> str:
        if info.field_name == "prompt":
            check_visible(value, "prompt")
        check_text(value, info.field_name)
        return value


JobRequest = create_model(
    "JobRequest",
    __base__=_RequestBase,
    __doc__="``POST /v1/jobs``: what to generate. ``null`` means \"the server's / method's / preset's default\".",
    **{spec_field.name: _request_field(spec_field) for spec_field in FIELDS},
)


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
    request: JobSpec = Field(description="The job as it runs: every default resolved (the seed to reuse).")
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


def json_body_responses(limit_kib: int) -> dict[int, dict]:
    """The answers every route that reads a JSON body can give before its own code runs (OpenAPI ``responses``)."""
    return {
        400: {"model": ErrorBody, "description": "The body could not be read as JSON at all (e.g. not UTF-8)"},
        413: {"model": ErrorBody, "description": f"The body is larger than {limit_kib} KiB"},
        415: {"model": ErrorBody, "description": "The body is not declared as application/json"},
        422: {"model": ErrorBody, "description": "The body is invalid; detail names the field"},
    }
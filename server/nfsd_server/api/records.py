"""``job.json``: the schema a job record must meet when the server reads it back, and the paths it may name.

A record is a file on disk, so anything may be in it (a crash, a hand edit, another version). Every record is
validated on load; one that fails is set aside (logged, not served) and the other jobs serve as before. Every
file name a record holds must be a plain name that resolves inside that job's own folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from nfsd_contract.spec import with_absent_fields
from nfsd_server.api.schemas import JOB_ID_PATTERN, JobSpec, JobState



class UnsafePath(ValueError):
    """A name from a record that would leave the job's folder."""


def inside(folder: Path, name: str) -> Path:
    """``folder / name``, resolved (symlinks followed); UnsafePath unless it stays inside ``folder``."""
    root = folder.resolve()
    path = (folder / name).resolve()
    if path.parent != root:
        raise UnsafePath(f"{name!r} is not a file inside the job folder {str(folder)!r}")
    return path


class JobRecord(BaseModel):
    """What ``Job.record()`` writes. Strict where a wrong type would surface later as a 500."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(pattern=JOB_ID_PATTERN)
    state: JobState
    request: JobSpec
    step: int = Field(ge=0, strict=True)
    loss: float | None = Field(allow_inf_nan=False)
    eta_s: float | None = Field(allow_inf_nan=False)
    error: str | None
    hint: str | None
    created_at: AwareDatetime
    started_at: AwareDatetime | None
    finished_at: AwareDatetime | None
    preview_step: int | None = Field(ge=0, strict=True)
    glb_name: str | None
    metadata: dict[str, Any] | None
    resumed_from_step: int | None = Field(default=None, ge=0, strict=True)

    @field_validator("request", mode="before")
    @classmethod
    def _fields_newer_than_the_record(cls, value: Any) -> Any:
        # A job recorded before a field existed ran with FieldInfo.absent_means (no Janus guard), not today's default.
        return with_absent_fields(value) if isinstance(value, dict) else value

    @field_validator("glb_name")
    @classmethod
    def _plain_file_name(cls, value: str | None) -> str | None:
        if value is not None and (Path(value).name != value or value in ("", ".", "..") or "\\" in value):
            raise ValueError(f"glb_name {value!r} must be a file name inside the job folder, not a path")
        return value

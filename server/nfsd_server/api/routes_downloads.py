"""``/v1/models/downloads``: fetch a hub model from the panel (job-like: progress in bytes, cancel, resume after a
restart), only the files the prior loads (``nfsd_server.downloads``)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request
from huggingface_hub.utils import validate_repo_id
from pydantic import BaseModel, Field, field_validator

from nfsd_contract import API_PREFIX
from nfsd_server.api.auth import require_token
from nfsd_server.api.errors import ApiError, disk_refused
from nfsd_server.api.limits import MAX_BODY_BYTES
from nfsd_server.api.schemas import ErrorBody, json_body_responses
from nfsd_server.downloads import Download, DownloadManager, DownloadNotFound
from nfsd_server.model_source import _HUB_ID

router = APIRouter(
    prefix=f"{API_PREFIX}/models/downloads",
    tags=["models"],
    dependencies=[Depends(require_token)],
    responses={401: {"model": ErrorBody, "description": "Missing or wrong bearer token"}},
)


class DownloadRequest(BaseModel):
    model: str = Field(pattern=_HUB_ID.pattern, description="A Hugging Face model id, 'owner/name'.")

    @field_validator("model")
    @classmethod
    def _hub_accepts(cls, model: str) -> str:
        validate_repo_id(model)  # the hub's own rules (no trailing '.', '--', …): its HFValidationError is a ValueError → 422
        return model


class DownloadStatus(BaseModel):
    id: str
    model: str
    state: Literal["planning", "running", "done", "failed", "cancelled"]
    bytes_done: int = Field(description="Bytes of the planned files on disk (partial files included).")
    total_bytes: int | None = Field(description="What the planned files weigh; null until planned.")
    files: list[str] = Field(description="The files fetched: the root index, configs, safetensors weights.")
    error: str | None = None
    hint: str | None = None


class DownloadList(BaseModel):
    downloads: list[DownloadStatus]


def _status(manager: DownloadManager, download: Download) -> DownloadStatus:
    return DownloadStatus(
        id=download.id, model=download.model, state=download.state, bytes_done=manager.bytes_done(download),
        total_bytes=download.total_bytes, files=download.files, error=download.error, hint=download.hint,
    )


def _manager(request: Request) -> DownloadManager:
    return request.app.state.downloads


def _found(call, download_id: str) -> Download:
    try:
        return call(download_id)
    except DownloadNotFound:
        raise ApiError(404, f"no download {download_id!r} on this server", hint="list them: GET /v1/models/downloads") from None


DISK_REFUSED = {507: {"model": ErrorBody, "description": "The server cannot record the download (disk full or not writable)"}}


def _recorded(call, *args) -> Download:
    try:
        return call(*args)
    except OSError as error:
        raise disk_refused("the server cannot record the download", error) from None


@router.post("", status_code=202, response_model=DownloadStatus,
             responses={**json_body_responses(MAX_BODY_BYTES // 1024), **DISK_REFUSED})
def start_download(body: DownloadRequest, request: Request) -> DownloadStatus:
    """Start (or resume) downloading ``model``; a running or finished one is returned as it is."""
    manager = _manager(request)
    return _status(manager, _recorded(manager.start, body.model))


@router.get("", response_model=DownloadList)
def list_downloads(request: Request) -> DownloadList:
    manager = _manager(request)
    return DownloadList(downloads=[_status(manager, d) for d in manager.list()])


@router.get("/{download_id}", response_model=DownloadStatus, responses={404: {"model": ErrorBody}})
def get_download(download_id: str, request: Request) -> DownloadStatus:
    manager = _manager(request)
    return _status(manager, _found(manager.get, download_id))


@router.delete("/{download_id}", response_model=DownloadStatus, responses={404: {"model": ErrorBody}, **DISK_REFUSED})
def cancel_download(download_id: str, request: Request) -> DownloadStatus:
    """Stop it; its partial files stay, so a later start resumes where it stopped."""
    manager = _manager(request)
    return _status(manager, _recorded(_found, manager.cancel, download_id))

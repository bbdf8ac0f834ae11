"""``/v1/jobs``: submit, list, poll, preview, result, cancel."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse

from nfsd_contract import API_PREFIX
from nfsd_server.api.auth import require_token
from nfsd_server.api.errors import ApiError, disk_refused
from nfsd_server.api.jobs import JobManager, JobNotFound, QueueFull, ResultNotReady
from nfsd_server.api.limits import MAX_BODY_BYTES
from nfsd_server.api.records import UnsafePath
from nfsd_server.api.schemas import (
    json_body_responses,
    DEFAULT_PAGE,
    MAX_PAGE,
    ErrorBody,
    JobCreated,
    JobList,
    JobRequest,
    JobStatus,
    PurgeResult,
)
from nfsd_server.files import read_regular_file
from nfsd_server.model_source import BenchmarkModelRefused

router = APIRouter(
    prefix=f"{API_PREFIX}/jobs",
    tags=["jobs"],
    dependencies=[Depends(require_token)],
    responses={401: {"model": ErrorBody, "description": "Missing or wrong bearer token"}},
)
log = logging.getLogger(__name__)
NOT_FOUND = {404: {"model": ErrorBody, "description": "No job with this id"}}
MAX_PREVIEW_BYTES = 64 * 2**20  # a preview is a small PNG; anything larger is not one we wrote
NOT_READY = {409: {"model": ErrorBody, "description": "The job is not done (the detail says its state)"}}


def manager(request: Request) -> JobManager:
    return request.app.state.manager


def _known(job_id: str, jobs: JobManager):
    """Run ``jobs``'s lookup, turning an unknown id into a 404 with a hint."""
    try:
        return jobs.status(job_id)
    except JobNotFound:
        raise ApiError(404, f"no job {job_id!r} on this server", hint="list jobs with GET /v1/jobs") from None


@router.post(
    "", status_code=202, response_model=JobCreated,
    responses={
        **json_body_responses(MAX_BODY_BYTES // 1024),
        403: {"model": ErrorBody, "description": "A random:* benchmark model on a server that does not offer them"},
        429: {"model": ErrorBody, "description": "Too many jobs are queued; retry when some have run"},
        507: {"model": ErrorBody, "description": "The server cannot record the job (disk full or not writable)"},
    },
)
def submit_job(body: JobRequest, response: Response, jobs: JobManager = Depends(manager)) -> JobCreated:
    """Queue a generation. Poll ``GET /v1/jobs/{id}`` for progress."""
    try:
        job = jobs.submit(body)
    except BenchmarkModelRefused as error:
        raise ApiError(403, str(error), hint="pick a real model (or none, for the server's default)") from None
    except QueueFull:
        raise ApiError(
            429, f"{jobs.max_queued} jobs are already queued on this server",
            hint="wait for some to finish (or cancel some), then submit again", headers={"Retry-After": "30"},
        ) from None
    except ValueError as error:  # the settings' own check (e.g. a prompt of invisible characters only)
        raise ApiError(422, str(error), hint="fix the request's settings and submit again") from None
    except OSError as error:
        raise disk_refused("cannot record the job in its job folder", error) from None
    response.headers["Location"] = f"{API_PREFIX}/jobs/{job.id}"
    return JobCreated(id=job.id)


@router.get("", response_model=JobList)
def list_jobs(
    jobs: JobManager = Depends(manager),
    limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE, description="Jobs per page."),
    offset: int = Query(0, ge=0, le=10**9, description="Jobs to skip, newest first."),
) -> JobList:
    """Jobs newest first (including those finished before a restart), one page at a time."""
    page, total = jobs.list(limit, offset)
    next_offset = offset + len(page) if offset + len(page) < total else None
    return JobList(jobs=page, total=total, next_offset=next_offset)


@router.delete("", response_model=PurgeResult)
def purge_jobs(
    jobs: JobManager = Depends(manager),
    older_than_s: float | None = Query(
        None, ge=0, le=1e10, allow_inf_nan=False,
        description="Delete finished jobs that finished longer ago than this, and unused uploaded meshes and "
        "set-aside job folders older than this; omitted: apply the server's retention policy (--keep-days, "
        "--keep-jobs).",
    ),
) -> PurgeResult:
    """Delete finished jobs (done, failed, cancelled) and their files, uploaded meshes no queued or running job
    names, and job folders set aside for a bad record. Queued and running jobs are kept."""
    purged = jobs.purge(older_than_s)
    return PurgeResult(deleted=purged.jobs, set_aside=purged.set_aside, meshes=purged.meshes)


@router.get("/{job_id}", response_model=JobStatus, responses=NOT_FOUND)
def get_job(job_id: str, jobs: JobManager = Depends(manager)) -> JobStatus:
    return _known(job_id, jobs)


@router.delete(
    "/{job_id}", response_model=JobStatus,
    responses={**NOT_FOUND, 507: {"model": ErrorBody, "description": "The cancel cannot be recorded (disk full)"}},
)
def cancel_job(job_id: str, jobs: JobManager = Depends(manager)) -> JobStatus:
    """Cancel. Queued: cancelled at once. Running: the state becomes ``cancelled`` when the training loop
    stops at its next step (poll to see it). Already finished: nothing changes; returns its status (200).
    507 when the server cannot record the cancel: then nothing changed."""
    _known(job_id, jobs)
    try:
        return jobs.cancel(job_id)
    except OSError as error:
        raise ApiError(
            507, f"cannot record the cancel in the job folder: {error.strerror or error}; the job was not cancelled",
            hint="free disk space in the server's --data-dir and cancel again",
        ) from None


@router.get(
    "/{job_id}/preview.png",
    response_class=Response,
    responses={**NOT_FOUND, 200: {"content": {"image/png": {}}, "description": "The latest preview render"}},
)
def get_preview(job_id: str, jobs: JobManager = Depends(manager)) -> Response:
    """The latest preview render (PNG); 404 until the first one exists."""
    status = _known(job_id, jobs)
    try:
        path = jobs.preview_path(job_id)
    except UnsafePath:
        raise _escaped(job_id) from None
    if path is None:
        raise ApiError(
            404, f"job {job_id} has no preview yet (state {status.state}, step {status.step})",
            hint="previews appear every few training steps; poll has_preview",
        )
    # Read, not stream: the file is small and may be replaced by the next preview while we send it.
    try:
        data = read_regular_file(path, MAX_PREVIEW_BYTES)
    except OSError as error:  # deleted by hand, or not a file (a folder, a pipe): the record outlived it
        log.warning("job %s: the preview %s cannot be read: %s", job_id, path, error)
        raise ApiError(
            404, f"the preview of job {job_id} is gone from the server", hint="it reappears with the next preview"
        ) from None
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


def _escaped(job_id: str) -> ApiError:
    # A record or link that points outside the job folder is never followed; the log has the details.
    log.warning("job %s: a file of this job resolves outside its folder; not served", job_id)
    return ApiError(404, f"the files of job {job_id} are not in its folder on the server", hint="submit the job again")


def _result(job_id: str, jobs: JobManager) -> tuple[Any, dict[str, Any]]:
    _known(job_id, jobs)
    try:
        return jobs.result(job_id)
    except UnsafePath:
        raise _escaped(job_id) from None
    except ResultNotReady as not_ready:
        raise ApiError(
            409, f"job {job_id} is {not_ready.state}, not done; it has no result",
            hint="wait until the state is done" if not_ready.state in ("queued", "running", "exporting")
            else "submit the job again",
        ) from None


@router.get(
    "/{job_id}/result.glb",
    response_class=FileResponse,
    responses={**NOT_FOUND, **NOT_READY, 200: {"content": {"model/gltf-binary": {}}, "description": "The GLB"}},
)
def get_result_glb(job_id: str, jobs: JobManager = Depends(manager)) -> FileResponse:
    """The textured mesh (binary glTF), named after the prompt."""
    path, _ = _result(job_id, jobs)
    if not path.is_file():
        raise ApiError(404, f"the result of job {job_id} was deleted from the server", hint="submit the job again")
    return FileResponse(path, media_type="model/gltf-binary", filename=path.name)


@router.get("/{job_id}/result.json", response_model=dict[str, Any], responses={**NOT_FOUND, **NOT_READY})
def get_result_metadata(job_id: str, jobs: JobManager = Depends(manager)) -> dict[str, Any]:
    """The metadata the GLB carries (prompt, seed, method, settings, version, face count…)."""
    return _result(job_id, jobs)[1]

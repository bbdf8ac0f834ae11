"""Every error leaves as HTTP status + ``{"detail": ..., "hint": ...}``, never a stack trace; a failed job's as its
status's ``error`` and ``hint`` (``describe_failure``)."""

from __future__ import annotations

import errno
import logging

import torch

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nfsd_server.guidance.nonfinite import NonFiniteOutputError

log = logging.getLogger(__name__)


class ApiError(StarletteHTTPException):
    """An HTTP error with a hint the add-on can show under the message."""

    def __init__(self, status_code: int, detail: str, hint: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.hint = hint


WRITABLE_DATA_DIR_HINT = "free disk space or start the server with a writable --data-dir"


def disk_refused(what: str, error: OSError, hint: str = WRITABLE_DATA_DIR_HINT) -> ApiError:
    """The 507 for a write the data dir refused (full, read-only): ``what`` could not be done, and the OS's why."""
    return ApiError(507, f"{what}: {error.strerror or error}", hint=hint)


# For errors raised by FastAPI/Starlette themselves, which carry no hint of their own.
_DEFAULT_HINTS = {
    400: "send the body as UTF-8 JSON with Content-Type: application/json",
    404: "check the URL; every route is under /v1 (see /docs)",
    405: "check the HTTP method for this URL (see /docs)",
}


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    hint = getattr(error, "hint", None) or _DEFAULT_HINTS.get(error.status_code)
    return JSONResponse({"detail": error.detail, "hint": hint}, status_code=error.status_code, headers=error.headers)


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    # Only loc/msg/type go back: echoing "input" could carry NaN (which JSON cannot encode) or megabytes.
    errors = [
        {
            "loc": [str(part) for part in item.get("loc", ())],
            "msg": str(item.get("msg", "")),
            "type": str(item.get("type", "")),
        }
        for item in error.errors()
    ]
    if errors and errors[0]["type"] == "json_invalid":  # its loc is ("body", <character offset>), not a field
        offset = errors[0]["loc"][-1]
        hint = f"the body is not valid JSON (error at character {offset}); send one JSON object"
        return JSONResponse({"detail": errors, "hint": hint}, status_code=422)
    names = [".".join(part for part in item["loc"] if part != "body") or "body" for item in errors]
    first = f"{names[0]}: {errors[0]['msg']}" if errors else "the request"
    hint = f"fix {first}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
    return JSONResponse({"detail": errors, "hint": hint}, status_code=422)


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return JSONResponse(
        {"detail": "internal server error", "hint": "this is a server bug; the server log has the details"},
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)


def describe_failure(error: BaseException, stage: str = "running") -> tuple[str, str]:
    """(one-line error, hint) for a job that raised while ``stage`` ("loading" the model or "running")."""
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
        hint = "out of memory: pick the draft preset, fewer steps or a smaller texture, or free the GPU"
    elif isinstance(error, NonFiniteOutputError):
        hint = "the model produced NaN/inf: set dtype to fp32, or check the model"
    elif isinstance(error, FloatingPointError):
        hint = "training diverged: lower the guidance scale or try another seed"
    elif isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "the server's disk is full: free space in its --data-dir and submit the job again"
    elif isinstance(error, OSError) and stage == "loading":
        hint = "check that the model is a hub id the server can reach or a diffusers folder on the server"
    elif isinstance(error, OSError):
        hint = "the server could not read or write a file of this job; see the server log"
    elif isinstance(error, ValueError) and stage == "loading":
        hint = "pick a model this server has (Download fetches one from the add-on's Model menu) and submit again"
    elif isinstance(error, ValueError):
        hint = "the prior or the pipeline rejected these settings; change them and submit again"
    else:
        hint = "see the server log for details"
    return message[:2000], hint

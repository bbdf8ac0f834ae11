"""``/v1/health``: open to all, so the add-on can tell "not running" from "wrong token"; details need the token."""

from __future__ import annotations

import psutil
import torch
from fastapi import APIRouter, Request

from nfsd_contract import API_PREFIX
from nfsd_server import __version__
from nfsd_server.api.auth import token_problem
from nfsd_server.api.schemas import Health, MemoryUsage

router = APIRouter(prefix=API_PREFIX, tags=["health"])


@router.get("/health", response_model=Health)
def health(request: Request) -> Health:
    jobs = request.app.state.manager
    if token_problem(request.headers.get("authorization"), request.app.state.token) is not None:
        # Anyone may ask whether the server is up; only a client with the token may see what it is doing.
        return Health(
            version=__version__, device=jobs.device, default_prior=jobs.default_prior, authenticated=False,
            default_model=None, models_loaded=None, queue_length=None, running_job=None, memory=None,
        )
    return Health(
        version=__version__,
        device=jobs.device,
        default_prior=jobs.default_prior,
        authenticated=True,
        default_model=jobs.default_model,
        memory=MemoryUsage(
            rss_bytes=psutil.Process().memory_info().rss,
            cuda_allocated_bytes=torch.cuda.memory_allocated() if torch.cuda.is_available() else None,
        ),
        **jobs.health(),
    )

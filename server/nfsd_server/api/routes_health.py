"""``/v1/health``: unauthenticated, so the add-on can tell "not running" from "wrong token"."""

from __future__ import annotations

import psutil
import torch
from fastapi import APIRouter, Request

from nfsd_server import __version__
from nfsd_server.api.schemas import Health, MemoryUsage

router = APIRouter(prefix="/v1", tags=["health"])


@router.get("/health", response_model=Health)
def health(request: Request) -> Health:
    jobs = request.app.state.manager
    return Health(
        version=__version__,
        device=jobs.device,
        default_prior=jobs.default_prior,
        default_model=jobs.default_model,
        memory=MemoryUsage(
            rss_bytes=psutil.Process().memory_info().rss,
            cuda_allocated_bytes=torch.cuda.memory_allocated() if torch.cuda.is_available() else None,
        ),
        **jobs.health(),
    )

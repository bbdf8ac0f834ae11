"""The FastAPI application: routers, error handlers, and a lifespan that owns the job runner."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from nfsd_contract import DEFAULT_MODEL, DEFAULT_PRIOR

from nfsd_server import __version__
from nfsd_server.api import routes_downloads, routes_health, routes_jobs, routes_meshes, routes_models
from nfsd_server.api.errors import install_error_handlers
from nfsd_server.api.jobs import Executor, JobManager, LoadPriorFn, RunFn
from nfsd_server.api.limits import GuardMiddleware
from nfsd_server.downloads import DownloadManager, weights_variant


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    token: str | None = None  # None: no auth (only allowed on loopback; see server.py)
    default_prior: str = DEFAULT_PRIOR
    default_model: str | None = DEFAULT_MODEL
    device: str | None = None
    max_queued: int = 100  # more waiting jobs → 429
    retention_days: float | None = 30.0  # finished jobs older than this are deleted; None: kept
    max_finished: int | None = 1000  # only the newest this many finished jobs are kept; None: all
    allow_benchmark_models: bool = False  # random:* models (GBs of RAM, no use but benchmarks)
    # Host names a request's Host header may carry (a loopback bind: against DNS rebinding); None: any.
    allowed_hosts: frozenset[str] | None = None


def create_app(
    config: ServerConfig,
    *,
    run_fn: RunFn | None = None,
    load_prior_fn: LoadPriorFn | None = None,
    start_worker: bool = True,
    executor: Executor | None = None,
) -> FastAPI:
    """The app; the job runner (and with it every warm model) lives exactly as long as its lifespan.

    ``start_worker=False`` accepts jobs but never runs them (for fuzzing the HTTP layer). ``executor`` runs
    jobs elsewhere (``nfsd serve --ray``); its owner closes it.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        manager = JobManager(
            config.data_dir, default_prior=config.default_prior, default_model=config.default_model,
            device=config.device, run_fn=run_fn, load_prior_fn=load_prior_fn, max_queued=config.max_queued,
            retention_days=config.retention_days, max_finished=config.max_finished,
            allow_benchmark_models=config.allow_benchmark_models, executor=executor,
        )
        app.state.manager = manager
        app.state.downloads = DownloadManager(config.data_dir, variant=weights_variant(config.device))
        if start_worker:
            manager.start()
            app.state.downloads.resume_interrupted()
        try:
            yield
        finally:
            app.state.downloads.stop()
            # Joining the worker blocks; off the event loop so in-flight responses can still finish.
            await asyncio.to_thread(manager.stop)

    app = FastAPI(
        title="NFSD for Blender",
        version=__version__,
        description="Text-to-3D jobs: submit a prompt, poll progress and previews, download a GLB.",
        lifespan=lifespan,
    )
    app.state.token = config.token or None
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware, token=config.token or None, allowed_hosts=config.allowed_hosts)
    app.include_router(routes_jobs.router)
    app.include_router(routes_health.router)
    app.include_router(routes_downloads.router)  # before /v1/models' routes: a longer prefix
    app.include_router(routes_models.router)
    app.include_router(routes_meshes.router)
    return app

"""The job runner: a queue, worker threads that own the accelerator, warm priors, and the state machine.

Jobs run through an executor: by default ``InProcessExecutor`` (one worker thread, jobs in submission order,
its priors kept warm here); with a Ray cluster's, a thread per executor slot. Every state change goes through ``JobManager._set_state`` (checked against
``TRANSITIONS`` and written to the job's record atomically by the ``JobStore``), so the file on disk always
says what the API says. Cancellation is cooperative: ``DELETE`` sets a flag the training loop reads once per
step. A request is validated and resolved once, at ``submit``; the job carries the resulting ``JobSpec``, and
the files its ids name (an uploaded mesh, an edit's source job) are resolved when it runs (``JobFiles``).
Records, recovery and retention are ``job_store.py``'s; failure messages ``errors.py``'s.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from nfsd_contract import FINISHED_STATES, JobSpec, resolve_spec
from nfsd_server.api.errors import describe_failure
from nfsd_server.api.job_store import PREVIEW_FILE, Job, JobStore, Purged, checkpoint_step
from nfsd_server.api.mesh_store import mesh_path
from nfsd_server.api.records import inside
from nfsd_server.api.schemas import JobRequest, JobStatus
from nfsd_server.checkpoints import CheckpointError
from nfsd_server.devices import default_device
from nfsd_server.edit import EditError, edit_defaults, read_edit_spec
from nfsd_server.files import write_atomic
from nfsd_server.guidance.prior import Prior
from nfsd_server.guidance.registry import load_prior
from nfsd_server.guidance.warm import LoadPriorFn, WarmPriors
from nfsd_server.model_source import check_benchmark_allowed, check_model
from nfsd_server.pipeline import (
    Callbacks, GenerationCancelled, GenerationResult, InProcessExecutor, JobFiles, png_bytes, run_generation,
)
from nfsd_server.train import CHECKPOINT_NAME

log = logging.getLogger(__name__)

TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    # running → done directly when a run function reports no export stage;
    # running/exporting → queued only at start-up, for a job the previous server run was interrupted in.
    "running": frozenset({"exporting", "done", "failed", "cancelled", "queued"}),
    "exporting": frozenset({"done", "failed", "cancelled", "queued"}),
}
FREE_SPACE_CHECK_S = 5.0  # while a job trains, how often the data dir's free space is checked
# run_generation's signature: (spec, prior, job folder, callbacks, *, resume, files) → result.
RunFn = Callable[..., GenerationResult]


class QueueFull(Exception):
    """``max_queued`` jobs are already waiting."""


def load_checked_prior(
    name: str, model: str | None = None, device: str | None = None, dtype: str = "auto", encoder: str = "vae"
) -> Prior:
    """``load_prior``, after the model's source is checked in milliseconds (a missing folder, an uncached hub id
    while offline): a job that cannot load fails at once instead of holding the worker through retries."""
    if name == "stable-diffusion" and model is not None:
        check_model(model)
    return load_prior(name, model, device, dtype=dtype, encoder=encoder)


class Executor(Protocol):
    """Runs jobs somewhere other than this process (``nfsd_server.farm.ray_jobs.RayExecutor``): ``slots`` at
    once, each ``run`` blocking like the pipeline, reporting through the callbacks and owning its models."""

    slots: int
    device: str

    def run(
        self, spec: JobSpec, out_dir: Path, callbacks: Callbacks, *, resume: bool = False,
        files: JobFiles = JobFiles(),
    ) -> GenerationResult: ...


class JobNotFound(KeyError):
    """No job with this id on this server."""


class ResultNotReady(Exception):
    """The job has no result (yet); ``state`` says why."""

    def __init__(self, state: str):
        super().__init__(state)
        self.state = state


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no NaN/inf; a diverging loss must not turn every status poll into a 500.
    return float(value) if value is not None and math.isfinite(value) else None


class JobManager:
    """Runs jobs one at a time, in submission order, on one worker thread; owns the warm priors.

    With an ``executor`` (a Ray cluster) it runs ``executor.slots`` jobs at once, one thread each, and the
    executor owns the models.

    ``run_fn`` and ``load_prior_fn`` default to the real pipeline; tests inject fakes.
    ``max_warm_models`` priors stay loaded between jobs (``WarmPriors``, keyed by ``PriorKey``); loading another
    evicts the least recently used first so two large models never sit in GPU memory together.
    Limits: at most ``max_queued`` jobs wait (QueueFull beyond); ``random:*`` benchmark models only with
    ``allow_benchmark_models``; ``retention_days`` and ``max_finished`` are the ``JobStore``'s retention.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        default_prior: str = "stable-diffusion",
        default_model: str | None = None,
        device: str | None = None,
        run_fn: RunFn | None = None,
        load_prior_fn: LoadPriorFn | None = None,
        max_warm_models: int = 1,
        max_queued: int = 100,
        retention_days: float | None = 30.0,
        max_finished: int | None = 1000,
        allow_benchmark_models: bool = False,
        executor: Executor | None = None,
    ):
        self.store = JobStore(data_dir, retention_days, max_finished)
        self.default_prior = default_prior
        self.default_model = default_model
        self.device = str(torch.device(device)) if device else str(default_device())
        # The priors kept warm between jobs: this process's own, unless an executor elsewhere owns its models.
        self._priors: WarmPriors | None = None
        if executor is None:
            self._priors = WarmPriors(load_prior_fn or load_checked_prior, capacity=max(1, max_warm_models))
            executor = InProcessExecutor(self.device, self._priors, run_fn or run_generation)
        self._executor: Executor = executor
        self.device = executor.device
        self.max_queued = max_queued
        self.allow_benchmark_models = allow_benchmark_models
        self._lock = threading.Condition()
        self._jobs = self.store.jobs  # insertion order = submission order
        self._pending: deque[str] = deque()
        self._running: list[str] = []  # ids, oldest first; more than one only with an executor's slots
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._recover()

    @property
    def data_dir(self) -> Path:
        return self.store.data_dir

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        for index in range(self._executor.slots):
            thread = threading.Thread(target=self._work, name=f"nfsd-job-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the running job reaches a step boundary; its record still says running, so the next
        start resumes it from its last checkpoint."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        deadline = time.monotonic() + timeout  # one budget for all worker threads, not one each
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("the running job did not stop within %.0f s; it resumes at the next start", timeout)
        if self._priors is not None:
            self._priors.clear()

    def _recover(self) -> None:
        """List the jobs a previous run left and queue again what it did not finish: queued jobs as they were,
        an interrupted one (running or exporting) to resume from its last checkpoint, or from step 0 without one.
        """
        jobs = self.store.load()
        with self._lock:
            for job in jobs:
                self._jobs[job.id] = job
                if job.state in ("running", "exporting"):
                    step = checkpoint_step(job.folder)
                    self._set_state(job, "queued", resumed_from_step=step, step=step, eta_s=None)
                    log.info("job %s was interrupted; it resumes from step %d", job.id, step)
                if job.state == "queued":
                    self._pending.append(job.id)
        self.purge()

    # -- the state machine: the only place a job's state changes -----------------------------------
    def _set_state(self, job: Job, state: str, *, durable: bool = False, **changes: Any) -> None:
        """Caller holds the lock. An end (a finished state) is recorded so a restart never runs the job again;
        with ``durable``, one that cannot be recorded is undone and raises OSError (the caller answers 507)."""
        if state not in TRANSITIONS.get(job.state, frozenset()):
            raise RuntimeError(f"job {job.id}: illegal transition {job.state} → {state}")
        before = {name: getattr(job, name) for name in ("state", "started_at", "finished_at", "eta_s", *changes)}
        now = datetime.now(timezone.utc)
        job.state = state
        if state == "running":
            job.started_at = now
        if state in FINISHED_STATES:
            job.finished_at = now
            job.eta_s = None
        for name, value in changes.items():
            setattr(job, name, value)
        if state not in FINISHED_STATES:
            self.store.persist(job)  # lost, a restart queues the job again, which is what it was
        else:
            try:
                self.store.record_end(job)
            except OSError as error:
                log.error("job %s: cannot record that it is %s: %s", job.id, state, error)
                if durable:
                    for name, value in before.items():
                        setattr(job, name, value)
                    raise
        log.info("job %s: %s%s", job.id, state, f" ({job.error})" if job.error else "")

    # -- what the routes call ---------------------------------------------------------------------
    def resolve(self, request: JobRequest) -> JobSpec:
        """The one validation and resolution of a request: every default filled in now, so the status echoes
        exactly what will run (and a seed to reuse). ValueError naming the field."""
        check_benchmark_allowed(request.model, self.allow_benchmark_models)
        mesh_path(self.data_dir, request.init_mesh)  # an id whose upload is gone: refused now, not at run time
        values = request.model_dump()
        if request.edit_of is not None:  # the edit asks the model that made its source, about its prompt
            with self._lock:
                path = self._edit_source_path(request.edit_of)
            try:
                values = edit_defaults(read_edit_spec(path), values)
            except (CheckpointError, EditError) as error:
                raise ValueError(f"edit_of: {error}") from None
        return resolve_spec(**values, default_prior=self.default_prior, default_model=self.default_model)

    def _edit_source_path(self, job_id: str | None) -> Path | None:
        """Caller holds the lock. The checkpoint of finished job ``job_id`` (None for None); ValueError saying why
        it cannot be edited."""
        if job_id is None:
            return None
        job = self._jobs.get(job_id)
        if job is None:
            raise ValueError(f"edit_of {job_id!r} is not a job on this server (finished jobs are kept "
                             f"{self.store.retention_days or 'forever'} days)")
        if job.state != "done":
            raise ValueError(f"edit_of {job_id!r} is {job.state}; only a done job's asset can be edited")
        path = inside(job.folder, CHECKPOINT_NAME)
        if not path.is_file():
            raise ValueError(f"edit_of {job_id!r} has no checkpoint left to start from; generate it again")
        return path

    def submit(self, request: JobRequest) -> Job:
        spec = self.resolve(request)  # before the folder exists: a rejected request leaves nothing behind
        job_id = uuid.uuid4().hex
        folder = self.store.new_folder(job_id)
        with self._lock:
            # Stamped under the lock, so created_at order is queue order.
            job = Job(id=job_id, spec=spec, folder=folder, created_at=datetime.now(timezone.utc))
            try:
                if len(self._pending) >= self.max_queued:
                    raise QueueFull(len(self._pending))
                # Again under the lock the purge holds: it may have deleted an old upload (or the edit's source)
                # since resolve().
                mesh_path(self.data_dir, spec.init_mesh)
                self._edit_source_path(spec.edit_of)
                # A job that cannot be recorded would vanish at the next start: refuse it, leaving nothing behind.
                self.store.write(job)
            except (OSError, QueueFull, ValueError):
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self._jobs[job_id] = job
            self._pending.append(job_id)
            self._lock.notify_all()
        return job

    def cancel(self, job_id: str) -> JobStatus:
        """Queued: cancelled now, never starts. Running: flagged; cancelled at the next step. Finished: no-op.

        Either way the cancel is on disk before it is answered (a running job's as its end marker, so a restart
        before the next step does not resume it); OSError, with nothing changed, where the disk refuses."""
        with self._lock:
            job = self._get(job_id)
            if job.state == "queued":
                self._set_state(job, "cancelled", durable=True)
                self._pending.remove(job_id)
            elif job.state not in FINISHED_STATES:
                self.store.mark_end(job.folder, "cancelled")
                job.cancel_requested.set()
            return self._status(job)

    def status(self, job_id: str) -> JobStatus:
        with self._lock:
            return self._status(self._get(job_id))

    def list(self, limit: int | None = None, offset: int = 0) -> tuple[list[JobStatus], int]:
        """(jobs newest first, from ``offset``, at most ``limit`` of them; how many jobs there are in all)."""
        with self._lock:
            positions = {job_id: index for index, job_id in enumerate(self._pending)}
            newest_first = list(reversed(self._jobs.values()))
            page = newest_first[offset:None if limit is None else offset + limit]
            return [self._status(job, positions.get(job.id)) for job in page], len(newest_first)

    def purge(self, older_than_s: float | None = None) -> Purged:
        """Delete finished jobs (record, preview, result: the whole folder), unused uploaded meshes and job
        folders set aside at start-up, by ``older_than_s`` or else the store's retention policy; say what went."""
        with self._lock:
            folders, purged = self.store.take_purgeable(older_than_s, datetime.now(timezone.utc))
        self.store.delete_folders(folders, purged)
        return purged

    def preview_path(self, job_id: str) -> Path | None:
        with self._lock:
            job = self._get(job_id)
            return inside(job.folder, PREVIEW_FILE) if job.preview_step is not None else None

    def result(self, job_id: str) -> tuple[Path, dict[str, Any]]:
        """(GLB path, metadata) of a done job; ResultNotReady otherwise."""
        with self._lock:
            job = self._get(job_id)
            if job.state != "done" or job.glb_name is None:
                raise ResultNotReady(job.state)
            # Checked again when served: a file swapped for a symlink after the start must not leave the folder.
            return inside(job.folder, job.glb_name), dict(job.metadata or {})

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {
                "models_loaded": [key.label for key in self._priors.warm_keys()] if self._priors else [],
                "queue_length": len(self._pending),
                "running_job": self._running[0] if self._running else None,
            }

    def _get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(job_id) from None

    def _status(self, job: Job, queue_position: int | None = None) -> JobStatus:
        if queue_position is None and job.state == "queued":
            queue_position = self._pending.index(job.id)
        return JobStatus(
            id=job.id,
            state=job.state,  # type: ignore[arg-type]
            step=job.step,
            total=job.spec.steps,
            loss=job.loss,
            eta_s=job.eta_s,
            queue_position=queue_position,
            resumed_from_step=job.resumed_from_step,
            error=job.error,
            hint=job.hint,
            request=job.spec,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            has_preview=job.preview_step is not None,
            preview_step=job.preview_step,
        )

    # -- the worker ---------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job = self._jobs[self._pending.popleft()]
                self._running.append(job.id)
                self._set_state(job, "running")
            try:
                self._run(job)
            # _run already turns a job's own errors into "failed"; this is for a bug in the bookkeeping,
            # which must cost one job, not the worker (and with it every later job).
            except Exception:  # noqa: BLE001
                log.exception("job %s: internal error in the job runner", job.id)
                with self._lock:
                    if job.state not in FINISHED_STATES:
                        self._set_state(
                            job, "failed", error="internal error in the job runner", hint="see the server log"
                        )
            finally:
                with self._lock:
                    self._running.remove(job.id)
                self.purge()

    def _run(self, job: Job) -> None:
        stage = "loading"

        out_of_space: list[OSError] = []  # set by a free-space check; stops the run like a cancel does

        def should_cancel() -> bool:
            return job.cancel_requested.is_set() or self._stopping or bool(out_of_space)

        def on_stage(name: str) -> None:
            nonlocal stage
            stage = name
            self._on_stage(job, name)

        last_space_check = time.monotonic()

        def on_progress(step: int, total: int, loss: float, eta_s: float | None) -> None:
            nonlocal last_space_check
            self._on_progress(job, step, loss, eta_s)
            # A job that cannot write its result fails now, not after training every step (statvfs is cheap,
            # but not free on a network mount: at most every FREE_SPACE_CHECK_S). Not raised from here: a
            # Ray executor relays this callback and would leave the remote run going.
            if time.monotonic() - last_space_check >= FREE_SPACE_CHECK_S and not out_of_space:
                last_space_check = time.monotonic()
                try:
                    self.store.check_free_space(job)
                except OSError as error:
                    out_of_space.append(error)

        callbacks = Callbacks(
            on_progress=on_progress,
            on_preview=lambda step, rgb: self._on_preview(job, step, rgb),
            on_stage=on_stage,
            should_cancel=should_cancel,
        )
        try:
            self.store.check_free_space(job)
            with self._lock:
                files = JobFiles(mesh_path(self.data_dir, job.spec.init_mesh), self._edit_source_path(job.spec.edit_of))
            resume = job.resumed_from_step is not None
            result = self._executor.run(job.spec, job.folder, callbacks, resume=resume, files=files)
            glb_name = self._keep_in_folder(job, Path(result.glb_path))
        except GenerationCancelled:
            with self._lock:
                if job.cancel_requested.is_set():
                    self._set_state(job, "cancelled")
                elif out_of_space:
                    message, hint = describe_failure(out_of_space[0], stage)
                    self._set_state(job, "failed", error=message, hint=hint)
                else:  # the server is stopping: the record keeps "running", and the next start resumes it
                    self.store.persist(job)
        # Whatever one job raises (bad model, NaNs, OOM, a bug) is that job's failure; the worker
        # must live on to run the next one, so this catches broadly and logs the traceback.
        except Exception as error:  # noqa: BLE001
            log.exception("job %s failed", job.id)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            message, hint = describe_failure(error, stage)
            with self._lock:
                self._set_state(job, "failed", error=message, hint=hint)
        else:
            with self._lock:
                # A cancel that arrives during the (uncancellable) export still wins: the artist said stop.
                if job.cancel_requested.is_set():
                    self._set_state(job, "cancelled")
                else:
                    self._set_state(
                        job, "done", glb_name=glb_name, metadata=dict(result.metadata), step=job.spec.steps
                    )

    def _keep_in_folder(self, job: Job, glb_path: Path) -> str:
        """The GLB's name inside the job folder (copied in if the run function wrote it elsewhere)."""
        if glb_path.parent.resolve() != job.folder.resolve():
            write_atomic(job.folder / glb_path.name, glb_path.read_bytes())
        if not (job.folder / glb_path.name).is_file():
            raise FileNotFoundError(f"the pipeline reported {glb_path} but wrote no such file")
        return glb_path.name

    def _on_progress(self, job: Job, step: int, loss: float, eta_s: float | None) -> None:
        with self._lock:
            job.step, job.loss, job.eta_s = int(step), _finite_or_none(loss), _finite_or_none(eta_s)

    def _on_preview(self, job: Job, step: int, rgb: np.ndarray) -> None:
        write_atomic(job.folder / PREVIEW_FILE, png_bytes(rgb))
        with self._lock:
            job.preview_step = int(step)
            self.store.persist(job)

    def _on_stage(self, job: Job, stage: str) -> None:
        with self._lock:
            if stage == "exporting" and job.state == "running":
                self._set_state(job, "exporting", eta_s=None)


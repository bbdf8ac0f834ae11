"""The job runner: one queue, one worker thread that owns the accelerator, warm priors, and the state machine.

Every state change goes through ``JobManager._set_state`` (checked against ``TRANSITIONS`` and written to
``<data_dir>/<id>/job.json`` atomically), so the file on disk always says what the API says.
Cancellation is cooperative: ``DELETE`` sets a flag the training loop reads once per step.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import re
import shutil
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from nfsd_server.api.records import JOB_ID_PATTERN, JobRecord, UnsafePath, inside
from nfsd_server.api.schemas import (
    FINISHED_STATES,
    JobRequest,
    JobStatus,
    ResolvedJobRequest,
)
from nfsd_server.api.mesh_store import mesh_path, purge_meshes
from nfsd_server.checkpoints import LEGACY_NAME, CheckpointError, read_checkpoint_info
from nfsd_server.files import write_atomic
from nfsd_server.guidance.nonfinite import NonFiniteOutputError
from nfsd_server.devices import default_device
from nfsd_server.guidance.prior import Prior, load_prior
from nfsd_server.guidance.warm import LoadPriorFn, PriorKey, WarmPriors
from nfsd_server.model_source import check_benchmark_allowed, check_model
from nfsd_server.pipeline import Callbacks, GenerationCancelled, GenerationResult, run_generation
from nfsd_server.settings import GenerationSettings, resolve_settings
from nfsd_server.train import CHECKPOINT_NAME

log = logging.getLogger(__name__)

TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    # running → done directly when a run function reports no export stage;
    # running/exporting → queued only at start-up, for a job the previous server run was interrupted in.
    "running": frozenset({"exporting", "done", "failed", "cancelled", "queued"}),
    "exporting": frozenset({"done", "failed", "cancelled", "queued"}),
}
JOB_FILE = "job.json"
PREVIEW_FILE = "preview.png"

RunFn = Callable[..., GenerationResult]  # (settings, prior, job folder, callbacks, *, resume: bool) → result


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
        self, settings: GenerationSettings, out_dir: Path, callbacks: Callbacks, *, resume: bool = False
    ) -> GenerationResult: ...


@dataclass(frozen=True)
class Purged:
    """What one purge deleted: finished jobs (ids, oldest first), job folders set aside at start-up for a bad
    record (names) and uploaded meshes (ids)."""

    jobs: list[str]
    set_aside: list[str]
    meshes: list[str]


def remove_link_or_tree(path: Path) -> None:
    """Delete ``path``: a symlink as a link (its target untouched), a folder with all it holds (links inside
    are removed as links, never followed). Logged, not raised: the purge runs on the worker thread."""
    if path.is_symlink() or not path.is_dir():
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("cannot delete %s: %s", path, error)
    else:
        shutil.rmtree(path, ignore_errors=True)  # as much as it can; what is left is logged
        if path.exists():
            log.warning("cannot delete all of %s", path)


class JobNotFound(KeyError):
    """No job with this id on this server."""


class ResultNotReady(Exception):
    """The job has no result (yet); ``state`` says why."""

    def __init__(self, state: str):
        super().__init__(state)
        self.state = state


@dataclass
class Job:
    """One job's state as the worker and the routes share it (always read and written under the lock)."""

    id: str
    request: ResolvedJobRequest
    folder: Path
    created_at: datetime
    state: str = "queued"
    step: int = 0
    loss: float | None = None
    eta_s: float | None = None
    error: str | None = None
    hint: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    preview_step: int | None = None
    glb_name: str | None = None
    metadata: dict[str, Any] | None = None
    resumed_from_step: int | None = None  # set when a restart interrupted the job: the step it continues from
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    def record(self) -> dict[str, Any]:
        """What job.json holds: enough to list the job again after a restart."""
        return {
            "id": self.id,
            "state": self.state,
            "request": self.request.model_dump(mode="json"),
            "step": self.step,
            "loss": self.loss,
            "eta_s": self.eta_s,
            "error": self.error,
            "hint": self.hint,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "preview_step": self.preview_step,
            "glb_name": self.glb_name,
            "metadata": self.metadata,
            "resumed_from_step": self.resumed_from_step,
        }

    @classmethod
    def from_record(cls, text: str, folder: Path) -> Job:
        """A job from its job.json text; ValidationError/ValueError if the record breaks the schema."""
        record = JobRecord.model_validate_json(text)
        if record.id != folder.name:
            raise ValueError(f"the record's id {record.id!r} is not its folder's name {folder.name!r}")
        if record.glb_name is not None:
            inside(folder, record.glb_name)
        values = record.model_dump(exclude={"id"})
        return cls(id=record.id, folder=folder, **values | {"request": record.request})


def checkpoint_step(folder: Path) -> int:
    """The step of the job's last checkpoint; 0 when there is none (or none this version can read).

    An unreadable checkpoint (or an old pickle one) is renamed ``*.unreadable``, else the resumed run would
    refuse to start on it.
    """
    path = folder / CHECKPOINT_NAME
    if (folder / LEGACY_NAME).exists():
        (folder / LEGACY_NAME).rename(folder / f"{LEGACY_NAME}.unreadable")
    if not path.exists():
        return 0
    try:
        return int(read_checkpoint_info(path)["step"])
    except (CheckpointError, KeyError, TypeError, ValueError) as error:
        log.warning("%s cannot be resumed from (%s); the job starts over", path, error)
        path.rename(folder / f"{CHECKPOINT_NAME}.unreadable")
        return 0


def encode_png(rgb: np.ndarray) -> bytes:
    """rgb: (H, W, 3) uint8 → PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no NaN/inf; a diverging loss must not turn every status poll into a 500.
    return float(value) if value is not None and math.isfinite(value) else None


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
    elif isinstance(error, ValueError):
        hint = "the prior or the pipeline rejected these settings; change them and submit again"
    else:
        hint = "see the server log for details"
    return message[:2000], hint


class JobManager:
    """Runs jobs one at a time, in submission order, on one worker thread; owns the warm priors.

    With an ``executor`` (a Ray cluster) it runs ``executor.slots`` jobs at once, one thread each, and the
    executor owns the models.

    ``run_fn`` and ``load_prior_fn`` default to the real pipeline; tests inject fakes.
    ``max_warm_models`` priors stay loaded between jobs (``WarmPriors``, keyed by ``PriorKey``); loading another
    evicts the least recently used first so two large models never sit in GPU memory together.
    Limits: at most ``max_queued`` jobs wait (QueueFull beyond); finished jobs older than ``retention_days``
    or beyond the newest ``max_finished`` are deleted with their folders (None: no limit), and so are uploaded
    meshes no queued or running job names and job folders set aside for a bad record, once older than
    ``retention_days`` too; ``random:*`` benchmark models only with ``allow_benchmark_models``.
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
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.default_prior = default_prior
        self.default_model = default_model
        self.device = str(torch.device(device)) if device else str(default_device())
        self._executor = executor
        if executor is not None:
            self.device = executor.device
        self._run_fn: RunFn = run_fn or run_generation
        self._priors = WarmPriors(load_prior_fn or load_checked_prior, capacity=max(1, max_warm_models))
        self.max_queued, self.retention_days, self.max_finished = max_queued, retention_days, max_finished
        self.allow_benchmark_models = allow_benchmark_models
        self._lock = threading.Condition()
        self._jobs: dict[str, Job] = {}  # insertion order = submission order
        self._pending: deque[str] = deque()
        self._running: list[str] = []  # ids, oldest first; more than one only with an executor's slots
        self._set_aside: dict[str, Path] = {}  # job folders whose record failed to load, by name, until purged
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._recover()

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        for index in range(self._executor.slots if self._executor else 1):
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
        self._priors.clear()

    def _recover(self) -> None:
        """List the jobs a previous run left and queue again what it did not finish: queued jobs as they were,
        an interrupted one (running or exporting) to resume from its last checkpoint, or from step 0 without one.

        A record that breaks the schema is set aside (logged, not listed, left on disk for a person to read).
        """
        records = []
        root = self.data_dir.resolve()
        for path in self.data_dir.glob(f"*/{JOB_FILE}"):
            try:
                if path.parent.resolve().parent != root:
                    raise UnsafePath(f"the job folder {str(path.parent)!r} links outside {str(self.data_dir)!r}")
                job = Job.from_record(path.read_text(encoding="utf-8"), path.parent)
            except (OSError, ValueError) as error:  # pydantic's ValidationError is a ValueError
                reason = " ".join(str(error).split())[:300]
                log.warning("setting aside %s: not a valid job record (%s)", path, reason)
                if re.fullmatch(JOB_ID_PATTERN, path.parent.name):  # only folders named as this server names them
                    self._set_aside[path.parent.name] = path.parent
                continue
            records.append(job)
        with self._lock:
            for job in sorted(records, key=lambda job: job.created_at):
                self._jobs[job.id] = job
                if job.state in ("running", "exporting"):
                    step = checkpoint_step(job.folder)
                    self._set_state(job, "queued", resumed_from_step=step, step=step, eta_s=None)
                    log.info("job %s was interrupted; it resumes from step %d", job.id, step)
                if job.state == "queued":
                    self._pending.append(job.id)
        self.purge()

    # -- the state machine: the only place a job's state changes -----------------------------------
    def _set_state(self, job: Job, state: str, **changes: Any) -> None:
        """Caller holds the lock."""
        if state not in TRANSITIONS.get(job.state, frozenset()):
            raise RuntimeError(f"job {job.id}: illegal transition {job.state} → {state}")
        now = datetime.now(timezone.utc)
        job.state = state
        if state == "running":
            job.started_at = now
        if state in FINISHED_STATES:
            job.finished_at = now
            job.eta_s = None
        for name, value in changes.items():
            setattr(job, name, value)
        self._persist(job)
        log.info("job %s: %s%s", job.id, state, f" ({job.error})" if job.error else "")

    def _persist(self, job: Job) -> None:
        # Memory is the truth while the server runs; the file is for the next start. A full or vanished
        # disk must not stop the state machine (or the worker) halfway through a transition.
        try:
            self._write_record(job)
        except OSError as error:
            log.error("job %s: cannot write %s: %s", job.id, job.folder / JOB_FILE, error)

    def _write_record(self, job: Job) -> None:
        write_atomic(job.folder / JOB_FILE, json.dumps(job.record(), indent=1).encode("utf-8"))

    # -- what the routes call ---------------------------------------------------------------------
    def resolve(self, request: JobRequest) -> ResolvedJobRequest:
        """Fill in the defaults now, so the status echoes exactly what will run (and a seed to reuse)."""
        check_benchmark_allowed(request.model, self.allow_benchmark_models)
        settings = resolve_settings(
            **request.model_dump(exclude={"init_mesh"}), init_mesh=mesh_path(self.data_dir, request.init_mesh),
            default_prior=self.default_prior, default_model=self.default_model,
        )
        return ResolvedJobRequest.model_validate({**asdict(settings), "init_mesh": request.init_mesh})

    def submit(self, request: JobRequest) -> Job:
        resolved = self.resolve(request)  # before the folder exists: a rejected request leaves nothing behind
        job_id = uuid.uuid4().hex
        folder = self.data_dir / job_id
        folder.mkdir(parents=True)
        with self._lock:
            # Stamped under the lock, so created_at order is queue order.
            job = Job(id=job_id, request=resolved, folder=folder, created_at=datetime.now(timezone.utc))
            try:
                if len(self._pending) >= self.max_queued:
                    raise QueueFull(len(self._pending))
                # Again under the lock the purge holds: it may have deleted an old upload since resolve().
                mesh_path(self.data_dir, resolved.init_mesh)
                # A job that cannot be recorded would vanish at the next start: refuse it, leaving nothing behind.
                self._write_record(job)
            except (OSError, QueueFull, ValueError):
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self._jobs[job_id] = job
            self._pending.append(job_id)
            self._lock.notify_all()
        return job

    def cancel(self, job_id: str) -> JobStatus:
        """Queued: cancelled now, never starts. Running: flagged; cancelled at the next step. Finished: no-op."""
        with self._lock:
            job = self._get(job_id)
            if job.state == "queued":
                self._pending.remove(job_id)
                self._set_state(job, "cancelled")
            elif job.state not in FINISHED_STATES:
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
        folders set aside at start-up; say what went.

        With ``older_than_s``: what is older than that. Without: the retention policy, i.e. what is older than
        ``retention_days`` and all but the newest ``max_finished`` finished jobs. A job's age runs from when it
        finished, a mesh's and a set-aside folder's from their mtime. Queued and running jobs are never
        deleted, nor the meshes they name: they read them when they run, export and resume.
        """
        now = datetime.now(timezone.utc)
        with self._lock:
            finished = sorted(
                (job for job in self._jobs.values() if job.state in FINISHED_STATES),
                key=lambda job: job.finished_at or job.created_at,
            )
            age_limit_s = older_than_s if older_than_s is not None else (
                None if self.retention_days is None else self.retention_days * 86400
            )
            doomed = {
                job.id: job for job in finished
                if age_limit_s is not None and (now - (job.finished_at or job.created_at)).total_seconds() > age_limit_s
            }
            if older_than_s is None and self.max_finished is not None:
                doomed.update({job.id: job for job in finished[: max(0, len(finished) - self.max_finished)]})
            for job_id in doomed:
                del self._jobs[job_id]
            meshes: list[str] = []
            set_aside: dict[str, Path] = {}
            if age_limit_s is not None:
                # Under the lock, as submit() checks its mesh: a job is listed before its mesh could go, or
                # refused after; never queued on a deleted file.
                in_use = {
                    job.request.init_mesh for job in self._jobs.values()
                    if job.state not in FINISHED_STATES and job.request.init_mesh is not None
                }
                meshes = purge_meshes(self.data_dir, age_limit_s, in_use, now.timestamp())
                for name, folder in list(self._set_aside.items()):
                    try:
                        mtime = folder.lstat().st_mtime  # the link's own time for a link: never followed
                    except OSError:  # gone already (a person cleaned up)
                        del self._set_aside[name]
                        continue
                    if now.timestamp() - mtime > age_limit_s:
                        set_aside[name] = self._set_aside.pop(name)
        for folder in [job.folder for job in doomed.values()] + list(set_aside.values()):
            remove_link_or_tree(folder)
        if doomed or set_aside or meshes:
            log.info(
                "purged %d finished job(s), %d set-aside job folder(s), %d uploaded mesh(es)",
                len(doomed), len(set_aside), len(meshes),
            )
        jobs = [job.id for job in finished if job.id in doomed]
        return Purged(jobs=jobs, set_aside=sorted(set_aside), meshes=meshes)

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
                "models_loaded": [key.label for key in self._priors.warm_keys()],
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
            total=job.request.steps,
            loss=job.loss,
            eta_s=job.eta_s,
            queue_position=queue_position,
            resumed_from_step=job.resumed_from_step,
            error=job.error,
            hint=job.hint,
            request=job.request,
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
        def should_cancel() -> bool:
            return job.cancel_requested.is_set() or self._stopping

        callbacks = Callbacks(
            on_progress=lambda step, total, loss, eta_s: self._on_progress(job, step, loss, eta_s),
            on_preview=lambda step, rgb: self._on_preview(job, step, rgb),
            on_stage=lambda stage: self._on_stage(job, stage),
            should_cancel=should_cancel,
        )
        request = job.request
        # The resolved request is GenerationSettings' fields (validated once more: a record may be old),
        # with the init mesh's id standing for its uploaded file.
        stage = "loading"
        try:
            settings = GenerationSettings(
                **request.model_dump(exclude={"init_mesh"}), init_mesh=mesh_path(self.data_dir, request.init_mesh)
            )
            resume = job.resumed_from_step is not None
            if self._executor is not None:
                stage = "running"  # the executor loads its own models and names its own failures
                result = self._executor.run(settings, job.folder, callbacks, resume=resume)
            else:
                prior = self._priors.get(PriorKey.for_settings(settings, self.device))
                stage = "running"
                if should_cancel():
                    raise GenerationCancelled("cancelled while loading the model")
                result = self._run_fn(settings, prior, job.folder, callbacks, resume=resume)
            glb_name = self._keep_in_folder(job, Path(result.glb_path))
        except GenerationCancelled:
            with self._lock:
                if job.cancel_requested.is_set():
                    self._set_state(job, "cancelled")
                else:  # the server is stopping: the record keeps "running", and the next start resumes it
                    self._persist(job)
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
                        job, "done", glb_name=glb_name, metadata=dict(result.metadata), step=job.request.steps
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
        write_atomic(job.folder / PREVIEW_FILE, encode_png(rgb))
        with self._lock:
            job.preview_step = int(step)
            self._persist(job)

    def _on_stage(self, job: Job, stage: str) -> None:
        with self._lock:
            if stage == "exporting" and job.state == "running":
                self._set_state(job, "exporting", eta_s=None)


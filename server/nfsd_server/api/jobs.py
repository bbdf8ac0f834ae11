"""The job runner: one queue, one worker thread that owns the accelerator, warm priors, and the state machine.

Every state change goes through ``JobManager._set_state`` (checked against ``TRANSITIONS`` and written to
``<data_dir>/<id>/job.json`` atomically), so the file on disk always says what the API says.
Cancellation is cooperative: ``DELETE`` sets a flag the training loop reads once per step.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import uuid
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, get_args

import numpy as np
import torch
from pydantic import ValidationError

from nfsd_server.api.schemas import (
    FINISHED_STATES,
    JobRequest,
    JobState,
    JobStatus,
    ResolvedJobRequest,
)
from nfsd_server.api.mesh_store import mesh_path
from nfsd_server.files import write_atomic
from nfsd_server.guidance.prior import Prior, default_device, load_prior
from nfsd_server.pipeline import Callbacks, GenerationCancelled, GenerationResult, run_generation
from nfsd_server.settings import GenerationSettings, resolve_settings

log = logging.getLogger(__name__)

TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    # running → done directly when a run function reports no export stage.
    "running": frozenset({"exporting", "done", "failed", "cancelled"}),
    "exporting": frozenset({"done", "failed", "cancelled"}),
}
RESTART_REASON = "server restarted while the job was running; submit it again"
STOPPED_REASON = "server stopped while the job was running; submit it again"
JOB_FILE = "job.json"
PREVIEW_FILE = "preview.png"

RunFn = Callable[[GenerationSettings, Prior, Path, Callbacks], GenerationResult]
LoadPriorFn = Callable[..., Prior]


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
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], folder: Path) -> Job:
        def when(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        if record["state"] not in get_args(JobState):
            raise ValueError(f"unknown state {record['state']!r}")

        return cls(
            id=record["id"],
            request=ResolvedJobRequest.model_validate(record["request"], strict=False),
            folder=folder,
            created_at=datetime.fromisoformat(record["created_at"]),
            state=record["state"],
            step=record["step"],
            loss=record["loss"],
            eta_s=record["eta_s"],
            error=record["error"],
            hint=record["hint"],
            started_at=when(record["started_at"]),
            finished_at=when(record["finished_at"]),
            preview_step=record["preview_step"],
            glb_name=record["glb_name"],
            metadata=record["metadata"],
        )


def encode_png(rgb: np.ndarray) -> bytes:
    """rgb: (H, W, 3) uint8 → PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no NaN/inf; a diverging loss must not turn every status poll into a 500.
    return float(value) if value is not None and math.isfinite(value) else None


def describe_failure(error: BaseException) -> tuple[str, str]:
    """(one-line error, hint) for a job that raised: the message, never the traceback."""
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
        hint = "out of memory: pick the draft preset, fewer steps or a smaller texture, or free the GPU"
    elif isinstance(error, FloatingPointError):
        hint = "training diverged: lower the guidance scale or try another seed"
    elif isinstance(error, OSError):
        hint = "check that the model is a hub id the server can reach or a diffusers folder on the server"
    elif isinstance(error, ValueError):
        hint = "the prior or the pipeline rejected these settings; change them and submit again"
    else:
        hint = "see the server log for details"
    return message[:2000], hint


class JobManager:
    """Runs jobs one at a time, in submission order, on one worker thread; owns the warm priors.

    ``run_fn`` and ``load_prior_fn`` default to the real pipeline; tests inject fakes.
    ``max_warm_models`` priors stay loaded between jobs, keyed by (prior, model, device); loading another
    evicts the least recently used first so two large models never sit in GPU memory together.
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
    ):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.default_prior = default_prior
        self.default_model = default_model
        self.device = str(torch.device(device)) if device else str(default_device())
        self._run_fn: RunFn = run_fn or run_generation
        self._load_prior_fn: LoadPriorFn = load_prior_fn or load_prior
        self._max_warm_models = max(1, max_warm_models)
        self._lock = threading.Condition()
        self._jobs: dict[str, Job] = {}  # insertion order = submission order
        self._pending: deque[str] = deque()
        self._running: str | None = None
        self._priors: OrderedDict[tuple[str, str | None, str], Prior] = OrderedDict()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._recover()

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="nfsd-job-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the running job reaches a step boundary; it is marked failed (submit it again)."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the running job did not stop within %.0f s; it is failed at the next start", timeout)
        with self._lock:
            self._priors.clear()

    def _recover(self) -> None:
        """List the jobs a previous run left; one that was interrupted is failed, not resumed."""
        records = []
        for path in self.data_dir.glob(f"*/{JOB_FILE}"):
            try:
                job = Job.from_record(json.loads(path.read_text(encoding="utf-8")), path.parent)
            except (OSError, ValueError, KeyError, TypeError, ValidationError) as error:
                log.warning("skipping %s: not a readable job record (%s)", path, error)
                continue
            records.append(job)
        with self._lock:
            for job in sorted(records, key=lambda job: job.created_at):
                self._jobs[job.id] = job
                if job.state not in FINISHED_STATES:
                    self._set_state(job, "failed", error=RESTART_REASON, hint="submit the job again")

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
            write_atomic(job.folder / JOB_FILE, json.dumps(job.record(), indent=1).encode("utf-8"))
        except OSError as error:
            log.error("job %s: cannot write %s: %s", job.id, job.folder / JOB_FILE, error)

    # -- what the routes call ---------------------------------------------------------------------
    def resolve(self, request: JobRequest) -> ResolvedJobRequest:
        """Fill in the defaults now, so the status echoes exactly what will run (and a seed to reuse)."""
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
        job = Job(id=job_id, request=resolved, folder=folder, created_at=datetime.now(timezone.utc))
        with self._lock:
            self._jobs[job_id] = job
            self._persist(job)
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

    def list(self) -> list[JobStatus]:
        with self._lock:
            positions = {job_id: index for index, job_id in enumerate(self._pending)}
            return [self._status(job, positions.get(job.id)) for job in reversed(self._jobs.values())]

    def preview_path(self, job_id: str) -> Path | None:
        with self._lock:
            job = self._get(job_id)
            return job.folder / PREVIEW_FILE if job.preview_step is not None else None

    def result(self, job_id: str) -> tuple[Path, dict[str, Any]]:
        """(GLB path, metadata) of a done job; ResultNotReady otherwise."""
        with self._lock:
            job = self._get(job_id)
            if job.state != "done" or job.glb_name is None:
                raise ResultNotReady(job.state)
            return job.folder / job.glb_name, dict(job.metadata or {})

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {
                "models_loaded": [prior if model is None else f"{prior}:{model}" for prior, model, _ in self._priors],
                "queue_length": len(self._pending),
                "running_job": self._running,
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
                self._running = job.id
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
                    self._running = None

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
        try:
            settings = GenerationSettings(
                **request.model_dump(exclude={"init_mesh"}), init_mesh=mesh_path(self.data_dir, request.init_mesh)
            )
            prior = self._warm_prior(request.prior, request.model)
            if should_cancel():
                raise GenerationCancelled("cancelled while loading the model")
            result = self._run_fn(settings, prior, job.folder, callbacks)
            glb_name = self._keep_in_folder(job, Path(result.glb_path))
        except GenerationCancelled:
            with self._lock:
                if job.cancel_requested.is_set():
                    self._set_state(job, "cancelled")
                else:
                    self._set_state(job, "failed", error=STOPPED_REASON, hint="submit the job again")
        # Whatever one job raises (bad model, NaNs, OOM, a bug) is that job's failure; the worker
        # must live on to run the next one, so this catches broadly and logs the traceback.
        except Exception as error:  # noqa: BLE001
            log.exception("job %s failed", job.id)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            message, hint = describe_failure(error)
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

    def _warm_prior(self, name: str, model: str | None) -> Prior:
        key = (name, model, self.device)
        with self._lock:
            if key in self._priors:
                self._priors.move_to_end(key)
                return self._priors[key]
            while len(self._priors) >= self._max_warm_models:
                self._priors.popitem(last=False)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        # Loading can take a minute; outside the lock so status polls are never blocked by it.
        # Only this worker thread loads, so the same key is never loaded twice concurrently.
        prior = self._load_prior_fn(name, model, self.device)
        with self._lock:
            self._priors[key] = prior
        return prior

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


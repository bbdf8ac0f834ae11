"""Jobs on a Ray cluster: the executor ``nfsd batch --ray`` and ``nfsd serve --ray`` hand jobs to.

``RayExecutor.run(spec, out_dir, callbacks)`` has the in-process pipeline's contract: it blocks until the
job ends, calls the callbacks on the caller's thread (progress, previews, stages), honours
``callbacks.should_cancel`` by cancelling the remote task, and returns a ``GenerationResult`` or raises
(``GenerationCancelled``, the job's own error, or ``WorkerLost``). A worker that dies mid-job (SIGKILL, OOM
kill, node lost) is replaced and the job retried once with ``resume=True`` from its last checkpoint.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any

from nfsd_server.farm.cluster import (
    FarmError,
    connect,
    import_ray,
    uses_gpus,
    worker_count,
    worker_options,
)
from nfsd_contract import JobSpec
from nfsd_server.pipeline import Callbacks, GenerationCancelled, GenerationResult, JobFiles

log = logging.getLogger(__name__)

POLL_S = 0.25
MAX_ATTEMPTS = 2  # the first run and one retry from the checkpoint
START_TIMEOUT_S = 600.0  # a worker that cannot start by then is waiting for a GPU the cluster does not have


class WorkerLost(RuntimeError):
    """The Ray worker running the job died on every attempt."""


def describe_worker(identity: dict[str, Any]) -> str:
    return f"worker pid {identity['pid']} on {identity['host']} ({identity['device']})"


class RayExecutor:
    """A pool of ``GenerationWorker`` actors, one per GPU (or CPU); ``slots`` jobs run at once."""

    def __init__(self, workers: int | None = None, poll_s: float = POLL_S):
        self._ray = import_ray()
        self._poll_s = poll_s
        self.owns_ray = False  # set by connect_executor when it started Ray, so close() stops it
        self.slots = worker_count(workers)
        self.device = f"ray: {self.slots} {'GPU' if uses_gpus() else 'CPU'} workers"
        self._options = {**worker_options(), "max_concurrency": 4}  # run + poll + cancel at once
        self._idle: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._identity: dict[Any, dict[str, Any]] = {}
        self._running: dict[str, dict[str, Any]] = {}  # job key (its folder) → the worker running it
        for actor in self._new_workers(self.slots):
            self._idle.put(actor)
        self._size = self.slots  # live workers; a lost one is replaced, or the pool shrinks

    def _new_workers(self, count: int, timeout: float = START_TIMEOUT_S) -> list:
        """Start ``count`` actors (in parallel: each imports torch) and learn who they are."""
        from nfsd_server.farm.actors import GenerationWorker

        cpu_threads = None if "num_gpus" in self._options else int(self._options["num_cpus"])
        actor_class = self._ray.remote(GenerationWorker).options(**self._options)
        actors = [actor_class.remote(cpu_threads) for _ in range(count)]
        try:
            identities = self._ray.get([actor.identity.remote() for actor in actors], timeout=timeout)
        except self._ray.exceptions.GetTimeoutError:
            for actor in actors:
                self._ray.kill(actor, no_restart=True)
            raise FarmError(
                f"{count} Ray worker(s) did not start within {timeout:.0f} s: the cluster has no free "
                f"{'GPU' if 'num_gpus' in self._options else 'CPU'} for them (see `ray status`)"
            ) from None
        with self._lock:
            self._identity.update(zip(actors, identities))
        return actors

    def _acquire(self, lost: list[str]):
        """An idle worker; WorkerLost if none is left alive (rather than waiting forever)."""
        while True:
            try:
                return self._idle.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    if self._size == 0:
                        raise WorkerLost(
                            "no Ray workers left: every worker was lost and none could be replaced"
                            + (f" (lost: {'; '.join(lost)})" if lost else "") + "; check the cluster (`ray status`)"
                        ) from None

    def _replace(self, actor) -> None:
        with self._lock:
            self._identity.pop(actor, None)
        self._ray.kill(actor, no_restart=True)
        try:
            replacement = self._new_workers(1)[0]
        except (FarmError, self._ray.exceptions.RayError) as error:
            log.error("cannot replace a lost Ray worker (%s); %d left", error, self._size - 1)
            with self._lock:
                self._size -= 1
            return
        self._idle.put(replacement)

    def running(self) -> dict[str, dict[str, Any]]:
        """{job folder: worker identity} of the jobs running now (for logs, and for tests that kill one)."""
        with self._lock:
            return dict(self._running)

    def run(
        self, spec: JobSpec, out_dir: Path, callbacks: Callbacks, *, resume: bool = False,
        files: JobFiles = JobFiles(),
    ) -> GenerationResult:
        ray = self._ray
        job_key = str(Path(out_dir).resolve())
        lost: list[str] = []
        for attempt in range(MAX_ATTEMPTS):
            actor = self._acquire(lost)
            with self._lock:
                identity = self._identity[actor]
                self._running[job_key] = identity
            try:
                outcome = self._drive(
                    actor, job_key, spec, out_dir, callbacks, resume=resume or attempt > 0, files=files
                )
            except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as error:
                lost.append(describe_worker(identity))
                log.warning("job %s: %s was lost (%s)", job_key, lost[-1], type(error).__name__)
                self._replace(actor)
                continue
            except BaseException:
                self._idle.put(actor)
                raise
            finally:
                with self._lock:
                    self._running.pop(job_key, None)
            self._idle.put(actor)
            if outcome["state"] == "cancelled":
                raise GenerationCancelled("cancelled on the Ray worker")
            farm = {"worker": describe_worker(identity), "attempts": attempt + 1, "lost_workers": lost}
            return GenerationResult(
                glb_path=Path(outcome["glb_path"]),
                checkpoint_path=Path(outcome["checkpoint_path"]) if outcome["checkpoint_path"] else None,
                metadata={**outcome["metadata"], "farm": farm},
            )
        raise WorkerLost(
            f"the Ray worker running this job died {len(lost)} times ({'; then '.join(lost)}): "
            "node lost or killed (often out of memory)"
        )

    def _drive(
        self, actor, job_key: str, spec: JobSpec, out_dir: Path, callbacks: Callbacks, resume: bool,
        files: JobFiles,
    ) -> dict:
        """Start the job on ``actor`` and relay its news until it ends; raises what the job raised."""
        ray = self._ray
        task = actor.run.remote(job_key, spec, str(out_dir), resume, files)
        cancel_sent = False
        try:
            while True:
                finished, _ = ray.wait([task], timeout=self._poll_s)
                try:
                    _deliver(ray.get(actor.poll.remote(job_key)), callbacks)
                except ray.exceptions.ActorUnavailableError:  # a network blip, not a death: poll again
                    pass
                if not cancel_sent and callbacks.should_cancel and callbacks.should_cancel():
                    actor.cancel.remote(job_key)
                    cancel_sent = True
                if finished:
                    try:
                        return ray.get(task)
                    except ray.exceptions.RayTaskError as error:
                        # The job's own error, as the in-process worker would have raised it (no remote traceback).
                        if isinstance(error.cause, Exception):
                            raise error.cause from None
                        # The cause did not survive pickling: its last line is the message.
                        raise RuntimeError(str(error).strip().splitlines()[-1]) from None
        finally:
            actor.forget.remote(job_key)

    def close(self) -> None:
        """Stop the workers (and Ray itself, when ``connect_executor`` started it)."""
        with self._lock:
            actors, self._identity = list(self._identity), {}
        for actor in actors:
            self._ray.kill(actor, no_restart=True)
        if self.owns_ray:
            self._ray.shutdown()


def connect_executor(address: str, workers: int | None = None) -> RayExecutor:
    """For the command line: join ``address`` and start the workers; a problem is one UsageError line."""
    from nfsd_server.errors import UsageError

    if workers is not None and workers < 1:
        raise UsageError(f"the number of Ray workers must be at least 1, got {workers}")
    try:
        started = connect(address)
        executor = RayExecutor(workers)
    except FarmError as error:
        raise UsageError(str(error)) from None
    executor.owns_ray = started
    return executor


def _deliver(news: dict[str, Any], callbacks: Callbacks) -> None:
    for stage in news["stages"]:
        if callbacks.on_stage:
            callbacks.on_stage(stage)
    if news["progress"] is not None and callbacks.on_progress:
        callbacks.on_progress(*news["progress"])
    if news["preview"] is not None and callbacks.on_preview:
        callbacks.on_preview(*news["preview"])

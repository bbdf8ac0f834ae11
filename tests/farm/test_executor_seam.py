"""The job server's executor seam, without Ray: with ``slots=2`` two jobs run at once, through the same
callbacks (progress, preview, stage, cancel) and the same state machine as the in-process worker."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from farm_helpers import wait_until
from nfsd_server.api.jobs import JobManager
from nfsd_server.api.schemas import JobRequest
from nfsd_server.pipeline import Callbacks, GenerationCancelled, GenerationResult


class TwoSlotExecutor:
    """Runs jobs on the caller's thread, step by step, until released (or cancelled)."""

    slots = 2
    device = "fake: 2 workers"

    def __init__(self):
        self.release = threading.Event()
        self.started: list[str] = []

    def run(
        self, spec, out_dir: Path, callbacks: Callbacks, *, resume: bool = False, files=None
    ) -> GenerationResult:
        self.started.append(spec.prompt)
        step = 0
        while not self.release.wait(0.01):
            if callbacks.should_cancel():
                raise GenerationCancelled("cancelled")
            step += 1
            if step == 1:
                callbacks.on_preview(step, np.full((8, 8, 3), 200, np.uint8))
            callbacks.on_progress(step, spec.steps, 0.5, 1.0)
        callbacks.on_stage("exporting")
        glb = out_dir / "object.glb"
        glb.write_bytes(b"glTF")
        return GenerationResult(glb_path=glb, checkpoint_path=out_dir / "checkpoint.pt", metadata={"faces": 12})


def test_executor_runs_slots_jobs_at_once_with_progress_preview_and_cancel(tmp_path):
    executor = TwoSlotExecutor()
    manager = JobManager(tmp_path / "jobs", default_prior="analytic", executor=executor)
    manager.start()
    try:
        first = manager.submit(JobRequest(prompt="a red ball", steps=1000)).id
        second = manager.submit(JobRequest(prompt="a blue cube", steps=1000)).id
        wait_until(lambda: all(manager.status(job).step > 0 for job in (first, second)), 10, "both jobs to step")
        assert {manager.status(job).state for job in (first, second)} == {"running"}
        assert manager.preview_path(first).is_file() and manager.health()["running_job"] == first
        manager.cancel(first)
        wait_until(lambda: manager.status(first).state == "cancelled", 10, "the cancel to reach the job")
        assert manager.status(second).state == "running"
        executor.release.set()
        wait_until(lambda: manager.status(second).state == "done", 10, "the second job to finish")
        glb, metadata = manager.result(second)
        assert glb.read_bytes() == b"glTF" and metadata == {"faces": 12}
        assert sorted(executor.started) == ["a blue cube", "a red ball"] and manager.device == "fake: 2 workers"
    finally:
        executor.release.set()
        manager.stop()

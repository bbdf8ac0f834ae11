"""The Ray actor that runs jobs: one per device, with the last prior kept warm between jobs (``WarmPriors``).

A threaded actor: ``run`` trains on one thread while the driver calls ``poll`` (progress, the latest preview,
stage changes) and ``cancel`` on others, so progress, previews and cancel flow through Ray, not a file system.
The job's ``out_dir`` (checkpoint and GLB) must be visible to the worker at the same path (one box, or a
shared mount), which is also what lets a replacement worker resume from the checkpoint a lost one left.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nfsd_contract import JobSpec
from nfsd_server.guidance.warm import WarmPriors
from nfsd_server.farm import worker_generate
from nfsd_server.pipeline import Callbacks, GenerationCancelled, JobFiles, run_job


@dataclass
class _Mailbox:
    """What one running job has to tell the driver since its last poll (bounded: only the latest of each)."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    progress: tuple[int, int, float, float | None] | None = None
    preview: tuple[int, np.ndarray] | None = None
    stages: list[str] = field(default_factory=list)


class GenerationWorker:
    """Holds one device (Ray sets CUDA_VISIBLE_DEVICES for ``num_gpus=1``) and the last prior it loaded."""

    def __init__(self, cpu_threads: int | None = None):
        import torch

        from nfsd_server.devices import keep_freed_host_memory
        from nfsd_server.guidance.registry import load_prior

        keep_freed_host_memory()  # a worker process of its own: the CLI's call did not reach it
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu" and cpu_threads:
            torch.set_num_threads(cpu_threads)  # one CPU reserved → one thread, so workers do not fight
        self._lock = threading.Lock()
        self._mailboxes: dict[str, _Mailbox] = {}
        # One model per device: never two large models in memory together.
        self._priors = WarmPriors(load_prior, capacity=1)

    def identity(self) -> dict[str, Any]:
        """Who this worker is, so a lost one can be named."""
        import ray

        return {
            "pid": os.getpid(), "host": socket.gethostname(), "device": self.device,
            "node_id": ray.get_runtime_context().get_node_id(),
        }

    def run(
        self, job_key: str, spec: JobSpec, out_dir: str, resume: bool, files: JobFiles = JobFiles()
    ) -> dict[str, Any]:
        """Train and export; ``{"state": "done", ...}`` or ``{"state": "cancelled"}``. Errors propagate.

        ``files`` (like ``out_dir``) must be paths this worker can read."""
        mailbox = self._mailbox(job_key)
        folder = Path(out_dir)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"worker on {socket.gethostname()} cannot see the job folder {out_dir}; put the output folder on "
                "storage every Ray node mounts at the same path"
            )

        def on_stage(stage: str) -> None:
            with self._lock:
                mailbox.stages.append(stage)

        def on_progress(step: int, total: int, loss: float, eta_s: float | None) -> None:
            with self._lock:
                mailbox.progress = (step, total, loss, eta_s)

        def on_preview(step: int, rgb: np.ndarray) -> None:
            with self._lock:
                mailbox.preview = (step, rgb)

        callbacks = Callbacks(on_progress, on_preview, on_stage, mailbox.cancelled.is_set)
        try:
            result = run_job(
                spec, self._priors, folder, callbacks, device=self.device, resume=resume, files=files,
                generate=worker_generate,
            )
        except GenerationCancelled:
            return {"state": "cancelled"}
        return {
            "state": "done", "glb_path": str(result.glb_path),
            "checkpoint_path": str(result.checkpoint_path) if result.checkpoint_path else None,
            "metadata": dict(result.metadata),
        }

    def poll(self, job_key: str) -> dict[str, Any]:
        """Everything since the last poll: ``{"stages": [...], "progress": tuple | None, "preview": tuple | None}``."""
        mailbox = self._mailbox(job_key)
        with self._lock:
            news = {"stages": mailbox.stages, "progress": mailbox.progress, "preview": mailbox.preview}
            mailbox.stages, mailbox.progress, mailbox.preview = [], None, None
        return news

    def cancel(self, job_key: str) -> None:
        """The job stops at its next training step (or before it starts)."""
        self._mailbox(job_key).cancelled.set()

    def forget(self, job_key: str) -> None:
        with self._lock:
            self._mailboxes.pop(job_key, None)

    def _mailbox(self, job_key: str) -> _Mailbox:
        with self._lock:
            return self._mailboxes.setdefault(job_key, _Mailbox())

"""API test helpers: a fake pipeline and prior loader (injected into JobManager), and a real spawned server.

A module of its own (not conftest) so test files can import it by a name unique in the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nfsd_server.pipeline import GenerationCancelled, GenerationResult

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KNOWN_PROMPTS = ("a red ball", "a blue cube", "a green torus")
RED_BALL = {"prompt": "a red ball", "steps": 12, "preset": "draft", "poly_budget": 1000, "texture_size": 512}


def submit(client, **overrides) -> str:
    """POST a RED_BALL job with ``overrides``; its id (asserting the 202)."""
    response = client.post("/v1/jobs", json={**RED_BALL, **overrides})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def refuse_job_records(monkeypatch) -> None:
    """From now on every write of a ``job.json`` fails as on a full disk (other files still write)."""
    import errno

    import nfsd_server.api.job_store as job_store  # where job records are written

    real_write = job_store.write_atomic

    def disk_full(path, data):
        if path.name == "job.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(job_store, "write_atomic", disk_full)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; return its value, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class FakePrior:
    """Knows the analytic prior's prompts; anything else is a ValueError, as the real one does."""

    def __init__(self, name: str, model: str | None, device: str):
        self.name, self.model, self.device = name, model, device

    def prepare_prompts(self, prompt: str, negative_prompt: str) -> str:
        if prompt not in KNOWN_PROMPTS:
            raise ValueError(f"the analytic prior has no reference for {prompt!r}; use one of {list(KNOWN_PROMPTS)}")
        return prompt


class FakeLoader:
    """``load_prior`` stand-in that counts loads per (name, model, device)."""

    def __init__(self):
        self.loads: list[tuple[str, str | None, str]] = []
        self.dtypes: list[str] = []
        self.encoders: list[str] = []

    def __call__(self, name: str, model: str | None = None, device: str | None = None, dtype: str = "auto",
                 encoder: str = "vae") -> FakePrior:
        self.loads.append((name, model, device))
        self.dtypes.append(dtype)
        self.encoders.append(encoder)
        if model is not None and model.startswith("/nonexistent"):
            raise OSError(f"no diffusers model at {model!r}")
        return FakePrior(name, model, device)


class FakePipeline:
    """``run_generation`` stand-in with the same callback protocol: a step takes ``step_s``; while ``gate`` is
    clear the loop waits before each step (so a test can hold a job in ``running``)."""

    def __init__(self, step_s: float = 0.0, loss: float | None = None):
        self.step_s, self.loss = step_s, loss
        self.gate = threading.Event()
        self.gate.set()
        self.pause_at_step: int | None = None  # clear the gate when this step is reached
        self.started: list[str] = []  # prompts, in the order jobs started
        self.started_from: dict[str, int] = {}  # prompt → the step it began at (>0 when resumed)
        self.cancelled_at: dict[str, int] = {}
        self.specs_seen: list = []  # every JobSpec a job ran with
        self.init_mesh_paths: list = []  # and the file its init mesh id named
        self.files_seen: list = []  # every JobFiles a job ran with

    def __call__(
        self, settings, prior, out_dir: Path, callbacks, resume: bool = False, files=None
    ) -> GenerationResult:
        from nfsd_server.checkpoints import read_checkpoint_info, write_checkpoint
        from nfsd_server.train import CHECKPOINT_NAME

        self.started.append(settings.prompt)
        self.specs_seen.append(settings)
        self.init_mesh_paths.append(files.init_mesh)
        self.files_seen.append(files)
        callbacks.on_stage("training")
        prior.prepare_prompts(settings.prompt, settings.negative_prompt)
        total = settings.steps
        checkpoint = out_dir / CHECKPOINT_NAME
        first = read_checkpoint_info(checkpoint)["step"] if resume and checkpoint.exists() else 0
        self.started_from[settings.prompt] = first
        for step in range(first, total):
            if step == self.pause_at_step:
                self.gate.clear()
            while not self.gate.wait(0.01):
                if callbacks.should_cancel():
                    break
            if callbacks.should_cancel():
                self.cancelled_at[settings.prompt] = step
                raise GenerationCancelled(f"cancelled at step {step}")
            time.sleep(self.step_s)
            loss = self.loss if self.loss is not None else 1.0 / (step + 1)
            callbacks.on_progress(step + 1, total, loss, (total - step - 1) * self.step_s)
            if (step + 1) % 5 == 0 or step + 1 == total:
                callbacks.on_preview(step + 1, np.full((16, 16, 3), (step * 10) % 256, dtype=np.uint8))
                write_checkpoint(checkpoint, {}, {"step": step + 1})  # the real format, holding only the step
        callbacks.on_stage("exporting")
        import trimesh

        glb = out_dir / (settings.prompt.replace(" ", "_") + ".glb")
        glb.write_bytes(trimesh.creation.icosphere(subdivisions=1).export(file_type="glb"))
        metadata = {"prompt": settings.prompt, "seed": settings.seed, "method": settings.method, "steps": total}
        return GenerationResult(glb_path=glb, checkpoint_path=checkpoint, metadata=metadata)


def wait_state(client, job_id: str, states: str | tuple[str, ...], timeout: float = 10.0) -> dict:
    states = (states,) if isinstance(states, str) else states

    def reached():
        status = client.get(f"/v1/jobs/{job_id}").json()
        return status if status["state"] in states else None

    return wait_for(reached, timeout, f"job {job_id} to reach {states}")


# -- a real server process ------------------------------------------------------------------------
class SpawnedServer:
    """``python -m nfsd_server serve --port 0 --parent-stdin`` as the add-on starts it."""

    def __init__(self, data_dir: Path, *args: str, token: str | None = TOKEN):
        self.data_dir = data_dir
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NFSD_TOKEN", None)
        if token is not None:
            env["NFSD_TOKEN"] = token
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nfsd_server", "serve", "--port", "0", "--parent-stdin",
             "--data-dir", str(data_dir), "--default-prior", "analytic", "--device", "cpu", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        # Drain stderr in the background so a chatty server never blocks on a full pipe.
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        line = self._read_line(timeout=60)
        self.announcement: dict = json.loads(line)
        self.port: int = self.announcement["port"]
        self.url = f"http://127.0.0.1:{self.port}"

    def _drain_stderr(self) -> None:
        for raw in self.process.stderr:
            self.stderr_lines.append(raw.decode("utf-8", "replace"))

    def _read_line(self, timeout: float) -> str:
        result: list[bytes] = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            self.kill()
            raise AssertionError(f"no spawn line within {timeout} s; stderr:\n{''.join(self.stderr_lines)[-3000:]}")
        return result[0].decode("utf-8")

    def close_stdin_and_wait(self, timeout: float = 15.0) -> int:
        self.process.stdin.close()
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

"""`nfsd batch PROMPTS.txt --out DIR`: every prompt × N seeds, on a Ray cluster (``--ray``) or in this process.

Each job lands in ``DIR/<slug>-<seed>/`` (GLB, previews, checkpoint); ``DIR/summary.json`` says, per job, the
settings, times, faces and state, and is rewritten as each job ends. A failed job is reported; the rest go on.
Exit status: 0 when every job is done, 1 when any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nfsd_server.errors import UsageError
from nfsd_contract import JobSpec
from nfsd_server.guidance.warm import LoadPriorFn, WarmPriors
from nfsd_server.farm import worker_generate
from nfsd_server.pipeline import Callbacks, GenerationCancelled, InProcessExecutor, preview_saver

SUMMARY_FILE = "summary.json"
# generate's options that batch replaces (prompt → the file, out, seed → --seed/--seeds) or cannot honour (resume).
_NOT_FROM_GENERATE = {"prompt", "out", "resume", "help"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", type=Path, help="text file: one prompt per line; blank lines and # comments skipped")
    parser.add_argument("--out", type=Path, required=True, help="DIR/<slug>-<seed>/ per job, and DIR/summary.json")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per prompt: --seed, --seed+1, … (default: 1)")
    parser.add_argument(
        "--ray", metavar="ADDRESS", default=None,
        help="auto (the cluster `ray start` runs on this box), local (a private one-box cluster) or HEAD:6379; "
        "without it jobs run here, one at a time",
    )
    parser.add_argument("--workers", type=int, default=None, help="at most this many Ray workers (default: 1 per GPU)")
    _add_generate_settings(parser)


def _add_generate_settings(parser: argparse.ArgumentParser) -> None:
    """`nfsd generate`'s settings options, taken from it so the two commands never drift apart."""
    from nfsd_server import generate_command

    generate = argparse.ArgumentParser(add_help=False)
    generate_command.add_arguments(generate)
    for action in generate._actions:
        if action.option_strings and action.dest not in _NOT_FROM_GENERATE:
            parser._add_action(action)


def read_prompts(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise UsageError(f"cannot read the prompt file {str(path)!r}: {reason}") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [prompt for prompt in prompts if prompt and not prompt.startswith("#")]
    if not prompts:
        raise UsageError(f"{str(path)!r} has no prompts; write one per line (# starts a comment)")
    return prompts


@dataclass
class BatchJob:
    prompt: str
    seed: int
    folder: Path
    spec: JobSpec
    state: str = "queued"
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    metadata: dict[str, Any] | None = None
    glb: str | None = None

    def record(self) -> dict[str, Any]:
        def when(stamp: float | None) -> str | None:
            return datetime.fromtimestamp(stamp, UTC).isoformat() if stamp is not None else None

        metadata = self.metadata or {}
        previews = self.folder / "previews"
        return {
            "prompt": self.prompt, "seed": self.seed, "folder": self.folder.name, "state": self.state,
            "error": self.error, "glb": self.glb,
            "faces": metadata.get("faces"), "vertices": metadata.get("vertices"),
            "started_at": when(self.started_at), "finished_at": when(self.finished_at),
            "seconds": round(self.finished_at - self.started_at, 3) if self.finished_at and self.started_at else None,
            "previews": len(list(previews.glob("*.png"))) if previews.is_dir() else 0,
            "worker": metadata.get("farm", {}).get("worker"), "attempts": metadata.get("farm", {}).get("attempts"),
            "settings": self.spec.to_dict(),
        }


def plan_jobs(args: argparse.Namespace, prompts: list[str]) -> list[BatchJob]:
    """Every prompt × seed, validated up front (a bad setting stops the batch before any work)."""
    from nfsd_server.export import slugify

    jobs, names = [], set()
    for prompt in prompts:
        for seed in range(args.seed, args.seed + args.seeds):
            name = base = f"{slugify(prompt)}-{seed}"
            suffix = 2
            while name in names:  # the same prompt twice: keep both runs
                name, suffix = f"{base}-{suffix}", suffix + 1
            names.add(name)
            jobs.append(BatchJob(prompt, seed, args.out / name, spec_for(args, prompt, seed)))
    return jobs


def spec_for(args: argparse.Namespace, prompt: str, seed: int) -> JobSpec:
    """``nfsd generate``'s validation and defaults, for one (prompt, seed) of a batch."""
    from nfsd_server.generate_command import spec_from_args

    return spec_from_args(argparse.Namespace(**{**vars(args), "prompt": prompt, "seed": seed}))


def local_device(name: str | None) -> str:
    """``--device`` → the device jobs run on here (None: the default), checked before any work starts."""
    from nfsd_server.devices import check_device

    try:
        return str(check_device(name))
    except ValueError as error:
        raise UsageError(str(error)) from None


def local_executor(device: str, load_prior_fn: LoadPriorFn | None = None) -> InProcessExecutor:
    """Without ``--ray``: the server's in-process executor, one prior kept warm (as a Ray worker keeps), with the
    farm's training config (checkpoints by time too)."""
    from nfsd_server.guidance.registry import load_prior

    return InProcessExecutor(device, WarmPriors(load_prior_fn or load_prior, capacity=1), worker_generate)


class BatchRunner:
    """Runs the jobs ``executor.slots`` at a time, with one progress bar over the whole batch."""

    def __init__(self, jobs: list[BatchJob], executor, out_dir: Path, header: dict[str, Any]):
        from tqdm import tqdm

        self.jobs, self.executor, self.out_dir, self.header = jobs, executor, out_dir, header
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._bar = tqdm(total=sum(job.spec.steps for job in jobs), desc="batch", unit="step")
        self._started = time.time()

    def run(self) -> None:
        with ThreadPoolExecutor(max_workers=self.executor.slots, thread_name_prefix="nfsd-batch") as pool:
            futures = [pool.submit(self._run_one, job) for job in self.jobs]
            try:
                for future in futures:
                    future.result()
            except KeyboardInterrupt:
                self.stop.set()  # running jobs stop at their next step; queued ones never start
                raise
            finally:
                self._bar.close()
                self.write_summary()

    def _run_one(self, job: BatchJob) -> None:
        if self.stop.is_set():
            job.state = "cancelled"
            return
        counted = 0

        def on_progress(step: int, total: int, loss: float, eta_s: float | None) -> None:
            nonlocal counted
            with self._lock:
                self._bar.update(max(0, step - counted))
                counted = max(counted, step)

        job.state, job.started_at = "running", time.time()
        try:
            callbacks = Callbacks(on_progress, preview_saver(job.folder / "previews"), None, self.stop.is_set)
            result = self.executor.run(job.spec, job.folder, callbacks)
        except GenerationCancelled:
            job.state = "cancelled"
        # One job's failure (unknown prompt, bad model, OOM, a lost worker) must not stop the batch.
        except Exception as error:  # noqa: BLE001
            job.state, job.error = "failed", " ".join(str(error).split())[:2000] or type(error).__name__
            self._bar.write(f"failed: {job.prompt!r} seed {job.seed}: {job.error}")
        else:
            job.state, job.metadata = "done", dict(result.metadata)
            job.glb = os.path.relpath(result.glb_path, self.out_dir)
        finally:
            job.finished_at = time.time()
            with self._lock:
                self._bar.update(job.spec.steps - counted)
            self.write_summary()

    def write_summary(self) -> None:
        from nfsd_server import __version__
        from nfsd_server.files import write_atomic

        with self._lock:
            summary = {
                **self.header, "version": __version__, "wall_s": round(time.time() - self._started, 3),
                "counts": {state: sum(job.state == state for job in self.jobs)
                           for state in ("done", "failed", "cancelled", "running", "queued")},
                "jobs": [job.record() for job in self.jobs],
            }
            write_atomic(self.out_dir / SUMMARY_FILE, (json.dumps(summary, indent=1) + "\n").encode("utf-8"))


def run(args: argparse.Namespace) -> int:
    from nfsd_server.generate_command import writable_dir

    if args.seeds < 1:
        raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
    if args.ray and args.device:
        raise UsageError("--device is for running here; Ray workers each use their own GPU (drop --device)")
    if args.workers is not None and not args.ray:
        raise UsageError("--workers needs --ray ADDRESS (without Ray, jobs run here one at a time)")
    device = None if args.ray else local_device(args.device)
    prompts = read_prompts(args.prompts)
    out_dir = writable_dir(args.out)
    jobs = plan_jobs(args, prompts)
    if args.ray:
        from nfsd_server.farm.ray_jobs import connect_executor

        executor = connect_executor(args.ray, args.workers)
    else:
        executor = local_executor(device)
    header = {"prompts_file": str(args.prompts), "ray": args.ray, "workers": executor.slots}
    print(f"{len(jobs)} jobs ({len(prompts)} prompts × {args.seeds} seeds) on {executor.slots} worker(s)", flush=True)
    runner = BatchRunner(jobs, executor, out_dir, header)
    try:
        runner.run()
    finally:
        executor.close()
    done = sum(job.state == "done" for job in jobs)
    print(f"{done}/{len(jobs)} done; summary: {out_dir / SUMMARY_FILE}")
    for job in jobs:
        if job.state != "done":
            print(f"  {job.state}: {job.prompt!r} seed {job.seed}" + (f": {job.error}" if job.error else ""))
    return 0 if done == len(jobs) else 1

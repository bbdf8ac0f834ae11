"""Pass/fail acceptance run of the real path: Stable Diffusion 2.1-base sizes on CUDA, standard preset.

    python benchmarks/acceptance.py                 # CUDA: random SD 2.1-base weights, 300 steps (benchmarks/gpu.sh)
    python benchmarks/acceptance.py --smoke         # any machine: the tiny random SD, draft preset, 8 steps on CPU

Trains with the engine's own ``Trainer`` over the preset's whole schedule compressed into ``--steps`` steps
(albedo-only start, both render resolutions, t annealing) and checks, exiting 1 on any failure:
  * every step's loss is finite and the prior never produced a persistent run of NaN/inf;
  * peak GPU memory (torch.cuda.max_memory_allocated) ≤ --vram-budget-gib (default 8: the standard preset
    must fit an 8 GB card with SD 2.1-base in fp16);
  * median step time ÷ the UNet floor (the same rows through the prior alone) ≤ --max-step-over-floor.
Prints one line per check and a final ``acceptance: PASS`` or ``acceptance: FAIL (...)``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from nfsd_server.devices import keep_freed_host_memory
from nfsd_server.guidance.nonfinite import NonFiniteOutputError
from nfsd_server.guidance.registry import load_prior
from nfsd_server.guidance.random_models import save_random_stable_diffusion
from nfsd_server.presets import PRESETS
from nfsd_contract import resolve_spec
from nfsd_server.train import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from activation_memory import PeakRSS
from step_cost import StageTimer, latent_shape_of, unet_floor


def run(args: argparse.Namespace, model: str, device: torch.device) -> list[str]:
    """Train and check; returns the failures (empty: pass)."""
    failures: list[str] = []
    # As a job runs it: the preset's schedule and RGB-phase encoder ("auto").
    settings = resolve_spec("a hamburger", preset=args.preset, steps=args.steps, seed=0, dtype=args.dtype,
                            prior="stable-diffusion", model=model)
    prior = load_prior("stable-diffusion", model, device, dtype=args.dtype, encoder=settings.encoder)
    print(f"model {model} on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"dtypes {prior.dtypes}, preset {args.preset} (latent_fraction {PRESETS[args.preset].latent_fraction}, "
          f"RGB-phase encoder {settings.encoder}), {args.steps} steps", flush=True)
    trainer = Trainer(settings, prior, out_dir=None)
    timer, latent_shape = StageTimer(device), latent_shape_of(prior)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, ratios = [], []
    with PeakRSS() as rss:
        try:
            while trainer.step < trainer.total:
                timer._sync()
                start = time.perf_counter()
                loss = trainer.train_step()
                timer._sync()
                seconds = time.perf_counter() - start
                losses.append(float(loss))
                if trainer.step > 2 and trainer.step % args.floor_every == 0:  # after warm-up
                    ratios.append(seconds / unet_floor(prior, trainer, trainer.guidance.last_rows_evaluated,
                                                       latent_shape, timer))
            trainer.nonfinite.check()
        except NonFiniteOutputError as error:
            failures.append(str(error))
    bad = [step for step, value in enumerate(losses, start=1) if not math.isfinite(value)]
    print(f"loss: first {losses[0]:.4g}, last {losses[-1]:.4g}, non-finite at {len(bad)} steps"
          f"{f' (first {bad[0]})' if bad else ''}; prior output non-finite at {int(trainer.nonfinite.total)} steps")
    if bad:
        failures.append(f"loss was not finite at {len(bad)} of {len(losses)} steps (first at step {bad[0]})")
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"peak VRAM (max_memory_allocated): {peak_gib:.2f} GiB (budget {args.vram_budget_gib} GiB)")
        if peak_gib > args.vram_budget_gib:
            failures.append(f"peak VRAM {peak_gib:.2f} GiB is over the {args.vram_budget_gib} GiB budget")
    else:
        print(f"peak RSS during training: {rss.delta / 2**30:.2f} GiB above the start (CPU: no VRAM budget)")
    if ratios:
        ratio = statistics.median(ratios)
        print(f"step time ÷ UNet floor: {ratio:.2f} (median of {len(ratios)}, limit {args.max_step_over_floor})")
        if ratio > args.max_step_over_floor:
            failures.append(f"a step costs {ratio:.2f}× the UNet alone (limit {args.max_step_over_floor})")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random SD, draft preset, CPU, 8 steps")
    parser.add_argument("--steps", type=int, help="training steps (default 300; 8 with --smoke)")
    parser.add_argument("--device", help="default: cuda (cpu with --smoke)")
    parser.add_argument("--model", help="instead of the random weights: a diffusers folder (tests pass a broken one)")
    parser.add_argument("--dtype", default="auto", help="the dtype policy's name (default auto)")
    parser.add_argument("--vram-budget-gib", type=float, default=8.0)
    parser.add_argument("--max-step-over-floor", type=float,
                        help="default 4 (not checked with --smoke: the tiny UNet is no floor for anything)")
    parser.add_argument("--floor-every", type=int, default=25, help="steps between UNet-floor measurements")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never downloads: random weights only
    keep_freed_host_memory()  # as the nfsd commands run (cli.main)
    args.preset = "draft" if args.smoke else "standard"
    args.steps = args.steps or (8 if args.smoke else 300)
    if args.smoke:
        args.floor_every = min(args.floor_every, 4)
    if args.max_step_over_floor is None:
        args.max_step_over_floor = math.inf if args.smoke else 4.0
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("acceptance: FAIL (CUDA is not available to torch)")
        return 1
    with tempfile.TemporaryDirectory(prefix="nfsd-acceptance-") as scratch:
        model = args.model or (
            str(save_random_stable_diffusion(Path(scratch) / "tiny")) if args.smoke else "random:sd21-base"
        )
        failures = run(args, model, device)
    print("acceptance: PASS" if not failures else f"acceptance: FAIL ({'; '.join(failures)})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

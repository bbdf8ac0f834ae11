"""`nfsd generate "PROMPT"`: train with a tqdm progress bar, write previews, a checkpoint and the GLB."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nfsd_server import NFSD_NEGATIVE_PROMPT
from nfsd_server.cli import UsageError
from nfsd_server.guidance.dtype_policy import DTYPE_NAMES
from nfsd_server.pipeline import METHODS, PRESET_NAMES, TEXTURE_SIZES, Callbacks, GenerationSettings, run_generation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help='what to make, e.g. "a red ball"')
    parser.add_argument("--method", choices=METHODS, default="nfsd", help="score distillation (default: nfsd)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (default: 7.5 NFSD, 100 SDS)")
    parser.add_argument("--negative-prompt", default=NFSD_NEGATIVE_PROMPT, help="NFSD's p_neg (default: the paper's)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=PRESET_NAMES, default="draft")
    parser.add_argument(
        "--prior", choices=("analytic", "stable-diffusion"), default=None,
        help="analytic: closed-form offline test prior; stable-diffusion: a real model "
        "(default: stable-diffusion when --model is given, else analytic)",
    )
    parser.add_argument("--model", default=None, help="hub id or local diffusers folder (implies --prior stable-diffusion)")
    parser.add_argument("--poly-budget", type=int, default=20_000, help="max faces of the exported mesh")
    parser.add_argument("--texture-size", type=int, choices=TEXTURE_SIZES, default=1024)
    parser.add_argument("--device", default=None, help="cuda, mps, cpu (default: cuda when available)")
    parser.add_argument(
        "--dtype", choices=DTYPE_NAMES, default="auto",
        help="UNet precision (default auto: fp16 on CUDA, fp32 elsewhere; bf16 only on GPUs with native bf16)",
    )
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: ./out)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    if not args.prompt.strip():
        raise UsageError("the prompt is empty; describe the object, e.g. nfsd generate \"a red ball\"")
    if args.steps is not None and args.steps <= 0:
        raise UsageError(f"--steps must be a positive integer, got {args.steps}")
    if args.guidance_scale is not None and not args.guidance_scale > 0:
        raise UsageError(f"--guidance-scale must be > 0, got {args.guidance_scale}")
    if args.poly_budget < 100:
        raise UsageError(f"--poly-budget must be at least 100 faces, got {args.poly_budget}")
    if not 0 <= args.seed < 2**31:
        raise UsageError(f"--seed must be in [0, 2^31), got {args.seed}")
    prior = args.prior or ("stable-diffusion" if args.model else "analytic")
    return GenerationSettings(
        prompt=args.prompt.strip(), negative_prompt=args.negative_prompt, method=args.method,
        guidance_scale=args.guidance_scale, seed=args.seed, steps=args.steps, preset=args.preset,
        poly_budget=args.poly_budget, texture_size=args.texture_size, prior=prior, model=args.model,
    )


def writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {str(path)!r} cannot be created: {error.strerror}") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--out {str(path)!r} is not writable; pick a folder you can write to")
    return path


def run(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm import tqdm

    from nfsd_server.guidance.prior import check_device, load_prior

    settings = settings_from_args(args)
    out_dir = writable_dir(args.out)
    previews = out_dir / "previews"
    previews.mkdir(exist_ok=True)
    try:
        prior = load_prior(settings.prior, settings.model, check_device(args.device), dtype=args.dtype)
        prior.prepare_prompts(settings.prompt, settings.negative_prompt)  # fail on a bad prompt before training
    except ValueError as error:
        raise UsageError(str(error)) from error

    bar = tqdm(total=settings.train_config().total_steps, desc="training", unit="step")

    def on_progress(step: int, total: int, loss: float, eta_s: float | None) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()

    def on_preview(step: int, image) -> None:
        Image.fromarray(image).save(previews / f"step_{step:06d}.png")

    def on_stage(stage: str) -> None:
        if stage == "exporting":
            bar.close()
            print("exporting mesh…", flush=True)

    try:
        result = run_generation(settings, prior, out_dir, Callbacks(on_progress, on_preview, on_stage), resume=args.resume)
    except FloatingPointError as error:  # diverged, or the model produced NaN: one line, no GLB
        bar.close()
        print(f"nfsd generate: error: {error}", file=sys.stderr)
        return 1
    bar.close()
    print(f"previews:   {previews}")
    print(f"checkpoint: {result.checkpoint_path}")
    print(f"glb:        {result.glb_path}")
    return 0

"""`nfsd generate "PROMPT"`: train with a tqdm progress bar, write previews, a checkpoint and the GLB."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nfsd_blender import contract
from nfsd_server.devices import check_device
from nfsd_server.errors import UsageError
from nfsd_server.pipeline import Callbacks, run_generation
from nfsd_server.presets import PRESETS
from nfsd_server.settings import GenerationSettings, resolve_settings

CLI_DEFAULT_PRESET = "draft"  # the command line's default runs on a CPU in minutes; the add-on's is the contract's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help='what to make, e.g. "a red ball"')
    parser.add_argument("--method", choices=contract.METHODS, default="nfsd", help="score distillation (default: nfsd)")
    parser.add_argument(
        "--guidance-scale", type=float, default=None,
        help="CFG scale (default: " + ", ".join(f"{s:g} {m}" for m, s in contract.DEFAULT_GUIDANCE_SCALE.items()) + ")",
    )
    parser.add_argument(
        "--negative-prompt", default=contract.NFSD_NEGATIVE_PROMPT, help="NFSD's p_neg (default: the paper's)"
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=tuple(PRESETS), default=CLI_DEFAULT_PRESET)
    parser.add_argument(
        "--prior", choices=contract.PRIORS, default=None,
        help="analytic: closed-form offline test prior; stable-diffusion: a real model "
        "(default: stable-diffusion when --model is given, else analytic)",
    )
    parser.add_argument("--model", default=None, help="hub id or local diffusers folder (implies --prior stable-diffusion)")
    parser.add_argument(
        "--poly-budget", type=int, default=contract.DEFAULT_POLY_BUDGET, help="max faces of the exported mesh"
    )
    parser.add_argument(
        "--texture-size", type=int, choices=contract.TEXTURE_SIZES, default=contract.DEFAULT_TEXTURE_SIZE
    )
    parser.add_argument(
        "--init-mesh", type=Path, default=None, metavar="FILE",
        help="start from this mesh (" + ", ".join(contract.INIT_MESH_FORMATS) + "; +Z up, GLB +Y up): it guides the shape",
    )
    parser.add_argument(
        "--shape-strength", type=float, default=None,
        help=f"0..1, how closely the result keeps the init mesh's shape (default: {contract.DEFAULT_SHAPE_STRENGTH:g})",
    )
    parser.add_argument(
        "--keep-geometry", action="store_true",
        help="texture the init mesh itself: its vertices and faces are kept, only the colour is generated",
    )
    parser.add_argument("--device", default=None, help="cuda, mps, cpu (default: cuda when available)")
    parser.add_argument(
        "--dtype", choices=contract.DTYPES, default=contract.DEFAULT_DTYPE,
        help="UNet precision (default auto: fp16 on CUDA, fp32 elsewhere; bf16 only on GPUs with native bf16)",
    )
    parser.add_argument(
        "--encoder", choices=contract.ENCODERS, default=contract.DEFAULT_ENCODER,
        help="RGB-phase encoder: auto (the preset's: taesd for draft/standard, vae for high), vae (the model's "
        "own, exact) or taesd (madebyollin/taesd, ~100× cheaper, approximate)",
    )
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (default: ./out)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    """The one validation of the job's settings; its message names the setting, shown here as the flag."""
    try:
        return resolve_settings(
            args.prompt, negative_prompt=args.negative_prompt, method=args.method,
            guidance_scale=args.guidance_scale, seed=args.seed, steps=args.steps, preset=args.preset,
            poly_budget=args.poly_budget, texture_size=args.texture_size, prior=args.prior, model=args.model,
            dtype=args.dtype, encoder=args.encoder,
            init_mesh=args.init_mesh, shape_strength=args.shape_strength, keep_geometry=args.keep_geometry,
            default_prior="analytic", default_model=contract.DEFAULT_MODEL,
        )
    except ValueError as error:
        message = str(error)
        for name in ("guidance_scale", "negative_prompt", "poly_budget", "texture_size", "steps", "seed",
                     "init_mesh", "shape_strength", "keep_geometry"):
            if message.startswith(name):
                message = "--" + name.replace("_", "-") + message[len(name):]
                break
        raise UsageError(message) from error


def check_init_mesh_file(path: str) -> None:
    """Read and check the mesh before any model loads, so a bad file costs a second, not a training run."""
    from nfsd_server.scene.init_mesh import MeshError, load_mesh

    try:
        load_mesh(path)
    except MeshError as error:
        raise UsageError(f"--init-mesh: {error}") from error


def writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {str(path)!r} cannot be created: {error.strerror}") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--out {str(path)!r} is not writable; pick a folder you can write to")
    return path


def check_resumable(out_dir: Path, settings: GenerationSettings) -> None:
    """Before any model loads: a --resume checkpoint must be ours and from these settings (UsageError if not)."""
    from nfsd_server.checkpoints import LEGACY_NAME, CheckpointError, read_checkpoint_info
    from nfsd_server.train import CHECKPOINT_NAME, check_checkpoint_matches

    path = out_dir / CHECKPOINT_NAME
    try:
        if path.exists():
            check_checkpoint_matches(read_checkpoint_info(path), settings, path)
        elif (out_dir / LEGACY_NAME).exists():
            read_checkpoint_info(out_dir / LEGACY_NAME)  # raises, naming the old format; never unpickled
    except CheckpointError as error:
        raise UsageError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm import tqdm

    from nfsd_server.checkpoints import CheckpointError
    from nfsd_server.guidance.prior import load_prior
    from nfsd_server.model_source import check_model

    settings = settings_from_args(args)
    try:
        device = check_device(args.device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if settings.prior == "stable-diffusion" and settings.model is not None:
        try:
            check_model(settings.model)  # a missing folder or an unreachable hub id, before the slow load
        except ValueError as error:
            raise UsageError(str(error)) from None
    if settings.init_mesh:
        check_init_mesh_file(settings.init_mesh)
    out_dir = writable_dir(args.out)
    if args.resume:
        check_resumable(out_dir, settings)
    previews = out_dir / "previews"
    previews.mkdir(exist_ok=True)
    try:
        prior = load_prior(settings.prior, settings.model, device, dtype=settings.dtype, encoder=settings.encoder)
        prior.prepare_prompts(settings.prompt, settings.negative_prompt)  # fail on a bad prompt before training
    except ValueError as error:
        raise UsageError(str(error)) from error

    bar = tqdm(total=settings.steps, desc="training", unit="step")

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
        result = run_generation(
            settings, prior, out_dir, Callbacks(on_progress, on_preview, on_stage), resume=args.resume
        )
    except CheckpointError as error:  # the --resume checkpoint passed the early check but does not fit the run
        bar.close()
        raise UsageError(str(error)) from None
    except FloatingPointError as error:  # diverged, or the model produced NaN: one line, no GLB
        bar.close()
        print(f"nfsd generate: error: {error}", file=sys.stderr)
        return 1
    bar.close()
    print(f"previews:   {previews}")
    print(f"checkpoint: {result.checkpoint_path}")
    print(f"glb:        {result.glb_path}")
    return 0

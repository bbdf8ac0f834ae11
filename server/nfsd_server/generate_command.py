"""`nfsd generate "PROMPT"`: train with a tqdm progress bar, write previews, a checkpoint and the GLB."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nfsd_contract as contract
from nfsd_contract import FIELDS, JobSpec, info, request_default, resolve_spec, value_type
from nfsd_server.devices import check_device
from nfsd_server.errors import UsageError
from nfsd_server.edit import edit_defaults
from nfsd_server.pipeline import Callbacks, preview_saver, run_generation

# The command line's own defaults: a run on a CPU in minutes, and a seed you can repeat. The add-on's are the
# contract's (the standard preset, a random seed).
CLI_DEFAULTS = {"preset": "draft", "seed": 0}
# Where no prior and no model are named, the command runs offline on the bundled micro Stable Diffusion (a real
# diffusion model that knows a small world; README "The micro model"). A named model means Stable Diffusion.
CLI_PRIOR, CLI_MODEL = "stable-diffusion", "micro"
assert CLI_MODEL in contract.BUNDLED_MODEL_LABELS, "the CLI's offline default must ship with the backend"


def add_arguments(parser: argparse.ArgumentParser, edit: bool = False) -> None:
    """The prompt, one option per job field (derived from the contract's field list), and the run's own.
    ``edit``: `nfsd edit`'s (its source is its first argument; the preset is the source's unless given)."""
    for spec_field in FIELDS:
        if edit and spec_field.name == "edit_of":
            continue
        options = _field_options(spec_field)
        if edit and spec_field.name == "preset":
            options["default"], options["help"] = None, options["help"].split(" (default:")[0] + " (default: the source's)"
        parser.add_argument(*_field_flags(spec_field), **options)
    parser.add_argument("--device", default=None, help="cuda, mps, cpu (default: cuda when available)")
    out_help = "output folder (default: the source's folder + '-edit', numbered if taken)" if edit \
        else "output folder (default: ./out)"
    parser.add_argument("--out", type=Path, default=None if edit else Path("out"), help=out_help)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")


def _field_flags(spec_field) -> list[str]:
    return [spec_field.name] if spec_field.name == "prompt" else ["--" + spec_field.name.replace("_", "-")]


def _field_options(spec_field) -> dict:
    field_info, kind = info(spec_field), value_type(spec_field)
    # The contract's help speaks HTTP ("null → the server's default"); on the command line a flag is just left out.
    help_text = field_info.help.replace("%", "%%").replace("null → ", "if left out: ")
    if spec_field.name == "prompt":
        return {"help": help_text}
    default = CLI_DEFAULTS.get(spec_field.name, request_default(spec_field))
    if spec_field.name in CLI_DEFAULTS:  # the command line's own default replaces "if left out: …"
        help_text = help_text.split("; if left out:")[0]
    if kind is bool:  # --flag alone is on; --flag on|off says it outright (for a default that is on)
        return {"nargs": "?", "const": True, "default": default, "type": _on_off, "metavar": "on|off",
                "help": f"{help_text} (default: {'on' if default else 'off'})"}
    options = {"default": default, "type": Path if spec_field.name in ("init_mesh", "edit_of") else kind,
               "help": help_text}
    if field_info.choices:
        options["choices"] = field_info.choices
    if default is not None:
        options["help"] += f" (default: {default})"
    if spec_field.name == "edit_of":
        options["metavar"] = "CHECKPOINT"
    if spec_field.name == "init_mesh":
        options["metavar"] = "FILE"
        options["help"] += f" ({', '.join(contract.INIT_MESH_FORMATS)}; OBJ/PLY +Z up, GLB +Y up)"
    if spec_field.name == "prior":
        options["help"] = options["help"].split("; if left out:")[0] + f"; if left out: {CLI_PRIOR}"
    if spec_field.name == "model":
        options["help"] = options["help"].replace("the server's default", f"{CLI_MODEL}, bundled and offline")
    return options


def _on_off(text: str) -> bool:
    if text.lower() not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text.lower() == "on"


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    """The one validation of the job; its message names the field, shown here as the flag. An edit inherits
    what its source was made with where the flags say nothing (``edit.edit_defaults``)."""
    request = {spec_field.name: getattr(args, spec_field.name) for spec_field in FIELDS}
    if request["edit_of"] is not None:
        request = edit_defaults(edit_source(request["edit_of"]), request)
    try:
        return resolve_spec(**request, default_prior=CLI_PRIOR, default_model=CLI_MODEL)
    except ValueError as error:
        message = str(error)
        for spec_field in FIELDS:
            if spec_field.name != "prompt" and message.startswith(spec_field.name + " "):
                message = _field_flags(spec_field)[0] + message[len(spec_field.name):]
                break
        raise UsageError(message) from error


def edit_source(path) -> JobSpec:
    """What made the edit's source, checked before any model loads."""
    from nfsd_server.checkpoints import CheckpointError
    from nfsd_server.edit import EditError, read_edit_spec

    try:
        return read_edit_spec(path)
    except (CheckpointError, EditError) as error:
        raise UsageError(f"the asset to edit: {error}") from None


def check_init_mesh_file(path: str) -> None:
    """Read and check the mesh before any model loads, so a bad file costs a second, not a training run."""
    from nfsd_server.scene.mesh_files import MeshError, load_mesh

    try:
        load_mesh(path)
    except MeshError as error:
        raise UsageError(f"--init-mesh: {error}") from error


def edit_out_dir(source_checkpoint: Path) -> Path:
    """``<source folder>-edit``, or ``-edit-2``, ``-edit-3``… where that one exists already."""
    folder = source_checkpoint.resolve().parent
    for number in range(1, 1000):
        candidate = folder.with_name(folder.name + "-edit" + (f"-{number}" if number > 1 else ""))
        if not candidate.exists():
            return candidate
    raise UsageError(f"no free folder beside {str(folder)!r} for the edit; pass --out")


def writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--out {str(path)!r} cannot be created: {error.strerror}") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--out {str(path)!r} is not writable; pick a folder you can write to")
    return path


def check_resumable(out_dir: Path, spec: JobSpec) -> None:
    """Before any model loads: a --resume checkpoint must be ours and from these settings (UsageError if not)."""
    from nfsd_server.checkpoints import LEGACY_NAME, CheckpointError, read_checkpoint_info
    from nfsd_server.resume import check_checkpoint_matches
    from nfsd_server.train import CHECKPOINT_NAME

    path = out_dir / CHECKPOINT_NAME
    try:
        if path.exists():
            check_checkpoint_matches(read_checkpoint_info(path), spec, path)
        elif (out_dir / LEGACY_NAME).exists():
            read_checkpoint_info(out_dir / LEGACY_NAME)  # raises, naming the old format; never unpickled
    except CheckpointError as error:
        raise UsageError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from nfsd_server.checkpoints import CheckpointError
    from nfsd_server.guidance.registry import load_prior
    from nfsd_server.model_source import check_model
    from nfsd_server.train import CHECKPOINT_NAME

    spec = spec_from_args(args)
    try:
        device = check_device(args.device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if spec.prior == "stable-diffusion" and spec.model is not None:
        try:
            check_model(spec.model)  # a missing folder or an unreachable hub id, before the slow load
        except ValueError as error:
            raise UsageError(str(error)) from None
    if spec.init_mesh:
        check_init_mesh_file(spec.init_mesh)
    # An edit's own folder beside its source is made once the prompt is known good (no empty folder is left).
    out_dir = writable_dir(args.out) if args.out is not None else edit_out_dir(Path(spec.edit_of))
    if spec.edit_of and (out_dir / CHECKPOINT_NAME).resolve() == Path(spec.edit_of).resolve():
        raise UsageError(f"--out {str(out_dir)!r} holds the source being edited; an edit never overwrites its "
                         "source: pick another --out")
    if args.resume:
        check_resumable(out_dir, spec)
    previews = out_dir / "previews"
    try:
        prior = load_prior(spec.prior, spec.model, device, dtype=spec.dtype, encoder=spec.encoder)
        prior.prepare_prompts(spec.prompt, spec.negative_prompt)  # fail on a bad prompt before training
        if spec.source_prompt is not None:
            prior.prepare_prompts(spec.source_prompt, spec.negative_prompt)
    except ValueError as error:
        raise UsageError(str(error)) from error
    out_dir = writable_dir(out_dir)

    bar = tqdm(total=spec.steps, desc="training", unit="step")

    def on_progress(step: int, total: int, loss: float, eta_s: float | None) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()

    def on_stage(stage: str) -> None:
        if stage == "compiling":
            print("compiling the model…", flush=True)
        if stage == "exporting":
            bar.close()
            print("exporting mesh…", flush=True)

    try:
        result = run_generation(
            spec, prior, out_dir, Callbacks(on_progress, preview_saver(previews), on_stage), resume=args.resume
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

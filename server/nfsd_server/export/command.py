"""`nfsd export CHECKPOINT --out x.glb`: re-export a GLB from a training checkpoint, without retraining."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from nfsd_server.checkpoints import CheckpointError
from nfsd_server.errors import UsageError
from nfsd_server.export.glb import ExportSettings, export_glb
from nfsd_server.export.grid import EmptyFieldError
from nfsd_server.pipeline import export_from_init_mesh
from nfsd_server.scene.mesh_files import mesh_sha256
from nfsd_server.resume import CheckpointMesh, checkpoint_init_mesh, load_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ExportSettings()
    parser.add_argument("checkpoint", type=Path, help="checkpoint.safetensors written by `nfsd generate`")
    parser.add_argument("--out", type=Path, required=True, help="GLB to write (its folder must exist)")
    parser.add_argument("--poly-budget", type=int, default=defaults.poly_budget, help="at most this many faces")
    parser.add_argument("--texture-size", type=int, default=defaults.texture_size, help="512, 1024 or 2048")
    parser.add_argument(
        "--grid-resolution", type=int, default=defaults.grid_resolution, help="marching-cubes grid, 32..1024"
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="surface density (default: the checkpoint's own surface_density)"
    )
    parser.add_argument("--height", type=float, default=defaults.height, help="object height in Blender units")


def run(args: argparse.Namespace) -> int:
    """Validate everything before loading anything, export, print the written path.

    An empty field is reported like a bad argument (exit 2): its fix is a lower --threshold.
    """
    try:
        settings = ExportSettings(
            grid_resolution=args.grid_resolution,
            threshold=args.threshold,
            poly_budget=args.poly_budget,
            texture_size=args.texture_size,
            height=args.height,
        )
    except ValueError as error:
        raise UsageError(str(error)) from error
    for name, value in (("--height", args.height), ("--threshold", args.threshold)):
        if value is not None and not math.isfinite(value):  # inf scales every vertex to NaN
            raise UsageError(f"{name} must be a finite number, got {value}")
    if not args.checkpoint.is_file():
        raise UsageError(f"checkpoint {str(args.checkpoint)!r} does not exist; pass the checkpoint.safetensors of a run")
    out_path = args.out
    if out_path.is_dir():
        raise UsageError(f"--out {str(out_path)!r} is a folder; name the file to write, e.g. {str(out_path / 'model.glb')!r}")
    folder = out_path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {str(out_path)!r}: folder {str(folder)!r} is missing or not writable")

    try:
        field, metadata = load_checkpoint(args.checkpoint)
        init_mesh = checkpoint_init_mesh(args.checkpoint)
    except CheckpointError as error:  # never unpickled: a foreign or old file is a message, not code
        raise UsageError(str(error)) from None
    if init_mesh is not None:
        check_init_mesh_is_there(args.checkpoint, init_mesh)
    try:
        if init_mesh is not None:  # as `generate` does: on the artist's mesh, or where it was
            report = export_from_init_mesh(init_mesh.path, init_mesh.keep_geometry, field, metadata, out_path, settings)
        else:
            report = export_glb(field, out_path, settings, metadata)
    except EmptyFieldError as error:
        raise UsageError(str(error)) from error
    print(report.path)
    return 0



def check_init_mesh_is_there(checkpoint: Path, init_mesh: CheckpointMesh) -> None:
    """UsageError naming the mesh when the one the checkpoint was trained on is gone or has changed."""
    what = "bakes onto it" if init_mesh.keep_geometry else "places the object where it was"
    if not init_mesh.path.is_file():
        raise UsageError(
            f"checkpoint {str(checkpoint)!r} was trained on the init mesh {str(init_mesh.path)!r}, which is no longer "
            f"there; the export {what}: put the mesh back at that path"
        )
    if init_mesh.sha256 is not None and mesh_sha256(init_mesh.path) != init_mesh.sha256:
        raise UsageError(
            f"the init mesh {str(init_mesh.path)!r} has changed since checkpoint {str(checkpoint)!r} was trained on "
            f"it; the export {what}: restore the mesh the run used"
        )

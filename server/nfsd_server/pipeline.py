"""One generation job end to end: spec + prior → trained NeRF → GLB.

``run_job`` is what every runner calls — the CLI, the server's job runner, the Ray worker and ``nfsd batch``:
it takes the job's prior from the runner's warm cache, honours a cancel that came during the load, trains and
exports. ``InProcessExecutor`` runs it here for the server and for ``nfsd batch`` without a cluster (a Ray
cluster is the other executor, ``farm.ray_jobs``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nfsd_contract import JobSpec
from nfsd_server.guidance.prior import Prior
from nfsd_server.guidance.warm import PriorKey, WarmPriors
from nfsd_server.job_files import JobFiles
from nfsd_server.presets import PRESETS
from nfsd_server.train import Callbacks, GenerationCancelled, TrainConfig, train

__all__ = [
    "Callbacks", "GenerationCancelled", "GenerationResult", "InProcessExecutor", "JobFiles", "png_bytes",
    "preview_saver", "run_generation", "run_job",
]


@dataclass
class GenerationResult:
    glb_path: Path
    checkpoint_path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


def run_job(
    spec: JobSpec,
    priors: WarmPriors,
    folder: Path,
    callbacks: Callbacks,
    *,
    device: str,
    resume: bool = False,
    files: JobFiles = JobFiles(),
    generate: Callable[..., GenerationResult] | None = None,
) -> GenerationResult:
    """Load (or reuse) the job's prior on ``device``, then train and export into ``folder``.

    Stages reported: "loading", then the trainer's "compiling" (a compiled prior's first job), "training" and "exporting". Raises GenerationCancelled when
    ``callbacks.should_cancel`` says so, at the latest at the next step boundary. ``generate`` (default
    ``run_generation``) is the train-and-export step; tests swap in a fake with its signature.
    """
    if callbacks.on_stage:
        callbacks.on_stage("loading")
    prior = priors.get(PriorKey.for_spec(spec, device))
    if callbacks.should_cancel and callbacks.should_cancel():
        raise GenerationCancelled("cancelled while loading the model")
    generate = generate or run_generation
    return generate(spec, prior, folder, callbacks, resume=resume, files=files)


class InProcessExecutor:
    """Runs one job at a time in this process, on ``device``, the last priors kept warm in ``priors`` between
    jobs; ``generate`` (default ``run_generation``) is the train-and-export step."""

    slots = 1

    def __init__(self, device: str, priors: WarmPriors, generate: Callable[..., GenerationResult] | None = None):
        self.device, self.priors, self._generate = device, priors, generate

    def run(self, spec: JobSpec, out_dir: Path, callbacks: Callbacks, *, resume: bool = False,
            files: JobFiles = JobFiles()) -> GenerationResult:
        return run_job(spec, self.priors, out_dir, callbacks, device=self.device, resume=resume, files=files,
                       generate=self._generate)

    def close(self) -> None:
        self.priors.clear()


def run_generation(
    spec: JobSpec,
    prior: Prior,
    out_dir: Path,
    callbacks: Callbacks | None = None,
    resume: bool = False,
    config: TrainConfig | None = None,
    files: JobFiles = JobFiles(),
) -> GenerationResult:
    """Train, then export ``out_dir/<slug>.glb``. Raises GenerationCancelled if cancelled before the export.

    ``files``: what the spec's init mesh and edit source name on this machine (``JobFiles``)."""
    from nfsd_server.export import ExportSettings, export_glb, slugify

    callbacks = callbacks or Callbacks()
    out_dir = Path(out_dir)
    result = train(spec, prior, out_dir, callbacks, resume=resume, config=config, files=files)
    if callbacks.should_cancel and callbacks.should_cancel():
        raise GenerationCancelled("cancelled before export")
    if callbacks.on_stage:
        callbacks.on_stage("exporting")
    export_settings = ExportSettings(
        grid_resolution=PRESETS[spec.preset].export_grid_resolution,
        poly_budget=spec.poly_budget,
        texture_size=spec.texture_size,
    )
    out_path = out_dir / f"{slugify(spec.prompt)}.glb"
    if spec.init_mesh:
        mesh_file = files.mesh_file(spec)
        report = export_from_init_mesh(
            mesh_file, spec.keep_geometry, result.field, result.metadata, out_path, export_settings
        )
    else:
        report = export_glb(result.field, out_path, export_settings, result.metadata)
    metadata = {**result.metadata, "faces": report.n_faces, "vertices": report.n_vertices}
    return GenerationResult(glb_path=report.path, checkpoint_path=result.checkpoint_path, metadata=metadata)


def export_from_init_mesh(
    init_mesh: Path, keep_geometry: bool, field, metadata: dict[str, Any], out_path: Path, export_settings
):
    """Texture mode: bake onto the artist's mesh. Shape mode: marching cubes, placed where the mesh was.
    (``generate`` and ``nfsd export`` of an init-mesh checkpoint both come here.)"""
    from nfsd_server.export import export_glb
    from nfsd_server.export.onto_mesh import export_onto_mesh
    from nfsd_server.scene.mesh_files import load_mesh
    from nfsd_server.scene.mesh_volume import Normalization

    mesh = load_mesh(init_mesh)
    normalization = Normalization.of_mesh(mesh)
    metadata = {**metadata, "mode": "texture" if keep_geometry else "shape"}
    if keep_geometry:
        return export_onto_mesh(field, mesh, normalization, out_path, export_settings.texture_size, metadata)
    return export_glb(field, out_path, export_settings, metadata, to_world=normalization.from_box)


def png_bytes(rgb: np.ndarray) -> bytes:
    """A preview, rgb (H, W, 3) uint8, as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def preview_saver(folder: Path) -> Callable[[int, np.ndarray], None]:
    """An ``on_preview`` that keeps every preview as ``folder/step_NNNNNN.png`` (the CLI's and batch's; the
    server keeps only the latest)."""
    folder.mkdir(parents=True, exist_ok=True)

    def save(step: int, rgb: np.ndarray) -> None:
        (folder / f"step_{step:06d}.png").write_bytes(png_bytes(rgb))

    return save

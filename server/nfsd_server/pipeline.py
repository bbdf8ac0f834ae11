"""One generation job end to end: settings + prior → trained NeRF → GLB. Shared by the CLI and the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfsd_server.guidance.prior import Prior
from nfsd_server.presets import PRESETS
from nfsd_server.settings import GenerationSettings
from nfsd_server.train import Callbacks, GenerationCancelled, TrainConfig, train

__all__ = ["Callbacks", "GenerationCancelled", "GenerationResult", "run_generation"]


@dataclass
class GenerationResult:
    glb_path: Path
    checkpoint_path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


def run_generation(
    settings: GenerationSettings,
    prior: Prior,
    out_dir: Path,
    callbacks: Callbacks | None = None,
    resume: bool = False,
    config: TrainConfig | None = None,
) -> GenerationResult:
    """Train, then export ``out_dir/<slug>.glb``. Raises GenerationCancelled if cancelled before the export."""
    from nfsd_server.export import ExportSettings, export_glb, slugify

    callbacks = callbacks or Callbacks()
    out_dir = Path(out_dir)
    result = train(settings, prior, out_dir, callbacks, resume=resume, config=config)
    if callbacks.should_cancel and callbacks.should_cancel():
        raise GenerationCancelled("cancelled before export")
    if callbacks.on_stage:
        callbacks.on_stage("exporting")
    export_settings = ExportSettings(
        grid_resolution=PRESETS[settings.preset].export_grid_resolution,
        poly_budget=settings.poly_budget,
        texture_size=settings.texture_size,
    )
    report = export_glb(result.field, out_dir / f"{slugify(settings.prompt)}.glb", export_settings, result.metadata)
    metadata = {**result.metadata, "faces": report.n_faces, "vertices": report.n_vertices}
    return GenerationResult(glb_path=report.path, checkpoint_path=result.checkpoint_path, metadata=metadata)

"""One generation job end to end: settings + prior → trained NeRF → GLB. Shared by the CLI and the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfsd_server import NFSD_NEGATIVE_PROMPT
from nfsd_server.guidance.prior import Prior
from nfsd_server.train import (
    DEFAULT_GUIDANCE_SCALE,
    PRESETS,
    Callbacks,
    GenerationCancelled,
    TrainConfig,
    job_metadata,
    train,
)

__all__ = [
    "Callbacks", "GenerationCancelled", "GenerationResult", "GenerationSettings", "run_generation",
    "METHODS", "DEFAULT_GUIDANCE_SCALE", "PRESET_NAMES", "TEXTURE_SIZES",
]

METHODS = tuple(DEFAULT_GUIDANCE_SCALE)
PRESET_NAMES = tuple(PRESETS)
TEXTURE_SIZES = (512, 1024, 2048)


@dataclass(frozen=True)
class GenerationSettings:
    """What the artist asked for. ``None`` means "the method's / preset's default"."""

    prompt: str
    negative_prompt: str = NFSD_NEGATIVE_PROMPT
    method: str = "nfsd"
    guidance_scale: float | None = None
    seed: int = 0
    steps: int | None = None
    preset: str = "draft"
    poly_budget: int = 20_000
    texture_size: int = 1024
    prior: str = "stable-diffusion"
    model: str | None = None

    def resolved_guidance_scale(self) -> float:
        return DEFAULT_GUIDANCE_SCALE[self.method] if self.guidance_scale is None else self.guidance_scale

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            method=self.method,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            preset=self.preset,
            steps=self.steps,
        )


@dataclass
class GenerationResult:
    glb_path: Path
    checkpoint_path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


def run_generation(
    settings: GenerationSettings, prior: Prior, out_dir: Path, callbacks: Callbacks | None = None, resume: bool = False
) -> GenerationResult:
    """Train, then export ``out_dir/<slug>.glb``. Raises GenerationCancelled if cancelled before the export."""
    from nfsd_server.export import ExportSettings, export_glb, slugify

    callbacks = callbacks or Callbacks()
    out_dir = Path(out_dir)
    config = settings.train_config()
    metadata = job_metadata(config, settings.prior, settings.model)
    result = train(config, prior, out_dir, callbacks, resume=resume, metadata=metadata)
    if callbacks.should_cancel and callbacks.should_cancel():
        raise GenerationCancelled("cancelled before export")
    if callbacks.on_stage:
        callbacks.on_stage("exporting")
    export_settings = ExportSettings(
        grid_resolution=PRESETS[settings.preset].export_grid_resolution,
        poly_budget=settings.poly_budget,
        texture_size=settings.texture_size,
    )
    report = export_glb(result.field, out_dir / f"{slugify(settings.prompt)}.glb", export_settings, metadata)
    metadata = {**metadata, "faces": report.n_faces, "vertices": report.n_vertices}
    return GenerationResult(glb_path=report.path, checkpoint_path=result.checkpoint_path, metadata=metadata)

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
    out_path = out_dir / f"{slugify(settings.prompt)}.glb"
    if settings.init_mesh:
        report = export_from_init_mesh(
            Path(settings.init_mesh), settings.keep_geometry, result.field, result.metadata, out_path, export_settings
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
    from nfsd_server.scene.init_mesh import Normalization, load_mesh

    mesh = load_mesh(init_mesh)
    normalization = Normalization.of_mesh(mesh)
    metadata = {**metadata, "mode": "texture" if keep_geometry else "shape"}
    if keep_geometry:
        return export_onto_mesh(field, mesh, normalization, out_path, export_settings.texture_size, metadata)
    return export_glb(field, out_path, export_settings, metadata, to_world=normalization.from_box)

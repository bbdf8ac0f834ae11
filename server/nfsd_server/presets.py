"""Scale presets an artist picks by name: draft (CPU minutes), standard (the GPU default), high."""

from __future__ import annotations

from dataclasses import dataclass, replace

from nfsd_contract import PRESETS as PRESET_NAMES
from nfsd_server.scene.encoding import HashGridConfig


@dataclass(frozen=True)
class Preset:
    """What a preset sets below the job's fields (its default steps and encoder are the contract's)."""

    batch_size: int
    resolution_schedule: tuple[tuple[float, int], ...]  # (fraction of steps, rendered side in pixels)
    grid: HashGridConfig
    hidden_dim: int
    n_samples: int
    export_grid_resolution: int
    preview_size: int
    # Latent-first schedule: the first ``latent_fraction`` of the steps render the prior's latent channels at
    # its latent side (no encoder in the step); the rest render RGB and encode. 0 = RGB throughout. Chosen by
    # measurement (benchmarks/step_cost.py at SD 2.1-base size on CPU, README "Latent-first schedule"): a latent
    # step costs 1.04–1.08× its UNet rows and an RGB step with TAESD 1.20–1.26×, so 0.75 puts a standard run at
    # 1.09–1.12× its UNet time.
    latent_fraction: float = 0.75

    def __post_init__(self) -> None:
        if not 0.0 <= self.latent_fraction <= 1.0:
            raise ValueError(f"latent_fraction must be in [0, 1], got {self.latent_fraction}")

    def fitted_to(self, image_side: int, latent_side: int | None) -> Preset:
        """This preset for a prior that judges ``image_side`` px images through a ``latent_side`` latent (None:
        no latent space), read from the model's config, never its name. RGB renders stop at ``image_side`` (the
        prior resizes anything larger down to it: pixels nobody judges), and the latent-first phase is dropped
        where a latent render would be coarser than the RGB render it replaces: at 8 × 8 the field cannot learn a
        silhouette (a 32 px micro model's ball: IoU 0.66–0.70 latent-first, 0.94–0.95 RGB only;
        benchmarks/micro_3d.py). SD 2.1-base (64 latent) keeps every preset as it is."""
        schedule = tuple((fraction, min(side, image_side)) for fraction, side in self.resolution_schedule)
        coarse_latent = latent_side is None or latent_side < schedule[0][1]
        return replace(self, resolution_schedule=schedule, latent_fraction=0.0 if coarse_latent else self.latent_fraction)


PRESETS = {
    "draft": Preset(
        batch_size=1, resolution_schedule=((0.0, 32),),
        grid=HashGridConfig(n_levels=8, log2_table_size=14, base_resolution=16, max_resolution=256),
        hidden_dim=32, n_samples=32, export_grid_resolution=128, preview_size=64,
    ),
    "standard": Preset(
        batch_size=1, resolution_schedule=((0.0, 64), (0.5, 128)),
        grid=HashGridConfig(n_levels=16, log2_table_size=19, base_resolution=16, max_resolution=2048),
        hidden_dim=64, n_samples=96, export_grid_resolution=256, preview_size=128,
    ),
    "high": Preset(
        batch_size=1, resolution_schedule=((0.0, 64), (0.3, 128), (0.6, 256)),
        grid=HashGridConfig(n_levels=16, log2_table_size=19, base_resolution=16, max_resolution=4096),
        hidden_dim=64, n_samples=128, export_grid_resolution=256, preview_size=256,
        latent_fraction=0.5,  # quality first: half the run refines RGB renders through the exact VAE
    ),
}
assert tuple(PRESETS) == PRESET_NAMES, "the engine's presets and the contract's names must be the same"

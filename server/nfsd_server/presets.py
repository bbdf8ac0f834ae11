"""Scale presets an artist picks by name: draft (CPU minutes), standard (the GPU default), high."""

from __future__ import annotations

from dataclasses import dataclass

from nfsd_blender.contract import PRESETS as PRESET_NAMES
from nfsd_server.scene.encoding import HashGridConfig


@dataclass(frozen=True)
class Preset:
    steps: int
    batch_size: int
    resolution_schedule: tuple[tuple[float, int], ...]  # (fraction of steps, rendered side in pixels)
    grid: HashGridConfig
    hidden_dim: int
    n_samples: int
    export_grid_resolution: int
    preview_size: int
    # Latent-first schedule: the first ``latent_fraction`` of the steps render the prior's latent channels at
    # its latent side (no encoder in the step); the rest render RGB and encode. 0 = RGB throughout.
    latent_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.latent_fraction <= 1.0:
            raise ValueError(f"latent_fraction must be in [0, 1], got {self.latent_fraction}")


PRESETS = {
    "draft": Preset(
        steps=400, batch_size=1, resolution_schedule=((0.0, 32),),
        grid=HashGridConfig(n_levels=8, log2_table_size=14, base_resolution=16, max_resolution=256),
        hidden_dim=32, n_samples=32, export_grid_resolution=128, preview_size=64,
    ),
    "standard": Preset(
        steps=5000, batch_size=1, resolution_schedule=((0.0, 64), (0.5, 128)),
        grid=HashGridConfig(n_levels=16, log2_table_size=19, base_resolution=16, max_resolution=2048),
        hidden_dim=64, n_samples=96, export_grid_resolution=256, preview_size=128,
    ),
    "high": Preset(
        steps=10000, batch_size=1, resolution_schedule=((0.0, 64), (0.3, 128), (0.6, 256)),
        grid=HashGridConfig(n_levels=16, log2_table_size=19, base_resolution=16, max_resolution=4096),
        hidden_dim=64, n_samples=128, export_grid_resolution=256, preview_size=256,
    ),
}
assert tuple(PRESETS) == PRESET_NAMES, "the engine's presets and the contract's names must be the same"

"""Scale presets an artist picks by name: draft (CPU minutes), standard (the GPU default), high."""

from __future__ import annotations

from dataclasses import dataclass

from nfsd_blender.contract import ENCODERS, PRESET_ENCODERS
from nfsd_blender.contract import PRESETS as PRESET_NAMES
from nfsd_server.scene.encoding import HashGridConfig

CONCRETE_ENCODERS = tuple(name for name in ENCODERS if name != "auto")  # what a resolved job runs


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
    # its latent side (no encoder in the step); the rest render RGB and encode. 0 = RGB throughout. Chosen by
    # measurement (benchmarks/step_cost.py, README "Latent-first schedule"): a latent step costs ~1.03× its UNet
    # rows, an RGB step with TAESD ~1.4×, so 0.75 keeps a standard run within 1.15× its UNet time.
    latent_fraction: float = 0.75
    # The RGB phase's encoder when a job asks for "auto": "taesd" where cost matters most, "vae" for fidelity.
    encoder: str = "vae"

    def __post_init__(self) -> None:
        if not 0.0 <= self.latent_fraction <= 1.0:
            raise ValueError(f"latent_fraction must be in [0, 1], got {self.latent_fraction}")
        if self.encoder not in CONCRETE_ENCODERS:
            raise ValueError(f"encoder must be one of {CONCRETE_ENCODERS}, got {self.encoder!r}")


PRESETS = {
    "draft": Preset(
        steps=400, batch_size=1, resolution_schedule=((0.0, 32),),
        grid=HashGridConfig(n_levels=8, log2_table_size=14, base_resolution=16, max_resolution=256),
        hidden_dim=32, n_samples=32, export_grid_resolution=128, preview_size=64, encoder=PRESET_ENCODERS["draft"],
    ),
    "standard": Preset(
        steps=5000, batch_size=1, resolution_schedule=((0.0, 64), (0.5, 128)),
        grid=HashGridConfig(n_levels=16, log2_table_size=19, base_resolution=16, max_resolution=2048),
        hidden_dim=64, n_samples=96, export_grid_resolution=256, preview_size=128, encoder=PRESET_ENCODERS["standard"],
    ),
    "high": Preset(
        steps=10000, batch_size=1, resolution_schedule=((0.0, 64), (0.3, 128), (0.6, 256)),
        grid=HashGridConfig(n_levels=16, log2_table_size=19, base_resolution=16, max_resolution=4096),
        hidden_dim=64, n_samples=128, export_grid_resolution=256, preview_size=256, encoder=PRESET_ENCODERS["high"],
        latent_fraction=0.5,  # quality first: half the run refines RGB renders through the exact VAE
    ),
}
assert tuple(PRESETS) == PRESET_NAMES, "the engine's presets and the contract's names must be the same"

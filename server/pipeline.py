"""One generation job end to end: prior + settings → trained NeRF → GLB. Used by the CLI and the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nfsd_server import NFSD_NEGATIVE_PROMPT

METHODS = ("nfsd", "sds")
DEFAULT_GUIDANCE_SCALE = {"nfsd": 7.5, "sds": 100.0}
PRESET_NAMES = ("draft", "standard", "high")
TEXTURE_SIZES = (512, 1024, 2048)


class GenerationCancelled(Exception):
    """Raised by ``run_generation`` when ``Callbacks.should_cancel`` returned True; nothing was exported."""


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


@dataclass
class Callbacks:
    """Hooks a caller passes in; every one is optional. Called from the thread running the job."""

    on_progress: Callable[[int, int, float, float | None], None] | None = None  # step, total, loss, eta_s
    on_preview: Callable[[int, np.ndarray], None] | None = None  # step, (H, W, 3) uint8 RGB
    on_stage: Callable[[str], None] | None = None  # "training" | "exporting"
    should_cancel: Callable[[], bool] | None = None


@dataclass
class GenerationResult:
    glb_path: Path
    checkpoint_path: Path
    metadata: dict[str, Any] = field(default_factory=dict)

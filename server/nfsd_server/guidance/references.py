"""Reference objects for the analytic prior, rendered exactly by sphere tracing (``evaluation.py`` judges NeRFs by them).

Each reference is a signed distance function (world units, +Z up, centred at the origin) with one flat
colour, shown on a white background. Renders are unlit: what they judge is silhouette and albedo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from nfsd_server.scene.cameras import Cameras, camera_rays

BACKGROUND = (1.0, 1.0, 1.0)


def sphere_sdf(points: Tensor, radius: float = 0.55) -> Tensor:
    return points.norm(dim=-1) - radius


def box_sdf(points: Tensor, half_size: float = 0.42) -> Tensor:
    q = points.abs() - half_size
    return q.clamp_min(0.0).norm(dim=-1) + q.amax(-1).clamp_max(0.0)


def torus_sdf(points: Tensor, major: float = 0.45, minor: float = 0.2) -> Tensor:
    """A ring lying in the XY plane (the ground plane in Blender)."""
    ring = torch.stack([points[..., :2].norm(dim=-1) - major, points[..., 2]], dim=-1)
    return ring.norm(dim=-1) - minor


@dataclass(frozen=True)
class Reference:
    prompt: str
    sdf: Callable[[Tensor], Tensor]
    color: tuple[float, float, float]  # albedo in [0, 1]


REFERENCES: dict[str, Reference] = {
    ref.prompt: ref
    for ref in (
        Reference("a red ball", sphere_sdf, (0.85, 0.10, 0.10)),
        Reference("a blue cube", box_sdf, (0.10, 0.20, 0.85)),
        Reference("a green torus", torus_sdf, (0.10, 0.70, 0.20)),
    )
}


def normalize_prompt(prompt: str) -> str:
    """Case, spacing and trailing punctuation do not change which reference a prompt names."""
    return " ".join(prompt.lower().split()).rstrip(".!?,;: ")


def reference_for(prompt: str) -> Reference:
    key = normalize_prompt(prompt)
    if key not in REFERENCES:
        known = ", ".join(repr(name) for name in REFERENCES)
        raise ValueError(
            f"the analytic prior does not know the prompt {prompt!r}; it knows {known}. "
            "Use one of those, or a real model with --prior stable-diffusion --model ID"
        )
    return REFERENCES[key]


@torch.no_grad()
def render_reference(reference: Reference, cameras: Cameras, size: int, supersample: int = 2) -> tuple[Tensor, Tensor]:
    """(images (B, 3, S, S) in [0, 1] on the white background, coverage (B, S, S) in [0, 1]).

    Sphere tracing to a 1e-3 hit; ``supersample``² rays per pixel anti-alias the silhouette.
    """
    side = size * supersample
    origins, directions = camera_rays(cameras, side, side)
    depth = torch.zeros(origins.shape[:-1], dtype=origins.dtype, device=origins.device)
    for _ in range(64):
        depth = depth + reference.sdf(origins + directions * depth[..., None]).clamp_min(0.0)
    hit = (reference.sdf(origins + directions * depth[..., None]) < 1e-3).to(origins.dtype)
    coverage = F.avg_pool2d(hit[:, None], supersample)[:, 0]
    color = torch.tensor(reference.color, dtype=origins.dtype, device=origins.device).view(1, 3, 1, 1)
    background = torch.tensor(BACKGROUND, dtype=origins.dtype, device=origins.device).view(1, 3, 1, 1)
    images = coverage[:, None] * color + (1 - coverage[:, None]) * background
    return images, coverage

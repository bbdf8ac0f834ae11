"""How a sample's colour is made from albedo, normal and light.

albedo: the texture only. diffuse: albedo · (ambient + (1 − ambient)·max(0, n·l)).
textureless: the same lighting on a white surface, so geometry has to explain shading on its own.
Colours are premultiplied by opacity (the renderer composites ``colour + (1 − opacity)·background``), so a
pixel the object does not cover shows the background whatever the light.
"""

from __future__ import annotations

import torch
from torch import Tensor

SHADINGS = ("albedo", "diffuse", "textureless")
# DreamFusion's (and threestudio's) ambient 0.1 + diffuse 0.9: a surface turned from the light is dark, so
# lit renders show the shape's relief clearly.
AMBIENT = 0.1


def shade(
    mode: str, albedo: Tensor, opacity: Tensor, normals: Tensor | None, light_dir: Tensor, ambient: float = AMBIENT
) -> Tensor:
    """Premultiplied albedo (..., 3) in [0, opacity]; opacity (..., 1) in [0, 1]; normals (..., 3) unit;
    light_dir broadcastable to (..., 3) → premultiplied rgb (..., 3) in [0, opacity]."""
    if mode == "albedo":
        return albedo
    if mode not in SHADINGS:
        raise ValueError(f"unknown shading {mode!r}; expected one of {SHADINGS}")
    if normals is None:
        raise ValueError(f"shading {mode!r} needs normals")
    lambert = (normals * light_dir).sum(-1, keepdim=True).clamp_min(0.0)
    light = ambient + (1.0 - ambient) * lambert
    return albedo * light if mode == "diffuse" else opacity * light.expand_as(albedo)


def sample_shading(generator: torch.Generator, albedo_only: bool, probabilities: tuple[float, float, float]) -> str:
    """Pick a shading for this step: albedo early in training, then by ``probabilities`` over SHADINGS."""
    if albedo_only:
        return "albedo"
    weights = torch.tensor(probabilities, dtype=torch.float32)
    return SHADINGS[int(torch.multinomial(weights, 1, generator=generator))]

"""Analytic fields with known surfaces and colours, for the export tests (duck-typed like NeRFField)."""

from __future__ import annotations

import math

import torch

SHARPNESS = 0.01  # density falls from 50 to 0 over a few hundredths: a crisp surface at density 25
PEAK = 50.0


def _shell(signed_inside: torch.Tensor) -> torch.Tensor:
    return PEAK * torch.sigmoid(signed_inside / SHARPNESS)


class SphereField:
    """Ball of ``radius`` at the origin, surface at density 25; albedo red grows with x, blue with z."""

    bound = 1.0
    surface_density = PEAK / 2

    def __init__(self, radius: float = 0.5):
        self.radius = radius

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return _shell(self.radius - points.norm(dim=-1))

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return gradient_albedo(points)

    def volume(self) -> float:
        return 4.0 / 3.0 * math.pi * self.radius**3

    def area(self) -> float:
        return 4.0 * math.pi * self.radius**2


def gradient_albedo(points: torch.Tensor) -> torch.Tensor:
    """(N, 3) in [0, 1]: red = (x + 1) / 2, green 0.3, blue = (z + 1) / 2 (world +Z up)."""
    x, z = points[:, 0], points[:, 2]
    return torch.stack([(x + 1) / 2, torch.full_like(x, 0.3), (z + 1) / 2], dim=-1).clamp(0, 1)


class TorusField:
    """Torus around world Z (major ``ring``, minor ``tube``) plus a tiny floater ball; constant albedo."""

    bound = 1.0
    surface_density = PEAK / 2
    colour = (0.8, 0.4, 0.1)
    floater_centre = (0.8, 0.8, 0.8)
    floater_radius = 0.05

    def __init__(self, ring: float = 0.5, tube: float = 0.2):
        self.ring, self.tube = ring, tube

    def density(self, points: torch.Tensor) -> torch.Tensor:
        radial = points[:, :2].norm(dim=-1) - self.ring
        torus = _shell(self.tube - torch.stack([radial, points[:, 2]], dim=-1).norm(dim=-1))
        floater = _shell(self.floater_radius - (points - torch.tensor(self.floater_centre)).norm(dim=-1))
        return torus + floater

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.colour).expand(len(points), 3)

    def volume(self) -> float:
        return 2.0 * math.pi**2 * self.ring * self.tube**2

    def area(self) -> float:
        return 4.0 * math.pi**2 * self.ring * self.tube


class EmptyField:
    """Density 1 everywhere: below any sensible surface threshold."""

    bound = 1.0
    surface_density = 5.0

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(points))

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(points), 3)


class LumpyField:
    """A bumpy ball (radius 0.6 ± 0.06) with a soft, NeRF-like shell; surface at density 5."""

    bound = 1.0
    surface_density = 5.0

    def density(self, points: torch.Tensor) -> torch.Tensor:
        x, y, z = points.unbind(dim=-1)
        bumps = 0.06 * torch.sin(7 * x) * torch.sin(6 * y) * torch.sin(5 * z + 1.0)
        return 20.0 * torch.nn.functional.softplus((0.6 + bumps - points.norm(dim=-1)) / 0.03)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return gradient_albedo(points)

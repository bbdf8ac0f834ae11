"""The NeRF: density + albedo over a hash grid, and the background it is composited on.

World frame +Z up; the scene lives in [-bound, bound]³.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfsd_server.scene.encoding import HashGridConfig, HashGridEncoding


@dataclass(frozen=True)
class FieldConfig:
    bound: float = 1.0
    grid: HashGridConfig = field(default_factory=HashGridConfig)
    hidden_dim: int = 64
    # Magic3D-style centre "blob": density bias = scale·(1 − r/radius) so training starts from a sphere.
    blob_density: float = 10.0
    blob_radius: float = 0.5
    # Density the engine calls "surface" (the marching-cubes threshold). Measured on NeRFs trained against
    # the analytic prior: volume IoU with the reference shape peaks near 2 (0.96) and drops at 5 (0.71).
    surface_density: float = 2.0
    # An artist's mesh as the start: its signed distance on a shape_resolution³ grid over the box
    # (0: no mesh). Its density bias has the blob's slope and replaces the blob in proportion to shape_weight;
    # frozen_shape makes the density the mesh's alone (texture mode: only colour trains).
    shape_resolution: int = 0
    shape_weight: float = 0.0
    frozen_shape: bool = False
    # Channels of the prior's latent space the field can render straight into (latent-first schedule); 0 = none.
    latent_channels: int = 0


# A frozen mesh's density: FROZEN_SHAPE_DENSITY · sigmoid(−sdf / FROZEN_SHAPE_SOFTNESS), a step at the surface
# as sharp as the SDF grid allows. The render weight then sits on the surface the bake reads albedo at: on a
# radius-0.5 sphere > 98% of it within ±0.01 and its expected depth within 0.001 (the two constants balance:
# the weight in front of the surface equals the depth behind it), and a one-voxel plate is opaque. A sample
# inside at the standard preset's spacing (~0.02) is opaque too (1 − exp(−500·0.02) ≈ 1).
FROZEN_SHAPE_DENSITY = 500.0
FROZEN_SHAPE_SOFTNESS = 0.002


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


class NeRFField(nn.Module):
    """points (N, 3) world → density (N,) ≥ 0 and albedo (N, 3) in [0, 1]."""

    def __init__(self, config: FieldConfig = FieldConfig()):
        super().__init__()
        self.config = config
        self.bound = config.bound
        self.surface_density = config.surface_density
        self.encoding = HashGridEncoding(config.grid)
        self.density_net = mlp(self.encoding.output_dim, config.hidden_dim, 1)
        self.albedo_net = mlp(self.encoding.output_dim, config.hidden_dim, 3)
        if config.latent_channels:
            # latent = A·albedo + b, A and b the prior's colour→latent map, fixed: the latent phase trains the
            # albedo and density themselves (previews and the RGB phase start from them). No free latent
            # channels: a residual head tried here painted shapes into the latent instead of carving them
            # (torus silhouette IoU 0.90 → 0.76 at latent_fraction 0.5, 0.64 at 0.75; benchmarks/quality.py).
            self.register_buffer("latent_weight", torch.zeros(config.latent_channels, 3))
            self.register_buffer("latent_bias", torch.zeros(config.latent_channels))
        if config.shape_resolution:
            self.register_buffer("shape_sdf", torch.zeros((config.shape_resolution,) * 3))

    def shape_distance(self, points: Tensor) -> Tensor:
        """(N,) signed distance to the init mesh (world units, < 0 inside), trilinear in ``shape_sdf`` (R, R, R)
        indexed [x, y, z]; grid_sample reads its last grid coordinate as the first volume axis, hence the flip."""
        grid = (points / self.bound).flip(-1).view(1, -1, 1, 1, 3).to(self.shape_sdf.dtype)
        volume = self.shape_sdf[None, None]
        return F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=True).view(-1)

    def _features(self, points: Tensor) -> Tensor:
        return self.encoding((points / self.bound + 1.0) * 0.5)

    def _density_from_features(self, points: Tensor, features: Tensor) -> Tensor:
        config = self.config
        if config.frozen_shape:
            return FROZEN_SHAPE_DENSITY * torch.sigmoid(-self.shape_distance(points) / FROZEN_SHAPE_SOFTNESS)
        radius = points.norm(dim=-1)
        bias = config.blob_density * (1.0 - radius / config.blob_radius)
        if config.shape_resolution:
            # The blob is −(blob_density / blob_radius) · sdf of its sphere; the mesh gets the same slope, offset
            # so that its surface is at the surface density (softplus⁻¹(σ_s) = log(exp(σ_s) − 1)).
            offset = math.log(math.expm1(config.surface_density))
            shape = offset - config.blob_density / config.blob_radius * self.shape_distance(points)
            bias = bias + config.shape_weight * (shape - bias)
        return F.softplus(self.density_net(features).squeeze(-1) + bias)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(density (N,), albedo (N, 3)) sharing one encoding pass."""
        features = self._features(points)
        return self._density_from_features(points, features), torch.sigmoid(self.albedo_net(features))

    def set_latent_map(self, weight: Tensor, bias: Tensor) -> None:
        """The prior's colour→latent map (``Prior.latent_color_map``): weight (C, 3), bias (C,)."""
        self.latent_weight.copy_(weight)
        self.latent_bias.copy_(bias)

    def latent_from(self, albedo: Tensor) -> Tensor:
        """Composited albedo (…, 3) in [0, 1] → latent (…, C). Affine, so mapping the composite equals
        compositing per-sample latents (the background's latent is its colour's)."""
        return albedo @ self.latent_weight.T + self.latent_bias

    def density(self, points: Tensor) -> Tensor:
        return self._density_from_features(points, self._features(points))

    def albedo(self, points: Tensor) -> Tensor:
        return torch.sigmoid(self.albedo_net(self._features(points)))

    def normals(self, points: Tensor, eps: float | None = None) -> Tensor:
        """(N, 3) unit outward normals −∇σ/|∇σ| by central differences (cheaper than double backward).

        A frozen shape's are its SDF's gradient (one voxel apart): its step density is flat off the surface."""
        if self.config.frozen_shape:
            eps = 2.0 * self.bound / (self.config.shape_resolution - 1)
            potential = lambda probes: -self.shape_distance(probes)  # noqa: E731  (increases inward, like σ)
        else:
            eps = eps if eps is not None else 2.0 * self.bound / self.config.grid.max_resolution * 4
            potential = self.density
        offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps
        probes = torch.cat([points[:, None, :] + offsets, points[:, None, :] - offsets], dim=1)  # (N, 6, 3)
        values = potential(probes.view(-1, 3)).view(-1, 2, 3)
        gradient = (values[:, 0] - values[:, 1]) / (2 * eps)
        return -F.normalize(gradient, dim=-1, eps=1e-8)


class SolidBackground(nn.Module):
    """A fixed colour, (3,) in [0, 1]."""

    def __init__(self, color: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        super().__init__()
        self.register_buffer("color", torch.tensor(color, dtype=torch.float32))

    def forward(self, directions: Tensor) -> Tensor:
        return self.color.expand(*directions.shape[:-1], 3)


class LearnedBackground(nn.Module):
    """A low-frequency colour of the view direction (few sinusoids, small MLP), so it cannot hold the object."""

    def __init__(self, n_frequencies: int = 2, hidden_dim: int = 32):
        super().__init__()
        self.register_buffer("frequencies", 2.0 ** torch.arange(n_frequencies, dtype=torch.float32) * torch.pi)
        self.net = mlp(3 + 6 * n_frequencies, hidden_dim, 3)

    def forward(self, directions: Tensor) -> Tensor:
        angles = directions[..., None] * self.frequencies  # (..., 3, F)
        encoded = torch.cat([directions, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)
        return torch.sigmoid(self.net(encoded))


BACKGROUNDS = {"solid": SolidBackground, "learned": LearnedBackground}

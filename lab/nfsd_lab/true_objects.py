"""Objects whose 3D truth is known: a signed distance function, a body colour and, on the front only, an optional
*feature* (a face patch, a label) of another colour, so how many sides of a result show the feature is measurable.

World frame as ``scene/cameras.py``: +Z up, the front faces -Y (azimuth 0 looks at it). An object may list a few
*instances* (colours and feature sizes, one geometry); the judge compares a result with the nearest. The micro
world (``micro/world.py``) builds its objects from these pieces; ``field_judge.py`` renders them exactly
(sphere-traced, supersampled, albedo on the white background) to judge a NeRF against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from nfsd_server.guidance.references import BACKGROUND
from nfsd_server.scene.cameras import Cameras, camera_rays

Color = tuple[float, float, float]


@dataclass(frozen=True)
class Instance:
    body: Color
    feature: Color
    feature_size: float  # ball: the patch's half-angle in degrees; cube: the label's half-size in world units


@dataclass(frozen=True)
class TrueObject:
    prompt: str
    sdf: Callable[[Tensor], Tensor]
    instances: tuple[Instance, ...]
    # (points (…, 3), normals (…, 3), size) → (…,) bool: where the feature is; None for a symmetric object.
    feature: Callable[[Tensor, Tensor, float], Tensor] | None = None


def face_patch(points: Tensor, normals: Tensor, half_angle_deg: float) -> Tensor:
    """A round patch on the front of a ball: normals within ``half_angle_deg`` of -Y."""
    return -normals[..., 1] > math.cos(math.radians(half_angle_deg))


def front_label(points: Tensor, normals: Tensor, half_size: float) -> Tensor:
    """A square label in the middle of a box's front (-Y) face."""
    return (-normals[..., 1] > 0.9) & (points[..., 0].abs() < half_size) & (points[..., 2].abs() < half_size)


@dataclass
class Surface:
    """Sphere-traced hits at the supersampled side: hit (B, H, W) bool, points and normals (B, H, W, 3)."""

    hit: Tensor
    points: Tensor
    normals: Tensor


@torch.no_grad()
def trace(sdf: Callable[[Tensor], Tensor], cameras: Cameras, side: int, iterations: int = 48) -> Surface:
    """Sphere tracing to a 1e-3 hit; normals by central differences of the SDF."""
    origins, directions = camera_rays(cameras, side, side)
    depth = torch.zeros(origins.shape[:-1], dtype=origins.dtype, device=origins.device)
    for _ in range(iterations):
        depth = depth + sdf(origins + directions * depth[..., None]).clamp_min(0.0)
    points = origins + directions * depth[..., None]
    hit = sdf(points) < 1e-3
    eps = 1e-3
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps
    gradient = torch.stack([sdf(points + o) - sdf(points - o) for o in offsets], dim=-1)
    return Surface(hit, points, F.normalize(gradient, dim=-1, eps=1e-8))


def albedo_image(obj: TrueObject, instance: Instance, surface: Surface) -> Tensor:
    """(B, H, W, 3) albedo at the hits (undefined where nothing was hit)."""
    body = torch.tensor(instance.body, dtype=surface.points.dtype, device=surface.points.device)
    if obj.feature is None:
        return body.expand(*surface.hit.shape, 3)
    feature = torch.tensor(instance.feature, dtype=body.dtype, device=body.device)
    is_feature = obj.feature(surface.points, surface.normals, instance.feature_size)[..., None]
    return torch.where(is_feature, feature, body)


@torch.no_grad()
def render_true_albedo(obj: TrueObject, cameras: Cameras, size: int, supersample: int = 2) -> tuple[Tensor, Tensor]:
    """(albedo (B, I, 3, S, S) in [0, 1] on the white background, one per instance I; coverage (B, S, S))."""
    surface = trace(obj.sdf, cameras, size * supersample)
    hit = surface.hit[..., None].to(surface.points.dtype)  # (B, H, W, 1)
    background = torch.tensor(BACKGROUND, dtype=hit.dtype, device=hit.device)
    images = torch.stack([hit * albedo_image(obj, instance, surface) + (1 - hit) * background
                          for instance in obj.instances], dim=1).permute(0, 1, 4, 2, 3)  # (B, I, 3, H, W)
    b, i = images.shape[:2]
    pooled = F.avg_pool2d(images.reshape(b * i, 3, *images.shape[-2:]), supersample)
    coverage = F.avg_pool2d(hit[..., 0][:, None], supersample)[:, 0]
    return pooled.view(b, i, 3, size, size), coverage

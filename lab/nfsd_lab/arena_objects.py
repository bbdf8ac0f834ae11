"""The arena's objects: asymmetric shapes with one distinguishable side, rendered exactly and lit.

World frame as ``scene/cameras.py``: +Z up, the front faces -Y (azimuth 0 looks at it). Each object is a
signed distance function with a body colour and, on its front only, a *feature* (a face patch, a label) of
another colour, so how many sides show the feature is measurable from renders. Every object comes in a few
*instances* (slightly different colours and feature sizes, one geometry), the data a denoiser must average.

Renders are on the white background, supersampled, in the renderer's three shading modes (``scene/shading.py``):
albedo, diffuse (albedo × (0.3 + 0.7·max(0, n·l))) and textureless (grey lit the same way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from nfsd_server.guidance.references import BACKGROUND, box_sdf, normalize_prompt, sphere_sdf, torus_sdf
from nfsd_server.scene.cameras import Cameras, camera_rays

AMBIENT = 0.3  # as scene/shading.py's default
# Lights the prior's lit references are drawn under, in each reference camera's own frame: (right, up) offsets
# added to the direction toward the camera. The trainer lights from the camera ± N(0, 0.5²) jitter, which the
# prior cannot see, so its data hold one head-on and two raking lights.
LIGHT_OFFSETS = ((0.0, 0.0), (0.6, 0.3), (-0.6, 0.3))
SHADING_MODES = ("albedo",) + ("diffuse",) * len(LIGHT_OFFSETS) + ("textureless",) * len(LIGHT_OFFSETS)

Color = tuple[float, float, float]


@dataclass(frozen=True)
class Instance:
    body: Color
    feature: Color
    feature_size: float  # ball: the patch's half-angle in degrees; cube: the label's half-size in world units


@dataclass(frozen=True)
class ArenaObject:
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


ARENA_OBJECTS: dict[str, ArenaObject] = {
    obj.prompt: obj
    for obj in (
        ArenaObject(
            "a red ball with a yellow face", sphere_sdf,
            (Instance((0.85, 0.10, 0.10), (0.95, 0.85, 0.15), 45.0), Instance((0.75, 0.15, 0.12), (0.95, 0.75, 0.10), 40.0)),
            face_patch,
        ),
        ArenaObject(
            # Orange, not white: the judge tells the feature by its colour, and white is the background's (a
            # faded or vanished cube read as all label). The cube collapses under NFSD with either (silhouette IoU
            # 0.01 white, 0.02 orange at seed 0): a failure of its own, README "Priors".
            "a blue cube with an orange label", box_sdf,
            (Instance((0.10, 0.20, 0.85), (0.95, 0.55, 0.10), 0.25), Instance((0.15, 0.25, 0.75), (0.90, 0.45, 0.05), 0.22)),
            front_label,
        ),
        # Without a feature: what ∅ also holds, so "with a yellow face" is what tells the prompt apart from ∅
        # (as plain balls fill Stable Diffusion's ∅), and a torus only widens it.
        ArenaObject("a red ball", sphere_sdf, (Instance((0.85, 0.10, 0.10), (0.85, 0.10, 0.10), 0.0),
                                               Instance((0.75, 0.15, 0.12), (0.75, 0.15, 0.12), 0.0))),
        ArenaObject("a blue cube", box_sdf, (Instance((0.10, 0.20, 0.85), (0.10, 0.20, 0.85), 0.0),
                                             Instance((0.15, 0.25, 0.75), (0.15, 0.25, 0.75), 0.0))),
        ArenaObject("a green torus", torus_sdf, (Instance((0.10, 0.70, 0.20), (0.10, 0.70, 0.20), 0.0),
                                                 Instance((0.15, 0.60, 0.20), (0.15, 0.60, 0.20), 0.0))),
    )
}
ASYMMETRIC_PROMPTS = tuple(prompt for prompt, obj in ARENA_OBJECTS.items() if obj.feature is not None)


def arena_object_for(prompt: str) -> ArenaObject:
    key = normalize_prompt(prompt)
    if key not in ARENA_OBJECTS:
        known = ", ".join(repr(name) for name in ARENA_OBJECTS)
        raise ValueError(f"the arena prior does not know the prompt {prompt!r}; it knows {known}")
    return ARENA_OBJECTS[key]


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


def albedo_image(obj: ArenaObject, instance: Instance, surface: Surface) -> Tensor:
    """(B, H, W, 3) albedo at the hits (undefined where nothing was hit)."""
    body = torch.tensor(instance.body, dtype=surface.points.dtype, device=surface.points.device)
    if obj.feature is None:
        return body.expand(*surface.hit.shape, 3)
    feature = torch.tensor(instance.feature, dtype=body.dtype, device=body.device)
    is_feature = obj.feature(surface.points, surface.normals, instance.feature_size)[..., None]
    return torch.where(is_feature, feature, body)


def reference_lights(cameras: Cameras) -> Tensor:
    """(B, L, 3) unit light directions of ``LIGHT_OFFSETS`` in each camera's frame (toward camera + offsets)."""
    c2w = cameras.c2w[:, :3, :3]
    toward = cameras.c2w[:, :3, 3] / cameras.c2w[:, :3, 3].norm(dim=-1, keepdim=True)
    lights = [toward + a * c2w[:, :, 0] + b * c2w[:, :, 1] for a, b in LIGHT_OFFSETS]
    return F.normalize(torch.stack(lights, dim=1), dim=-1)


@torch.no_grad()
def render_arena(obj: ArenaObject, cameras: Cameras, size: int, supersample: int = 2) -> tuple[Tensor, Tensor]:
    """(images (B, I, M, 3, S, S) in [0, 1], coverage (B, S, S)): every instance I in every mode M of
    ``SHADING_MODES`` (albedo, diffuse × lights, textureless × lights) on the white background."""
    surface = trace(obj.sdf, cameras, size * supersample)
    hit = surface.hit[..., None].to(surface.points.dtype)  # (B, H, W, 1)
    lights = reference_lights(cameras)  # (B, L, 3)
    lambert = torch.einsum("bhwc,blc->blhw", surface.normals, lights).clamp_min(0.0)
    light = (AMBIENT + (1 - AMBIENT) * lambert)[..., None]  # (B, L, H, W, 1)
    background = torch.tensor(BACKGROUND, dtype=hit.dtype, device=hit.device)
    per_instance = []
    for instance in obj.instances:
        albedo = albedo_image(obj, instance, surface)  # (B, H, W, 3)
        modes = torch.cat([albedo[:, None], albedo[:, None] * light, light.expand(-1, -1, -1, -1, 3)], dim=1)
        per_instance.append(hit[:, None] * modes + (1 - hit[:, None]) * background)  # (B, M, H, W, 3)
    images = torch.stack(per_instance, dim=1).permute(0, 1, 2, 5, 3, 4)  # (B, I, M, 3, H, W)
    b, i, m = images.shape[:3]
    pooled = F.avg_pool2d(images.reshape(b * i * m, 3, *images.shape[-2:]), supersample)
    coverage = F.avg_pool2d(hit[..., 0][:, None], supersample)[:, 0]
    return pooled.view(b, i, m, 3, size, size), coverage

"""Random orbit cameras, their rays, and view-dependent prompt suffixes.

World frame: right-handed, +Z up (Blender's); the object sits at the origin. Azimuth 0 puts the camera on
-Y looking at +Y, i.e. Blender's *front* view, so the prompt's "front view" ends up facing the artist.
Camera frame follows OpenGL: the camera looks down its local -Z, +Y up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

VIEW_SUFFIXES = ("front view", "side view", "back view", "overhead view")
FRONT, SIDE, BACK, OVERHEAD = range(4)
OVERHEAD_ELEVATION_DEG = 60.0  # above this elevation a camera is "overhead view"


@dataclass(frozen=True)
class OrbitConfig:
    """Ranges for random orbit sampling (degrees, scene units)."""

    # Up to 80°, so "overhead view" (above OVERHEAD_ELEVATION_DEG) gets ~22% of the cameras; front/back ~19% each,
    # side ~39%. (-10, 60) never produced an overhead camera.
    elevation_range: tuple[float, float] = (-10.0, 80.0)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    # Framing: a radius-0.5 object (the starting blob, an init mesh's normalised size) spans a median 0.55 of
    # the half-frame (0.44–0.71), as with threestudio's DreamFusion defaults (1.5–2 from a radius-0.5 blob,
    # 40–70°), so the prior sees the object at the size its training images show one. The spread is narrower
    # than theirs (0.37–0.97) so a grown object stays in frame, and every camera stays outside the scene
    # cube's corners (√3), so no ray starts inside the field.
    distance_range: tuple[float, float] = (2.0, 2.5)
    fov_range: tuple[float, float] = (40.0, 50.0)
    # Light direction = camera direction + N(0, light_jitter²) per axis, normalised: the lit side faces the
    # viewer more often than not; 0 lights from the camera. (A directional light has no distance to sample.)
    light_jitter: float = 0.5

    def __post_init__(self) -> None:
        if not self.light_jitter >= 0:
            raise ValueError(f"light_jitter must be ≥ 0, got {self.light_jitter}")


@dataclass
class Cameras:
    """A batch of B pinhole cameras looking at the origin.

    c2w: (B, 4, 4) camera-to-world; fov_y: (B,) radians; elevation/azimuth: (B,) radians;
    distance: (B,); view: (B,) long index into VIEW_SUFFIXES; light_dir: (B, 3) unit, world frame,
    pointing from the surface toward the light.
    """

    c2w: Tensor
    fov_y: Tensor
    elevation: Tensor
    azimuth: Tensor
    distance: Tensor
    view: Tensor
    light_dir: Tensor

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def to(self, device: torch.device | str) -> "Cameras":
        return Cameras(**{name: getattr(self, name).to(device) for name in self.__dataclass_fields__})

    def index(self, rows: Tensor | slice) -> "Cameras":
        return Cameras(**{name: getattr(self, name)[rows] for name in self.__dataclass_fields__})

    @staticmethod
    def cat(batches: "list[Cameras]") -> "Cameras":
        return Cameras(**{name: torch.cat([getattr(b, name) for b in batches]) for name in Cameras.__dataclass_fields__})


def degrees_from_front(azimuth: Tensor) -> Tensor:
    """(B,) radians, any turn → (B,) |azimuth| in degrees wrapped to [0, 180]: 0 at the front, 180 behind."""
    return torch.rad2deg(torch.remainder(azimuth + math.pi, 2 * math.pi) - math.pi).abs()


def view_index(elevation: Tensor, azimuth: Tensor, overhead_deg: float = OVERHEAD_ELEVATION_DEG) -> Tensor:
    """(B,) long view id: overhead above ``overhead_deg``, else front/side/back by |azimuth| (45°/135° cuts)."""
    az = degrees_from_front(azimuth)
    view = torch.full_like(az, SIDE, dtype=torch.long)
    view[az < 45.0] = FRONT
    view[az > 135.0] = BACK
    view[torch.rad2deg(elevation) > overhead_deg] = OVERHEAD
    return view


def look_at_origin(elevation: Tensor, azimuth: Tensor, distance: Tensor) -> Tensor:
    """(B, 4, 4) camera-to-world for cameras on an orbit, looking at the origin, +Z up."""
    position = torch.stack(
        [
            distance * torch.cos(elevation) * torch.sin(azimuth),
            -distance * torch.cos(elevation) * torch.cos(azimuth),
            distance * torch.sin(elevation),
        ],
        dim=-1,
    )
    forward = -position / position.norm(dim=-1, keepdim=True)
    world_up = torch.tensor([0.0, 0.0, 1.0], dtype=position.dtype, device=position.device).expand_as(forward)
    right = torch.linalg.cross(forward, world_up)
    # Straight overhead the up vector is degenerate: fall back to +Y as "up" in the image.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    right = torch.where(degenerate, torch.tensor([1.0, 0.0, 0.0], dtype=position.dtype, device=position.device), right)
    right = right / right.norm(dim=-1, keepdim=True)
    up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4, dtype=position.dtype, device=position.device).repeat(position.shape[0], 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = position
    return c2w


def make_cameras(
    elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor, fov_deg: Tensor, light_dir: Tensor | None = None
) -> Cameras:
    """Deterministic cameras from angles in degrees (for previews, held-out views and tests)."""
    elevation, azimuth = torch.deg2rad(elevation_deg.float()), torch.deg2rad(azimuth_deg.float())
    c2w = look_at_origin(elevation, azimuth, distance.float())
    if light_dir is None:
        light_dir = c2w[:, :3, 3] / c2w[:, :3, 3].norm(dim=-1, keepdim=True)
    return Cameras(
        c2w=c2w,
        fov_y=torch.deg2rad(fov_deg.float()),
        elevation=elevation,
        azimuth=azimuth,
        distance=distance.float(),
        view=view_index(elevation, azimuth),
        light_dir=light_dir,
    )


def sample_orbit_cameras(batch_size: int, generator: torch.Generator, config: OrbitConfig = OrbitConfig()) -> Cameras:
    """B random orbit cameras; all randomness comes from ``generator`` (CPU generator, results on CPU)."""

    def uniform(low_high: tuple[float, float]) -> Tensor:
        low, high = low_high
        return low + (high - low) * torch.rand(batch_size, generator=generator)

    elevation, azimuth = uniform(config.elevation_range), uniform(config.azimuth_range)
    distance, fov = uniform(config.distance_range), uniform(config.fov_range)
    cameras = make_cameras(elevation, azimuth, distance, fov)
    jitter = torch.randn(batch_size, 3, generator=generator) * config.light_jitter
    light_dir = cameras.c2w[:, :3, 3] / cameras.distance[:, None] + jitter
    cameras.light_dir = light_dir / light_dir.norm(dim=-1, keepdim=True)
    return cameras


def camera_rays(cameras: Cameras, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Ray origins and unit directions through pixel centres, each (B, H, W, 3), world frame."""
    device, dtype = cameras.c2w.device, cameras.c2w.dtype
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    tan_half = torch.tan(cameras.fov_y / 2).view(-1, 1, 1)
    aspect = width / height
    dirs_cam = torch.stack(
        [
            (2 * grid_x - 1)[None] * tan_half * aspect,
            (1 - 2 * grid_y)[None] * tan_half,
            -torch.ones_like(grid_x)[None].expand(len(cameras), -1, -1),
        ],
        dim=-1,
    )
    directions = torch.einsum("bij,bhwj->bhwi", cameras.c2w[:, :3, :3], dirs_cam)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    origins = cameras.c2w[:, None, None, :3, 3].expand_as(directions)
    return origins, directions

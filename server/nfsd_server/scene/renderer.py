"""Volume rendering of a NeRFField: per-ray colour, opacity, depth and albedo.

Two samplers, one output. ``StratifiedRenderer`` (pure torch sampling + nerfacc's batched
``render_weight_from_density`` / ``accumulate_along_rays``) runs everywhere. ``OccupancyGridRenderer``
skips empty space with nerfacc's ``OccGridEstimator`` and needs nerfacc's CUDA extension.
``make_renderer`` picks the fast one when it can and logs the choice once.

Shading is deferred: one normal per ray, at the expected surface point, instead of one per sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import torch
from nerfacc.volrend import accumulate_along_rays, render_weight_from_density
from torch import Tensor, nn

from nfsd_server.scene.field import NeRFField
from nfsd_server.scene.shading import shade

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RendererConfig:
    n_samples: int = 64  # per ray, stratified sampler
    render_step_size: float = 5e-3  # occupancy-grid sampler
    occupancy_resolution: int = 64
    occupancy_update_every: int = 16
    chunk_rays: int = 16_384  # rays per pass when not training (bounds memory for previews)


@dataclass
class RenderOutput:
    """Per pixel: rgb (..., 3) composited on the background; opacity (..., 1); depth (..., 1) (0 where empty);
    albedo (..., 3) composited on the background (for previews and metrics)."""

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    albedo: Tensor


def host_to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """Copy a CPU-sampled tensor to ``device`` without blocking the host (pinned + non_blocking on CUDA).

    A plain ``.to("cuda")`` of pageable memory waits for the GPU: one sync per call in the training loop.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def ray_aabb(origins: Tensor, directions: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Entry/exit distances (R,) of rays through the cube [-bound, bound]³; exit ≤ entry means a miss."""
    safe = torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0, t1 = (-bound - origins) / safe, (bound - origins) / safe
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


class Renderer(nn.Module):
    """Base: turns per-ray albedo/opacity/depth into shaded, composited pixels."""

    def __init__(self, config: RendererConfig = RendererConfig()):
        super().__init__()
        self.config = config

    def update(self, step: int, field: NeRFField) -> None:
        """Refresh acceleration structures (no-op unless the sampler has one)."""

    def integrate(
        self, field: NeRFField, origins: Tensor, directions: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Rays (R, 3) → (premultiplied albedo (R, 3), opacity (R, 1), depth (R, 1))."""
        raise NotImplementedError

    def forward(
        self,
        field: NeRFField,
        background: nn.Module,
        origins: Tensor,
        directions: Tensor,
        shading: str = "albedo",
        light_dir: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> RenderOutput:
        """origins/directions (B, H, W, 3); light_dir (B, 3) → RenderOutput with (B, H, W, ·) tensors.

        ``generator`` jitters samples (training); None samples bin centres (deterministic previews).
        """
        batch_shape = origins.shape[:-1]
        flat_o, flat_d = origins.reshape(-1, 3), directions.reshape(-1, 3)
        if torch.is_grad_enabled():
            albedo, opacity, depth = self.integrate(field, flat_o, flat_d, generator)
        else:
            parts = [
                self.integrate(field, o, d, generator)
                for o, d in zip(flat_o.split(self.config.chunk_rays), flat_d.split(self.config.chunk_rays))
            ]
            albedo, opacity, depth = (torch.cat(p) for p in zip(*parts))

        if shading == "albedo":
            color = albedo
        else:
            if light_dir is None:
                raise ValueError(f"shading {shading!r} needs light_dir")
            surface = flat_o + flat_d * depth
            normals = field.normals(surface)
            lights = light_dir.reshape(-1, 1, 3).expand(-1, flat_o.shape[0] // light_dir.shape[0], 3).reshape(-1, 3)
            # Premultiplied: a half-transparent pixel gets half the light, like its albedo.
            color = shade(shading, albedo, normals, lights) if shading == "diffuse" else shade(
                shading, opacity.expand(-1, 3), normals, lights
            )
        bg = background(flat_d)
        out = RenderOutput(
            rgb=color + (1.0 - opacity) * bg,
            opacity=opacity,
            depth=depth,
            albedo=albedo + (1.0 - opacity) * bg,
        )
        return RenderOutput(**{k: v.view(*batch_shape, -1) for k, v in vars(out).items()})


class StratifiedRenderer(Renderer):
    """n_samples stratified samples per ray inside the scene cube; runs on any device."""

    def integrate(self, field, origins, directions, generator):
        n_samples = self.config.n_samples
        near, far = ray_aabb(origins, directions, field.bound)
        # Every ray is sampled; a miss gets a zero-length interval (zero weight). Masking hit rays instead
        # would need their count on the host: a device sync every step on CUDA.
        far = torch.maximum(far, near)[:, None]
        near = near[:, None]
        bins = torch.arange(n_samples + 1, device=origins.device, dtype=origins.dtype) / n_samples
        edges = near + (far - near) * bins  # (R, S + 1)
        t_starts, t_ends = edges[:, :-1], edges[:, 1:]
        if generator is None:
            jitter = torch.full_like(t_starts, 0.5)
        else:
            jitter = host_to_device(torch.rand(t_starts.shape, generator=generator), origins.device)
        t_mid = t_starts + (t_ends - t_starts) * jitter
        points = origins[:, None, :] + directions[:, None, :] * t_mid[..., None]
        sigmas, sample_albedo = field(points.view(-1, 3))
        weights, _, _ = render_weight_from_density(t_starts, t_ends, sigmas.view(t_starts.shape))
        opacity = accumulate_along_rays(weights, None)
        albedo = accumulate_along_rays(weights, sample_albedo.view(*t_starts.shape, 3))
        # Expected depth, normalised by opacity so the surface point is on the surface, not pulled to 0.
        depth = accumulate_along_rays(weights, t_mid[..., None]) / opacity.clamp_min(1e-6)
        return albedo, opacity, depth


class OccupancyGridRenderer(Renderer):
    """nerfacc OccGridEstimator: marches only through occupied cells (CUDA extension required)."""

    def __init__(self, config: RendererConfig = RendererConfig(), bound: float = 1.0):
        super().__init__(config)
        from nerfacc import OccGridEstimator

        aabb = torch.tensor([-bound, -bound, -bound, bound, bound, bound], dtype=torch.float32)
        self.estimator = OccGridEstimator(roi_aabb=aabb, resolution=config.occupancy_resolution, levels=1)

    def update(self, step, field):
        def occupancy(points: Tensor) -> Tensor:
            return field.density(points) * self.config.render_step_size

        self.estimator.update_every_n_steps(step, occupancy, occ_thre=0.01, n=self.config.occupancy_update_every)

    def integrate(self, field, origins, directions, generator):
        from nerfacc.volrend import rendering

        def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
            t_mid = (t_starts + t_ends)[:, None] / 2
            return field.density(origins[ray_indices] + directions[ray_indices] * t_mid)

        def rgb_sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> tuple[Tensor, Tensor]:
            t_mid = (t_starts + t_ends)[:, None] / 2
            sigmas, sample_albedo = field(origins[ray_indices] + directions[ray_indices] * t_mid)
            return sample_albedo, sigmas

        ray_indices, t_starts, t_ends = self.estimator.sampling(
            origins,
            directions,
            sigma_fn=sigma_fn,
            render_step_size=self.config.render_step_size,
            stratified=generator is not None,
        )
        albedo, opacity, depth, _ = rendering(
            t_starts, t_ends, ray_indices, n_rays=origins.shape[0], rgb_sigma_fn=rgb_sigma_fn
        )
        # nerfacc's depth is Σ w·t; normalise like the stratified path.
        return albedo, opacity, depth / opacity.clamp_min(1e-6)


@lru_cache(maxsize=None)
def nerfacc_cuda_available() -> bool:
    """True when nerfacc's compiled CUDA extension loads (never tried without a GPU: it may JIT-compile)."""
    if not torch.cuda.is_available():
        return False
    try:
        from nerfacc.cuda._backend import _C  # noqa: F401
    except (ImportError, OSError, RuntimeError) as error:
        log.warning("nerfacc CUDA extension unavailable (%s); using the pure-torch sampler", error)
        return False
    return _C is not None


def make_renderer(config: RendererConfig, device: torch.device, bound: float = 1.0) -> Renderer:
    if device.type == "cuda" and nerfacc_cuda_available():
        log.info("renderer: nerfacc occupancy grid (CUDA)")
        return OccupancyGridRenderer(config, bound).to(device)
    log.info("renderer: stratified sampling + nerfacc batched volume rendering (pure torch)")
    return StratifiedRenderer(config).to(device)

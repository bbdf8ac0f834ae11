"""The judge: how closely a NeRF matches a reference object (silhouette, albedo, volume, surface).

Renders from held-out views are compared with the reference's exact renders (``guidance/references.py``); the
density grid is compared with the reference's signed distance function.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from nfsd_server.guidance.references import BACKGROUND, Reference, render_reference
from nfsd_server.scene.cameras import Cameras, camera_rays, make_cameras


def held_out_cameras(n_views: int = 8, elevation: float = 20.0, distance: float = 3.2, fov: float = 45.0) -> Cameras:
    """Evenly spaced azimuths at one elevation, plus one overhead-ish view: views training never sampled exactly."""
    azimuths = torch.arange(n_views - 1, dtype=torch.float32) * 360.0 / (n_views - 1) + 10.0
    elevations = torch.cat([torch.full((n_views - 1,), elevation), torch.tensor([55.0])])
    azimuths = torch.cat([azimuths, torch.tensor([30.0])])
    return make_cameras(elevations, azimuths, torch.full((n_views,), distance), torch.full((n_views,), fov))


def silhouette_iou(pred_opacity: Tensor, ref_coverage: Tensor, threshold: float = 0.5) -> float:
    """IoU of the two masks (each (…, H, W) in [0, 1]) thresholded at ``threshold``."""
    pred, ref = pred_opacity > threshold, ref_coverage > threshold
    union = (pred | ref).sum()
    return float((pred & ref).sum() / union) if union > 0 else 1.0


@torch.no_grad()
def evaluate_nerf(field, reference: Reference, n_views: int = 8, size: int = 64) -> dict[str, float]:
    """Silhouette IoU and mean albedo error (mean |Δ| per channel, inside both masks) over held-out views."""
    from nfsd_server.scene.field import SolidBackground
    from nfsd_server.scene.renderer import RendererConfig, StratifiedRenderer

    device = next(field.parameters()).device
    cameras = held_out_cameras(n_views).to(device)
    _, coverage = render_reference(reference, cameras, size)
    origins, directions = camera_rays(cameras, size, size)
    render = StratifiedRenderer(RendererConfig(n_samples=128))(field, SolidBackground(BACKGROUND).to(device), origins, directions)
    opacity = render.opacity[..., 0]
    inside = (opacity > 0.5) & (coverage > 0.5)
    premultiplied = render.albedo - (1 - render.opacity) * torch.tensor(BACKGROUND, device=device)
    albedo = premultiplied / render.opacity.clamp_min(1e-6)
    mean_color = albedo[inside].mean(0) if inside.any() else torch.full((3,), float("nan"))
    color_error = (mean_color - torch.tensor(reference.color, device=device)).abs().mean()
    return {
        "silhouette_iou": silhouette_iou(opacity, coverage),
        "color_error": float(color_error),
        "mean_color": tuple(float(c) for c in mean_color),
    }


@torch.no_grad()
def evaluate_shape(field, reference: Reference, resolution: int = 96, threshold: float | None = None) -> dict[str, float]:
    """Volume IoU of {density > threshold} vs {sdf < 0} on a grid, and symmetric Chamfer distance between
    marching-cubes surfaces (world units, mean of both directions)."""
    import mcubes

    device = next(field.parameters()).device
    threshold = field.surface_density if threshold is None else threshold
    axis = torch.linspace(-field.bound, field.bound, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).view(-1, 3)
    density = torch.cat([field.density(chunk.to(device)).cpu() for chunk in points.split(2**17)]).view((resolution,) * 3)
    sdf = reference.sdf(points).view((resolution,) * 3)
    pred, ref = density > threshold, sdf < 0
    union = (pred | ref).sum()
    volume_iou = float((pred & ref).sum() / union) if union > 0 else 1.0
    scale = 2 * field.bound / (resolution - 1)

    def surface(volume: np.ndarray, level: float) -> np.ndarray:
        vertices, _ = mcubes.marching_cubes(volume, level)
        return vertices * scale - field.bound

    pred_surface = surface(density.numpy(), threshold)
    ref_surface = surface(-sdf.numpy(), 0.0)
    if len(pred_surface) == 0:
        return {"volume_iou": volume_iou, "chamfer": float("inf")}
    from scipy.spatial import cKDTree

    d_pred, _ = cKDTree(ref_surface).query(pred_surface)
    d_ref, _ = cKDTree(pred_surface).query(ref_surface)
    return {"volume_iou": volume_iou, "chamfer": float((d_pred.mean() + d_ref.mean()) / 2)}

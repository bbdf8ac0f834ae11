"""The 3D judge: does a NeRF show its object's feature on one side only (no Janus), in the right shape and colours?

Everything is measured from albedo renders at eight azimuths 0°, 45°, …, 315° (elevation 15°), against the
true object's exact renders (``true_objects.py``) at the same cameras.

Janus detector: a covered pixel shows the feature when its albedo is nearer to one of the object's feature
colours than to any of its body colours and to the background's white; ``feature_fractions`` is the share of
such pixels per azimuth. The feature is *seen* from an azimuth when that share exceeds ``JANUS_THRESHOLD``; a
result is Janus when the feature is seen from two opposite azimuths (k and k + 180°). The true ball shows its
patch on 50% of its disc from the front, ≤ 10% from a side (a grazing sliver) and 0% from behind; the true
cube's label is invisible from the sides; so the true objects are never Janus, and a feature painted on the
back always is.

Not being Janus is not success: ``outcome`` sorts every result into one of ``OUTCOMES``. A white object
(the colour of the background it was trained on: the colours collapsed, not a face painted twice) is
*faded*; one whose feature is not seen from the front (erased, as a guard that pushes too hard does) is
*faceless*; only the rest, feature in front and not behind, is *faithful*.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nfsd_lab.evaluation import silhouette_iou
from nfsd_lab.true_objects import TrueObject, render_true_albedo
from nfsd_server.guidance.references import BACKGROUND
from nfsd_server.scene.cameras import Cameras, camera_rays, make_cameras

JUDGE_AZIMUTHS_DEG = tuple(45.0 * k for k in range(8))
JUDGE_ELEVATION_DEG = 15.0
JANUS_THRESHOLD = 0.2
FADED_THRESHOLD = 0.5  # a result is faded when most of what it covers, over all views, is nearest white
OUTCOMES = ("faithful", "janus", "faceless", "faded")


def judge_cameras() -> Cameras:
    n = len(JUDGE_AZIMUTHS_DEG)
    return make_cameras(torch.full((n,), JUDGE_ELEVATION_DEG), torch.tensor(JUDGE_AZIMUTHS_DEG), torch.full((n,), 3.2),
                        torch.full((n,), 45.0))


def feature_fractions(albedo: Tensor, opacity: Tensor, obj: TrueObject) -> Tensor:
    """albedo (V, H, W, 3) in [0, 1], opacity (V, H, W) in [0, 1] → (V,) share of covered pixels (opacity > 0.5)
    whose albedo is nearer a feature colour of ``obj`` than every body colour and the background's white (0 where
    nothing is covered)."""
    return _covered_share(_nearest_colour(albedo, obj) == _FEATURE, opacity)


def faded_fractions(albedo: Tensor, opacity: Tensor, obj: TrueObject) -> Tensor:
    """(V,) share of covered pixels whose albedo is nearer the background's white than every body and feature
    colour of ``obj``: what a NeRF whose colours collapsed to its training background shows."""
    return _covered_share(_nearest_colour(albedo, obj) == _BACKGROUND, opacity)


_BODY, _FEATURE, _BACKGROUND = range(3)


def _nearest_colour(albedo: Tensor, obj: TrueObject) -> Tensor:
    """(V, H, W) long: which of body (any instance's), feature (any instance's) or background is nearest."""
    palette = [[inst.body for inst in obj.instances], [inst.feature for inst in obj.instances], [BACKGROUND]]
    pixels = albedo.reshape(-1, 3)
    distances = torch.stack([torch.cdist(pixels, torch.tensor(colours, dtype=albedo.dtype, device=albedo.device)).amin(-1)
                             for colours in palette], -1)
    return distances.argmin(-1).view(albedo.shape[:-1])


def _covered_share(mask: Tensor, opacity: Tensor) -> Tensor:
    covered = opacity > 0.5
    return (mask & covered).flatten(1).sum(-1) / covered.flatten(1).sum(-1).clamp_min(1)


def feature_scores(albedo: Tensor, opacity: Tensor, obj: TrueObject) -> Tensor:
    """(V,) mean over covered pixels of how far the albedo has moved from the body colour toward the feature
    colour (instance 0), clamped to [0, 1]: 0 = plain body, 1 = all feature. Catches a face smeared faintly all
    around, which ``feature_fractions`` (nearest colour) counts as body."""
    body = torch.tensor(obj.instances[0].body, dtype=albedo.dtype, device=albedo.device)
    axis = torch.tensor(obj.instances[0].feature, dtype=albedo.dtype, device=albedo.device) - body
    score = (((albedo - body) * axis).sum(-1) / (axis * axis).sum().clamp_min(1e-12)).clamp(0, 1)
    covered = (opacity > 0.5).to(albedo.dtype)
    return (score * covered).flatten(1).sum(-1) / covered.flatten(1).sum(-1).clamp_min(1)


def is_janus(fractions: Tensor, threshold: float = JANUS_THRESHOLD) -> bool:
    """fractions (V,) at V evenly spaced azimuths (V even) → True when the feature is seen from opposite sides."""
    seen = fractions > threshold
    return bool((seen & seen.roll(len(seen) // 2)).any())


def outcome(fractions: Tensor, faded: Tensor, has_feature: bool = True, threshold: float = JANUS_THRESHOLD) -> str:
    """One of ``OUTCOMES`` from (V,) feature and faded fractions at evenly spaced azimuths, the first at 0°
    (an object without a feature is faithful unless faded)."""
    if is_janus(fractions, threshold):
        return "janus"
    if float(faded.mean()) > FADED_THRESHOLD:
        return "faded"
    return "faithful" if float(fractions[0]) > threshold or not has_feature else "faceless"


@torch.no_grad()
def render_albedo(field, size: int = 48, cameras: Cameras | None = None) -> tuple[Tensor, Tensor]:
    """(albedo (V, H, W, 3) un-premultiplied, opacity (V, H, W)) of a field at ``cameras`` (default: the
    judge's)."""
    from nfsd_server.scene.field import SolidBackground
    from nfsd_server.scene.renderer import RendererConfig, StratifiedRenderer

    device = next(iter(field.parameters()), torch.empty(0)).device
    cameras = (judge_cameras() if cameras is None else cameras).to(device)
    origins, directions = camera_rays(cameras, size, size)
    background = torch.tensor(BACKGROUND, device=device)
    render = StratifiedRenderer(RendererConfig(n_samples=96))(field, SolidBackground(BACKGROUND).to(device), origins, directions)
    albedo = (render.albedo - (1 - render.opacity) * background) / render.opacity.clamp_min(1e-6)
    return albedo.clamp(0, 1), render.opacity[..., 0]


@torch.no_grad()
def judge_field(field, obj: TrueObject, size: int = 48) -> dict[str, object]:
    """Janus (bool), the outcome (one of ``OUTCOMES``), feature fractions per azimuth, silhouette IoU, and colour
    error: the mean |Δ albedo| per channel over pixels covered in both, against the nearest instance (so a face
    painted twice costs colour too)."""
    albedo, opacity = render_albedo(field, size)
    cameras = judge_cameras().to(albedo.device)
    references, coverage = render_true_albedo(obj, cameras, size)  # (V, I, 3, S, S)
    reference_albedo = references.permute(1, 0, 3, 4, 2)  # (I, V, S, S, 3)
    inside = (opacity > 0.5) & (coverage > 0.5)
    errors = [(albedo - ref).abs().mean(-1)[inside].mean() if inside.any() else torch.tensor(float("nan"))
              for ref in reference_albedo]
    fractions, faded = feature_fractions(albedo, opacity, obj), faded_fractions(albedo, opacity, obj)
    scores = feature_scores(albedo, opacity, obj) if obj.feature is not None else torch.zeros(len(fractions))
    return {
        "janus": is_janus(fractions),
        "outcome": outcome(fractions, faded, has_feature=obj.feature is not None),
        "feature_fractions": [round(float(f), 3) for f in fractions],
        "feature_scores": [round(float(f), 3) for f in scores],
        "silhouette_iou": silhouette_iou(opacity, coverage),
        "color_error": float(torch.stack(errors).min()),
    }

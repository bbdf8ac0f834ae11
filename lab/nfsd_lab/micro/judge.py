"""The micro model's independent judge: true renders decide what an image shows; nothing of the model is used.

Shape: the image's silhouette (pixels far from its border's colour) against the coverage of every shape's true
renders from 8 azimuths × 3 elevations at three distances; the best IoU names the shape. Colour: the median of the
silhouette's pixels against every colour word's colour, unlit and as the trainer's light dims it (× 0.7); the
nearest in CIELAB (ΔE, where distance follows what an eye tells apart: in RGB a bright red lies nearer orange)
names the colour. Feature: each pixel of the silhouette's interior (holes filled, so a white label on white
counts; its rim eroded, where the object blends into the background) takes its nearest colour word, lit or
dimmed; a feature colour word other than the body's holding over ``FEATURE_MIN_SHARE`` of them names the feature
(and where the median's word is a feature colour, as for a ball seen from the front, the body is the next word).
The judge knows the whole world, held-out pairs too. ``field_views`` renders a 3D result at the bank's own
distance, so its silhouettes are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from scipy.ndimage import binary_erosion, binary_fill_holes
from torch import Tensor

from nfsd_lab.field_judge import render_albedo
from nfsd_lab.micro.world import (
    COLORS, FEATURE_COLORS, FEATURE_SIZES, FEATURES, SHAPES, Truth, object_caption, render_truth,
)
from nfsd_lab.true_objects import Instance, TrueObject
from nfsd_server.scene.cameras import make_cameras

BANK_AZIMUTHS = tuple(45.0 * k for k in range(8))
BANK_ELEVATIONS = (0.0, 30.0, 60.0)
BANK_DISTANCES = (2.0, 2.25, 2.5)  # the world's OrbitConfig range, at its middle FOV
BANK_FOV = 45.0
FOREGROUND_THRESHOLD = 0.12  # mean |Δ| per channel from the border colour
FEATURE_MIN_SHARE = 0.05  # of the interior: the true face holds ~60 % from the front; a side's sliver is eroded
BODY_MIN_SHARE = 0.2  # the true body's ring holds ~35 % of a frontal ball
VIEW_ELEVATION = 15.0  # a 3D result's views: 8 azimuths at the bank's middle distance


@dataclass(frozen=True)
class Verdict:
    shape: str
    color: str
    silhouette_iou: float  # with the best true render of its shape
    feature: str | None = None  # the feature's colour word where one shows


@lru_cache(maxsize=2)
def bank(size: int = 32) -> tuple[Tensor, list[str]]:
    """(coverage (K, S, S) of true renders, the shape of each row)."""
    grid = torch.cartesian_prod(torch.tensor(BANK_ELEVATIONS), torch.tensor(BANK_AZIMUTHS), torch.tensor(BANK_DISTANCES))
    n = len(grid)
    cameras = make_cameras(grid[:, 0], grid[:, 1], grid[:, 2], torch.full((n,), BANK_FOV))
    masks, labels = [], []
    for shape in SHAPES:
        _, coverage = render_truth(Truth(shape, "red", None), cameras, size)
        masks.append(coverage > 0.5)
        labels.extend([shape] * n)
    return torch.cat(masks), labels


def silhouettes(images: Tensor) -> Tensor:
    """(N, S, S) bool: pixels unlike the image's border (the background)."""
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]  # (N, 3, 1, 1)
    return (images - background).abs().mean(1) > FOREGROUND_THRESHOLD


def cielab(rgb: Tensor) -> Tensor:
    """(..., 3) sRGB in [0, 1] → (..., 3) CIELAB (D65)."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_xyz = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ to_xyz.T / torch.tensor([0.9505, 1.0, 1.089])
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def judge(images: Tensor) -> list[Verdict]:
    """images (N, 3, S, S) in [0, 1] → the shape, colour and feature each one shows, by the true renders."""
    images = images.float()
    masks, labels = bank(images.shape[-1])
    mine = silhouettes(images)
    intersection = torch.einsum("nhw,khw->nk", mine.float(), masks.float())
    union = mine.flatten(1).sum(-1, keepdim=True) + masks.flatten(1).sum(-1) - intersection
    iou = intersection / union.clamp_min(1)
    best = iou.argmax(-1)
    names = list(COLORS)
    palette = torch.tensor([COLORS[name] for name in names])
    palette = cielab(torch.cat([palette, palette * 0.7]))
    verdicts = []
    for i in range(len(images)):
        pixels = images[i].permute(1, 2, 0)[mine[i]]
        median = pixels.median(0).values if len(pixels) else images[i].mean((1, 2))
        color = names[int((palette - cielab(median)).norm(dim=-1).argmin()) % len(names)]
        body, feature = body_and_feature(images[i], mine[i], color)
        verdicts.append(Verdict(labels[int(best[i])], body, float(iou[i, best[i]]), feature))
    return verdicts


def body_and_feature(image: Tensor, silhouette: Tensor, median_color: str) -> tuple[str, str | None]:
    """(body colour word, feature colour word or None) from the silhouette's interior, each pixel named by its
    nearest colour word at the renderer's light levels. The body is the median's word, unless that is a feature
    colour and another word holds over ``BODY_MIN_SHARE`` (a ball seen from the front is mostly face); the
    feature is the feature colour word other than the body's holding the most pixels, over ``FEATURE_MIN_SHARE``."""
    interior = binary_erosion(binary_fill_holes(silhouette.cpu().numpy()))
    pixels = cielab(image.permute(1, 2, 0)[torch.from_numpy(interior)])
    if not len(pixels):
        return median_color, None
    nearest = torch.cdist(pixels, _WORD_LAB).argmin(-1) // len(_LIGHT_LEVELS)
    shares = {name: float((nearest == index).float().mean()) for index, name in enumerate(_WORDS)}
    body = median_color
    if body in FEATURE_COLORS:
        others = {name: share for name, share in shares.items() if name != body and name in COLORS}
        other = max(others, key=others.get)
        if others[other] > BODY_MIN_SHARE:
            body = other
    features = {name: shares[name] for name in FEATURE_COLORS if name != body}
    feature = max(features, key=features.get)
    return body, feature if features[feature] > FEATURE_MIN_SHARE else None


_LIGHT_LEVELS = (1.0, 0.8, 0.6, 0.45)  # lit, and dimmed toward the renderer's ambient 0.3
_WORDS = list({**COLORS, **FEATURE_COLORS})
_WORD_LAB = cielab(torch.tensor([[c * level for c in {**COLORS, **FEATURE_COLORS}[name]]
                                 for name in _WORDS for level in _LIGHT_LEVELS]))


def accuracy(verdicts: list[Verdict], truths: list[Truth]) -> dict[str, float]:
    """Shares of verdicts whose shape, colour and both match the truths."""
    n = max(1, len(truths))
    shape = sum(v.shape == t.shape for v, t in zip(verdicts, truths)) / n
    color = sum(v.color == t.color for v, t in zip(verdicts, truths)) / n
    both = sum(v.shape == t.shape and v.color == t.color for v, t in zip(verdicts, truths)) / n
    featured = [(v, t) for v, t in zip(verdicts, truths) if t.feature_color is not None]
    plain = [(v, t) for v, t in zip(verdicts, truths) if t.feature_color is None]
    return {"shape": shape, "color": color, "both": both,
            # featured captions showing their feature; plain ones showing none (nan where there are none)
            "feature": sum(v.feature == t.feature_color for v, t in featured) / len(featured) if featured else float("nan"),
            "no_feature": sum(v.feature is None for v, _ in plain) / len(plain) if plain else float("nan")}


def true_object(truth: Truth) -> TrueObject:
    """The nominal object of ``truth``, for ``field_judge.judge_field`` (Janus, outcome, silhouette IoU, colour
    error) to judge a 3D result against."""

    body = COLORS[truth.color]
    if truth.feature_color is None:
        return TrueObject(object_caption(truth.color, truth.shape), SHAPES[truth.shape], (Instance(body, body, 0.0),))
    low, high = FEATURE_SIZES[truth.shape]
    return TrueObject(object_caption(truth.color, truth.shape, truth.feature_color), SHAPES[truth.shape],
                       (Instance(body, FEATURE_COLORS[truth.feature_color], (low + high) / 2),), FEATURES[truth.shape][2])


@torch.no_grad()
def field_views(field, size: int = 32) -> Tensor:
    """(8, 3, S, S): a NeRF's albedo on white from 8 azimuths at the bank's middle distance and FOV."""
    cameras = make_cameras(torch.full((8,), VIEW_ELEVATION), torch.tensor(BANK_AZIMUTHS),
                           torch.full((8,), BANK_DISTANCES[1]), torch.full((8,), BANK_FOV))
    albedo, opacity = render_albedo(field, size, cameras)
    return (albedo * opacity[..., None] + (1 - opacity[..., None])).permute(0, 3, 1, 2)


def r_precision(views: Tensor, truth: Truth) -> float:
    """Share of views (V, 3, S, S) on white that the judge reads as the truth's shape and colour."""
    verdicts = judge(views)
    return sum(v.shape == truth.shape and v.color == truth.color for v in verdicts) / max(1, len(verdicts))

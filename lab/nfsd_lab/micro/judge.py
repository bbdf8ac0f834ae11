"""The micro model's independent judge: true renders decide what an image shows; nothing of the model is used.

Shape: the image's silhouette (pixels far from its border's colour) against the coverage of every shape's true
renders from 8 azimuths × 3 elevations at three distances; the best IoU names the shape. Colour: the median of the
silhouette's pixels against every colour word's colour, unlit and as the trainer's light dims it (× 0.7); the
nearest in CIELAB (ΔE, where distance follows what an eye tells apart: in RGB a bright red lies nearer orange)
names the colour. The judge knows the whole world, held-out pairs too. ``field_views`` renders a 3D result at
the bank's own distance, so its silhouettes are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from nfsd_lab.micro.world import COLORS, SHAPES, Truth, render_truth
from nfsd_server.scene.cameras import make_cameras

BANK_AZIMUTHS = tuple(45.0 * k for k in range(8))
BANK_ELEVATIONS = (0.0, 30.0, 60.0)
BANK_DISTANCES = (2.0, 2.25, 2.5)  # the world's OrbitConfig range, at its middle FOV
BANK_FOV = 45.0
FOREGROUND_THRESHOLD = 0.12  # mean |Δ| per channel from the border colour
VIEW_ELEVATION = 15.0  # a 3D result's views: 8 azimuths at the bank's middle distance


@dataclass(frozen=True)
class Verdict:
    shape: str
    color: str
    silhouette_iou: float  # with the best true render of its shape


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
    """images (N, 3, S, S) in [0, 1] → the shape and colour each one shows, by the true renders."""
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
        verdicts.append(Verdict(labels[int(best[i])], color, float(iou[i, best[i]])))
    return verdicts


def accuracy(verdicts: list[Verdict], truths: list[Truth]) -> dict[str, float]:
    """Shares of verdicts whose shape, colour and both match the truths."""
    n = max(1, len(truths))
    shape = sum(v.shape == t.shape for v, t in zip(verdicts, truths)) / n
    color = sum(v.color == t.color for v, t in zip(verdicts, truths)) / n
    both = sum(v.shape == t.shape and v.color == t.color for v, t in zip(verdicts, truths)) / n
    return {"shape": shape, "color": color, "both": both}


def arena_object(truth: Truth):
    """The nominal object of ``truth`` as the arena judge's ``ArenaObject``, so a 3D result is judged by
    ``arena_evaluation.evaluate_arena`` (Janus, outcome, silhouette IoU, colour error) like the arena's."""
    from nfsd_lab.arena_objects import ArenaObject, Instance
    from nfsd_lab.micro.world import FEATURE_COLORS, FEATURE_SIZES, FEATURES, object_caption

    body = COLORS[truth.color]
    if truth.feature_color is None:
        return ArenaObject(object_caption(truth.color, truth.shape), SHAPES[truth.shape], (Instance(body, body, 0.0),))
    low, high = FEATURE_SIZES[truth.shape]
    return ArenaObject(object_caption(truth.color, truth.shape, truth.feature_color), SHAPES[truth.shape],
                       (Instance(body, FEATURE_COLORS[truth.feature_color], (low + high) / 2),), FEATURES[truth.shape][2])


@torch.no_grad()
def field_views(field, size: int = 32) -> Tensor:
    """(8, 3, S, S): a NeRF's albedo on white from 8 azimuths at the bank's middle distance and FOV."""
    from nfsd_lab.arena_evaluation import render_albedo

    cameras = make_cameras(torch.full((8,), VIEW_ELEVATION), torch.tensor(BANK_AZIMUTHS),
                           torch.full((8,), BANK_DISTANCES[1]), torch.full((8,), BANK_FOV))
    albedo, opacity = render_albedo(field, size, cameras)
    return (albedo * opacity[..., None] + (1 - opacity[..., None])).permute(0, 3, 1, 2)


def r_precision(views: Tensor, truth: Truth) -> float:
    """Share of views (V, 3, S, S) on white that the judge reads as the truth's shape and colour."""
    verdicts = judge(views)
    return sum(v.shape == truth.shape and v.color == truth.color for v in verdicts) / max(1, len(verdicts))

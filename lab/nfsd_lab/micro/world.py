"""The micro model's world: procedural objects with known 3D truth, seen the way the trainer's cameras see them.

Deterministic from a seed. Every sample is (image 3×S×S in [0, 1], caption, its truth). The proportions and why:

* **Objects**: 6 shapes × 8 colour words; the ball and the cube carry a front *feature* (the ball "a yellow
  face", the cube "a white label", on -Y, where azimuth 0 looks) on half of their instances, named in the
  caption. 4 shape × colour pairs never appear (``HELD_OUT``), to measure generalisation.
* **A caption is a distribution**: each instance jitters hue (±0.02), saturation and value (×0.85–1.1), size
  (×0.85–1.1), offset (±0.05), yaw (±15°) and the feature's size, so a denoiser has to average.
* **Views as the trainer's** (``OrbitConfig``: elevation −10…80°, distance 2–2.5, FOV 40–50°), with a web-like
  frontal bias for featured objects: 60 % of their azimuths within ±45° of the front, the rest uniform, so 70 %
  frontal, 10 % from behind. Plain objects are seen uniformly (they look alike from every side).
* **View words on a quarter of the captions** (", front view" and the rest, by ``view_index``, the trainer's
  rule): most web captions name no view, and those that do teach the suffix the trainer appends to every prompt.
  With the frontal bias that is enough for "back view" to be weak, so Janus can emerge on its own.
* **Lit as the trainer lights**: 65 % diffuse (light = toward the camera + N(0, 0.5²), the trainer's ambient),
  25 % unlit albedo, 10 % textureless grey (the trainer renders those too and prompts them the same).
* **Backgrounds**: white on 80 % (the judges' background), a pale solid colour on 20 % (the trainer's
  background is learned and may drift).
* **The negative prompt means something**: 10 % of images are degraded (blurred, darkened or washed out) and
  captioned with the matching words of the trainer's negative prompt, as the analytic prior's p_neg is the
  mixture of degraded references; a third of those drop the object's caption.
"""

from __future__ import annotations

import colorsys
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nfsd_contract.constants import NFSD_NEGATIVE_PROMPT
from nfsd_lab.true_objects import face_patch, front_label, trace
from nfsd_server.guidance.references import box_sdf, sphere_sdf, torus_sdf
from nfsd_server.scene.cameras import VIEW_SUFFIXES, OrbitConfig, make_cameras, view_index
from nfsd_server.scene.shading import AMBIENT


def cone_sdf(points: Tensor, radius: float = 0.5, half_height: float = 0.5) -> Tensor:
    """A cone standing on +Z (apex up), base radius ``radius``: the exact capped-cone distance (r2 = 0)."""
    q = torch.stack([points[..., :2].norm(dim=-1), points[..., 2]], dim=-1)
    k1 = torch.tensor([0.0, half_height], dtype=points.dtype)
    k2 = torch.tensor([-radius, 2.0 * half_height], dtype=points.dtype)
    ca = torch.stack([q[..., 0] - torch.minimum(q[..., 0], torch.where(q[..., 1] < 0, radius, 0.0)),
                      q[..., 1].abs() - half_height], dim=-1)
    h = (((k1 - q) * k2).sum(-1) / (k2 * k2).sum()).clamp(0.0, 1.0)
    cb = q - k1 + k2 * h[..., None]
    inside = (cb[..., 0] < 0) & (ca[..., 1] < 0)
    distance = torch.minimum((ca * ca).sum(-1), (cb * cb).sum(-1)).sqrt()
    return torch.where(inside, -distance, distance)


def cylinder_sdf(points: Tensor, radius: float = 0.42, half_height: float = 0.45) -> Tensor:
    d = torch.stack([points[..., :2].norm(dim=-1) - radius, points[..., 2].abs() - half_height], dim=-1)
    return d.amax(-1).clamp_max(0.0) + d.clamp_min(0.0).norm(dim=-1)


def capsule_sdf(points: Tensor, radius: float = 0.3, half_length: float = 0.3) -> Tensor:
    axial = points[..., 2].clamp(-half_length, half_length)
    return (points - F.pad(axial[..., None], (2, 0))).norm(dim=-1) - radius


SHAPES = {"ball": sphere_sdf, "cube": box_sdf, "torus": torus_sdf, "cone": cone_sdf, "cylinder": cylinder_sdf,
          "capsule": capsule_sdf}
COLORS = {
    "red": (0.85, 0.10, 0.10), "orange": (0.95, 0.50, 0.10), "yellow": (0.95, 0.85, 0.15),
    "green": (0.10, 0.70, 0.20), "blue": (0.10, 0.20, 0.85), "purple": (0.50, 0.15, 0.70),
    "pink": (0.95, 0.50, 0.70), "brown": (0.50, 0.30, 0.15),
}
# shape → (feature word, its colour word, the region on the surface); "white" is a feature colour only.
FEATURES = {"ball": ("face", "yellow", face_patch), "cube": ("label", "white", front_label)}
FEATURE_COLORS = {"yellow": COLORS["yellow"], "white": (0.96, 0.96, 0.96)}
FEATURE_SIZES = {"ball": (35.0, 50.0), "cube": (0.18, 0.28)}  # face half-angle (°), label half-size
HELD_OUT = (("green", "cube"), ("purple", "torus"), ("orange", "cone"), ("blue", "cylinder"))

FEATURED_FRACTION = 0.5
FRONTAL_FRACTION = 0.6
VIEW_WORD_FRACTION = 0.25
SHADING_FRACTIONS = {"diffuse": 0.65, "albedo": 0.25, "textureless": 0.10}
WHITE_BACKGROUND_FRACTION = 0.8
DEGRADED_FRACTION = 0.10
DEGRADATIONS = {  # what is done to the image → the negative prompt's words that say it
    "blur": "blurry, out of focus, low-resolution",
    "dark": "dark, gloomy, dull",
    "washed": "low contrast, dull, low quality",
}


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_caption(color: str, shape: str, feature_color: str | None = None) -> str:
    caption = f"{article(color)} {color} {shape}"
    if feature_color is not None:
        word = FEATURES[shape][0]
        caption += f" with {article(feature_color)} {feature_color} {word}"
    return caption


def training_pairs() -> list[tuple[str, str]]:
    return [(color, shape) for shape in SHAPES for color in COLORS if (color, shape) not in HELD_OUT]


def feature_color_for(shape: str, body: str) -> str:
    """The feature's colour word: the shape's own, or white where the body already is that colour."""
    color = FEATURES[shape][1]
    return "white" if color == body else color


def caption_truths(held_out: bool = False) -> list[tuple[str, "Truth"]]:
    """Every object caption (no view words) with its truth, of the training pairs or of the held-out pairs."""
    pairs = list(HELD_OUT) if held_out else training_pairs()
    rows = []
    for color, shape in pairs:
        rows.append((object_caption(color, shape), Truth(shape, color, None)))
        if shape in FEATURES:
            feature = feature_color_for(shape, color)
            rows.append((object_caption(color, shape, feature), Truth(shape, color, feature)))
    return rows


def all_captions(held_out: bool = False) -> list[str]:
    """Every object caption (no view words) of the training pairs, or of the held-out pairs."""
    return [caption for caption, _ in caption_truths(held_out)]


def vocabulary_summary() -> str:
    """The model card's line on what prompts the model takes (the engine shows it beside an unknown word)."""
    features = "; ".join(f"'with a {color} {word}' on a {shape}" for shape, (word, color, _) in FEATURES.items())
    return (f"shapes {', '.join(SHAPES)}; colours {', '.join(COLORS)}; {features} (e.g. 'a red ball', "
            "'a blue cube with a white label')")


def vocabulary() -> list[str]:
    """Every word a caption (with view words) or the trainer's negative prompt can hold, in a fixed order."""
    texts = all_captions() + all_captions(held_out=True) + list(VIEW_SUFFIXES) + [NFSD_NEGATIVE_PROMPT]
    words: dict[str, None] = {}
    for text in texts:
        for word in re.findall(r"[a-z]+|[^\sa-z]", text.lower()):
            words.setdefault(word, None)
    return list(words)


@dataclass(frozen=True)
class Truth:
    """What a sample shows: enough to render it again, or to judge a result against it."""

    shape: str
    color: str
    feature_color: str | None  # None: no feature


def _jitter_color(rgb: tuple[float, float, float], generator: torch.Generator) -> tuple[float, float, float]:
    u = torch.rand(3, generator=generator).tolist()
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    h = (h + (u[0] - 0.5) * 0.04) % 1.0
    s = min(1.0, s * (0.85 + 0.25 * u[1]))
    v = min(1.0, v * (0.85 + 0.25 * u[2]))
    return colorsys.hsv_to_rgb(h, s, v)


def _uniform(generator: torch.Generator, low: float, high: float, n: int) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


@torch.no_grad()
def render_truth(truth: Truth, cameras, size: int, *, body: tuple[float, float, float] | None = None,
                 feature: tuple[float, float, float] | None = None, feature_size: float | None = None,
                 scale: float = 1.0, offset: Tensor | None = None, yaw_deg: float = 0.0,
                 shading: str = "albedo", background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 supersample: int = 2) -> tuple[Tensor, Tensor]:
    """(images (B, 3, S, S) in [0, 1], coverage (B, S, S)) of one instance of ``truth`` from ``cameras``.

    Without instance arguments: the caption's nominal object (its colour word's colour, nominal size, no
    offset), what the judges compare a result with.
    """
    sdf_base = SHAPES[truth.shape]
    offset = torch.zeros(3) if offset is None else offset
    cos, sin = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    rotation = torch.tensor([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])  # world → object

    def to_object(points: Tensor) -> Tensor:
        return ((points - offset) @ rotation.T) / scale

    def sdf(points: Tensor) -> Tensor:
        return sdf_base(to_object(points)) * scale

    surface = trace(sdf, cameras, size * supersample)
    body = COLORS[truth.color] if body is None else body
    albedo = torch.tensor(body).expand(*surface.hit.shape, 3)
    if truth.feature_color is not None:
        region = FEATURES[truth.shape][2]
        low, high = FEATURE_SIZES[truth.shape]
        size_value = (low + high) / 2 if feature_size is None else feature_size
        normals_object = surface.normals @ rotation.T
        is_feature = region(to_object(surface.points), normals_object, size_value)[..., None]
        color = FEATURE_COLORS[truth.feature_color] if feature is None else feature
        albedo = torch.where(is_feature, torch.tensor(color), albedo)
    if shading != "albedo":
        lambert = (surface.normals * cameras.light_dir[:, None, None, :]).sum(-1, keepdim=True).clamp_min(0.0)
        light = AMBIENT + (1.0 - AMBIENT) * lambert
        albedo = albedo * light if shading == "diffuse" else light.expand_as(albedo)
    hit = surface.hit[..., None].to(albedo.dtype)
    image = hit * albedo + (1 - hit) * torch.tensor(background)
    image = F.avg_pool2d(image.permute(0, 3, 1, 2), supersample)
    coverage = F.avg_pool2d(hit.permute(0, 3, 1, 2), supersample)[:, 0]
    return image, coverage


def _degrade(image: Tensor, kind: str) -> Tensor:
    if kind == "blur":
        small = F.interpolate(image[None], scale_factor=0.25, mode="bilinear", align_corners=False)
        return F.interpolate(small, size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
    if kind == "dark":
        return image * 0.35
    mean = image.mean(dim=(1, 2), keepdim=True)  # washed out: low contrast toward grey
    return (0.35 * (image - mean) + 0.6 * mean + 0.3).clamp(0.0, 1.0)


def sample_world(count: int, seed: int, size: int = 32, orbit: OrbitConfig = OrbitConfig(), first: int = 0
                 ) -> tuple[Tensor, list[str], list[Truth]]:
    """Samples ``first`` … ``first + count - 1``: (images (N, 3, S, S) uint8, captions, truths). Sample i depends
    only on (seed, i), so any split of the range renders the same world."""
    images, captions, truths = [], [], []
    pairs = training_pairs()
    for index in range(first, first + count):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        color, shape = pairs[int(torch.randint(len(pairs), (1,), generator=generator))]
        featured = shape in FEATURES and bool(torch.rand(1, generator=generator) < FEATURED_FRACTION)
        truth = Truth(shape, color, feature_color_for(shape, color) if featured else None)
        if featured and bool(torch.rand(1, generator=generator) < FRONTAL_FRACTION):
            azimuth = _uniform(generator, -45.0, 45.0, 1)
        else:
            azimuth = _uniform(generator, -180.0, 180.0, 1)
        elevation = _uniform(generator, *orbit.elevation_range, 1)
        distance = _uniform(generator, *orbit.distance_range, 1)
        fov = _uniform(generator, *orbit.fov_range, 1)
        cameras = make_cameras(elevation, azimuth, distance, fov)
        light = cameras.c2w[:, :3, 3] / distance[:, None] + torch.randn(1, 3, generator=generator) * orbit.light_jitter
        cameras.light_dir = light / light.norm(dim=-1, keepdim=True)
        roll = float(torch.rand(1, generator=generator))
        shading = "diffuse" if roll < SHADING_FRACTIONS["diffuse"] else (
            "albedo" if roll < SHADING_FRACTIONS["diffuse"] + SHADING_FRACTIONS["albedo"] else "textureless")
        if bool(torch.rand(1, generator=generator) < WHITE_BACKGROUND_FRACTION):
            background = (1.0, 1.0, 1.0)
        else:
            background = tuple(_uniform(generator, 0.75, 1.0, 3).tolist())
        low, high = FEATURE_SIZES.get(shape, (0.0, 0.0))
        image, _ = render_truth(
            truth, cameras, size, body=_jitter_color(COLORS[color], generator),
            feature=_jitter_color(FEATURE_COLORS[truth.feature_color], generator) if featured else None,
            feature_size=float(_uniform(generator, low, high, 1)) if featured else None,
            scale=float(_uniform(generator, 0.85, 1.1, 1)), offset=_uniform(generator, -0.05, 0.05, 3),
            yaw_deg=float(_uniform(generator, -15.0, 15.0, 1)), shading=shading, background=background,
        )
        caption = object_caption(color, shape, truth.feature_color)
        if bool(torch.rand(1, generator=generator) < VIEW_WORD_FRACTION):
            caption += f", {VIEW_SUFFIXES[int(view_index(cameras.elevation, cameras.azimuth)[0])]}"
        image = image[0]
        if bool(torch.rand(1, generator=generator) < DEGRADED_FRACTION):
            kind = list(DEGRADATIONS)[int(torch.randint(len(DEGRADATIONS), (1,), generator=generator))]
            image = _degrade(image, kind)
            words = DEGRADATIONS[kind]
            caption = words if bool(torch.rand(1, generator=generator) < 1 / 3) else f"{caption}, {words}"
        images.append((image.clamp(0, 1) * 255).round().to(torch.uint8))
        captions.append(caption)
        truths.append(truth)
    return torch.stack(images), captions, truths

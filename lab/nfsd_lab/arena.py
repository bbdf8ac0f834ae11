r"""The arena: a closed-form prior that fails the way Stable Diffusion does, to argue method changes on.

Still exact and weight-free (posterior means of Gaussian mixtures, as ``analytic.py``, in the same fixed latent
space), but with the three things that make score distillation fail on a real model:

* **Asymmetric objects** (``arena_objects.py``): a ball with a face patch, a cube with a label, each on the
  front only. ∅ also holds the plain ball and cube and a torus, so the feature is what tells the prompt apart
  from ∅ (as plain balls fill Stable Diffusion's ∅) and δ_C carries it. How many sides show the feature is
  measurable (``arena_evaluation.py``).
* **View ambiguity with a frontal bias**: the prior never sees the camera's azimuth, only the prompt's view
  suffix (``Cameras.view``: front / side / back / overhead, the rule the SD prior's suffixes follow). For a
  suffix its data are a mixture over eight azimuths 0°, 45°, …, 315° (``VIEW_AZIMUTH_WEIGHTS``), rendered at
  the row's framing (elevation, distance, field of view: what an image shows of itself). Web images of things
  with a face are mostly frontal and Stable Diffusion obeys "back view" weakly (Perp-Neg, Armandpour et al.
  2023, opens on exactly that), so "back view" holds the front (0°/±45°) at 0.85 and the back at 0.15, "side
  view" the front at 0.6 and ±90° at 0.4, "overhead" and ∅ follow the marginal (0° and ±45° hold 0.6). Plain
  distillation then paints the feature on the back. The bias is that strong because it has to be: at half
  front for "back view" (0.3 front for "side view") plain NFSD was never Janus (seed 0 at 300 and 1000 steps),
  nor at 0.7/0.4 (600 steps, seeds 0 and 1); at 0.85/0.6 it is (README "Janus guard" has the rates).
* **Lit data and an imperfect denoiser**: every reference comes in the renderer's shading modes (albedo,
  diffuse and textureless under three lights in the reference camera's frame, weights 0.2 / 0.5 / 0.3 as the
  trainer draws them), so ``accepts_shading`` is True. Each prompt has two instances (body and feature colours,
  feature size), and the azimuth grid is coarser than the trainer's cameras: the exact posterior mean of this
  finite data set is what a perfectly trained but finite-data denoiser would predict, not the scene.

For x_t = √ᾱ x0 + √(1−ᾱ) ε and x0 ~ Σ_k π_k N(μ_k, σ²I):
E[ε | x_t] = Σ_k r_k √(1−ᾱ)(x_t − √ᾱ μ_k)/v, r_k ∝ π_k exp(−‖x_t − √ᾱ μ_k‖²/2v), v = ᾱσ² + 1 − ᾱ.
The prompt row's π is its suffix's azimuth weights × instance × mode weights over its own object; ∅ spreads
the marginal over every object; the negative prompt is ∅'s mixture degraded (blurred and darkened), as in
the analytic prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nfsd_lab.arena_objects import ARENA_OBJECTS, SHADING_MODES, ArenaObject, arena_object_for, render_arena
from nfsd_server.guidance.analytic import AnalyticPrior, degrade, images_to_latents, mixture_noise_posterior
from nfsd_server.guidance.prior import Conditions, PromptKind
from nfsd_server.guidance.registry import register_prior
from nfsd_server.scene.cameras import BACK, FRONT, OVERHEAD, SIDE, Cameras, make_cameras

AZIMUTHS_DEG = (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0)
# The marginal over azimuths of "all images of the object": mostly frontal (see the module docstring).
MARGINAL_AZIMUTH_WEIGHTS = (0.30, 0.15, 0.10, 0.05, 0.10, 0.05, 0.10, 0.15)
VIEW_AZIMUTH_WEIGHTS = {
    FRONT: (0.60, 0.20, 0.0, 0.0, 0.0, 0.0, 0.0, 0.20),
    SIDE: (0.30, 0.15, 0.20, 0.0, 0.0, 0.0, 0.20, 0.15),
    BACK: (0.50, 0.175, 0.0, 0.025, 0.10, 0.025, 0.0, 0.175),
    OVERHEAD: MARGINAL_AZIMUTH_WEIGHTS,
}
# albedo, diffuse under each light, textureless under each light: as TrainConfig.shading_probabilities.
MODE_WEIGHTS = {"albedo": 0.2, "diffuse": 0.5, "textureless": 0.3}


def mode_weights() -> Tensor:
    """(M,) weights of ``SHADING_MODES``: a mode's share split evenly over its lights."""
    counts = {mode: SHADING_MODES.count(mode) for mode in MODE_WEIGHTS}
    return torch.tensor([MODE_WEIGHTS[mode] / counts[mode] for mode in SHADING_MODES])


def azimuth_weights(views: Tensor) -> Tensor:
    """(N,) long view ids → (N, A) mixture weights over ``AZIMUTHS_DEG`` (rows sum to 1)."""
    table = torch.tensor([VIEW_AZIMUTH_WEIGHTS[view] for view in range(len(VIEW_AZIMUTH_WEIGHTS))])
    return table.to(views.device)[views]


# The prior's data are rendered at these elevations (every ELEVATION_STEP_DEG) from one canonical distance and
# field of view, then zoomed to a row's apparent size: a finite data set, and the prior's renders cached once.
ELEVATION_STEP_DEG = 5.0
CANONICAL_DISTANCE, CANONICAL_FOV_DEG = 3.3, 45.0
SUPERSAMPLE = 2  # rays per pixel along a side in the canonical renders


def grid_cameras(elevation_deg: float) -> Cameras:
    """A cameras at the grid's azimuths, one elevation, the canonical distance and fov."""
    a = len(AZIMUTHS_DEG)
    return make_cameras(torch.full((a,), elevation_deg), torch.tensor(AZIMUTHS_DEG), torch.full((a,), CANONICAL_DISTANCE),
                        torch.full((a,), CANONICAL_FOV_DEG))


def apparent_zoom(cameras: Cameras) -> Tensor:
    """(N,) how much larger the object looks than at the canonical framing: d₀·tan(f₀/2) / (d·tan(f/2))."""
    canonical = CANONICAL_DISTANCE * math.tan(math.radians(CANONICAL_FOV_DEG) / 2)
    return canonical / (cameras.distance * torch.tan(cameras.fov_y / 2))


def zoom_images(images: Tensor, zoom: Tensor) -> Tensor:
    """images (N, K, C, H, W) about their centre by zoom (N,); the border (background) fills what comes in."""
    n, k, c, h, w = images.shape
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / zoom
    grid = F.affine_grid(theta, (n, k * c, h, w), align_corners=False)
    return F.grid_sample(images.reshape(n, k * c, h, w), grid, padding_mode="border", align_corners=False).view_as(images)


@dataclass(frozen=True)
class ArenaPrompts:
    target: ArenaObject
    negative_is_degraded: bool  # False for an empty negative prompt: then "negative" = ∅


class ArenaPrior(AnalyticPrior):
    """View-ambiguous, frontal-biased, lit mixture of asymmetric objects; exact posterior means, no weights."""

    accepts_shading = True

    def __init__(self, device: torch.device | str = "cpu", latent_size: int = 32, sigma: float = 0.1):
        super().__init__(device, latent_size=latent_size, sigma=sigma)
        self.objects = list(ARENA_OBJECTS.values())
        self._canonical: dict[float, tuple[Tensor, Tensor]] = {}  # elevation → canonical_latents

    def prepare_prompts(self, prompt: str, negative_prompt: str) -> ArenaPrompts:
        return ArenaPrompts(target=arena_object_for(prompt), negative_is_degraded=bool(negative_prompt.strip()))

    def canonical_latents(self, elevation_deg: float) -> tuple[Tensor, Tensor]:
        """(clean, degraded): (O·A·I·M, 4, S, S) latents of every object × azimuth × instance × mode at one
        elevation and the canonical framing, and the same degraded (what the negative prompt describes)."""
        if elevation_deg not in self._canonical:
            cameras = grid_cameras(elevation_deg).to(self.device)
            images = torch.stack([render_arena(obj, cameras, self.latent_size, SUPERSAMPLE)[0] for obj in self.objects])
            images = images.flatten(0, 3)  # (O, A, I, M) → rows
            self._canonical[elevation_deg] = images_to_latents(images), images_to_latents(degrade(images))
        return self._canonical[elevation_deg]

    def component_latents(self, cameras: Cameras, degraded: bool = False) -> Tensor:
        """(N, O, A, I, M, 4, S, S): every object × azimuth × instance × shading mode, at each row's framing
        (elevation to the nearest ELEVATION_STEP_DEG, the latents zoomed bilinearly to its apparent size)."""
        steps = torch.round(torch.rad2deg(cameras.elevation.cpu()) / ELEVATION_STEP_DEG) * ELEVATION_STEP_DEG
        latents = torch.stack([self.canonical_latents(float(e))[int(degraded)] for e in steps])  # (N, K, 4, S, S)
        zoomed = zoom_images(latents, apparent_zoom(cameras).to(latents.device))
        shape = (len(self.objects), len(AZIMUTHS_DEG), -1, len(SHADING_MODES))
        return zoomed.view(len(cameras), *shape, 4, self.latent_size, self.latent_size)

    @torch.no_grad()
    def predict_noise(self, latents_noisy: Tensor, t: Tensor, conditions: Conditions) -> Tensor:
        prompts: ArenaPrompts = conditions.prompts
        alpha_bar = self.alphas_cumprod[t]
        clean = self.component_latents(conditions.cameras)  # (N, O, A, I, M, C, S, S)
        n, n_obj, n_az, n_inst, n_mode = clean.shape[:5]
        modes = mode_weights().to(clean.device)
        inst = torch.full((n_inst,), 1.0 / n_inst, device=clean.device)
        # π over (A, I, M) for a row, from its azimuth weights: (N, A·I·M)
        def weights(az: Tensor) -> Tensor:
            return (az[:, :, None, None] * inst[None, None, :, None] * modes[None, None, None, :]).flatten(1)

        target = self.objects.index(prompts.target)
        prompt_means = clean[:, target].flatten(1, 3)
        eps_prompt = mixture_noise_posterior(latents_noisy, prompt_means, alpha_bar, self.sigma,
                                             log_weights=weights(azimuth_weights(conditions.cameras.view)).log())
        marginal = torch.tensor(MARGINAL_AZIMUTH_WEIGHTS, device=clean.device).expand(n, -1)
        null_weights = (weights(marginal) / n_obj).repeat(1, n_obj).log()  # (N, O·A·I·M), objects outermost
        null_means = clean.flatten(1, 4)
        eps_null = mixture_noise_posterior(latents_noisy, null_means, alpha_bar, self.sigma, log_weights=null_weights)
        kinds = conditions.kinds.view(-1, 1, 1, 1)
        eps = torch.where(kinds == PromptKind.PROMPT, eps_prompt, eps_null)
        is_negative = conditions.kinds == PromptKind.NEGATIVE
        if prompts.negative_is_degraded and bool(is_negative.any()):
            degraded = self.component_latents(conditions.cameras, degraded=True).flatten(1, 4)
            eps_negative = mixture_noise_posterior(latents_noisy, degraded, alpha_bar, self.sigma, log_weights=null_weights)
            eps = torch.where(kinds == PromptKind.NEGATIVE, eps_negative, eps)
        return eps


@register_prior("arena")
def load_arena(model: str | None, device: torch.device, latent_size: int = 32, sigma: float = 0.1,
               dtype: str = "auto", encoder: str = "vae") -> ArenaPrior:
    if model is not None:
        raise ValueError(f"the arena prior takes no model (got {model!r}); drop --model")
    if dtype not in ("auto", "fp32") or encoder != "vae":
        raise ValueError(f"the arena prior runs in fp32 with its one fixed encoder (got dtype {dtype!r}, encoder {encoder!r})")
    return ArenaPrior(device, latent_size=latent_size, sigma=sigma)

r"""A closed-form prior: exact denoisers for a known image distribution, to judge optimisation without weights.

A fixed latent space, so the latent-first schedule runs on CPU too: ``encode`` resizes a render to
``image_size``² (8 × ``latent_size``), average-pools it 8×, maps it to [-1, 1] and applies the fixed 3→4 map
``LATENT_MAP`` (the first three columns of a 4×4 Hadamard matrix / 2). Its columns are orthonormal, so
distances between encoded images, and hence every posterior below, are those of the pixels: the latent space
changes the shapes a NeRF renders into, not what the prior prefers.
For a known prompt y at camera c the data are x0 ~ N(μ_y(c), σ²I) in that latent space, μ_y(c) the latent of
an exact (sphere-traced) render of the prompt's reference object on white (``references.py``) at the latent
side. With DDPM noising x_t = √ᾱ x0 + √(1−ᾱ) ε
(ᾱ = ᾱ_t, Stable Diffusion's scaled-linear schedule, T = 1000), x_t | y ~ N(√ᾱ μ_y, v I), v = ᾱσ² + 1 − ᾱ, so

    E[ε | x_t, y] = √(1−ᾱ) (x_t − √ᾱ μ_y) / v                                     (Gaussian)

The empty prompt ∅ is the equal-weight mixture over all references, so its denoiser is exact too:

    E[ε | x_t, ∅] = Σ_k r_k(x_t) √(1−ᾱ) (x_t − √ᾱ μ_k) / v,
    r_k ∝ exp(−‖x_t − √ᾱ μ_k‖² / 2v)                                            (mixture, posterior responsibilities)

The negative prompt is the same mixture over *degraded* references (box-blurred and darkened ×0.5), the
closed-form stand-in for "blurry, dark, low quality". Any non-empty negative prompt means that mixture; an
empty one means ∅ (then NFSD's δ_D is 0 for t ≥ 200). Camera-dependent μ replaces SD's view-suffix prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nfsd_contract import ANALYTIC_ENCODER
from nfsd_server.guidance.prior import Conditions, Prior, PromptKind, RecipeOverrides
from nfsd_server.guidance.registry import register_prior
from nfsd_server.guidance.references import REFERENCES, Reference, reference_for, render_reference


def scaled_linear_alphas_cumprod(num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """ᾱ_t of Stable Diffusion's DDPM schedule: β linear in √β from beta_start to beta_end."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def gaussian_noise_posterior(latents_noisy: Tensor, mean: Tensor, alpha_bar: Tensor, sigma: float) -> Tensor:
    """E[ε | x_t] for x0 ~ N(mean, σ²I). latents_noisy, mean: (N, …); alpha_bar: (N,) → (N, …)."""
    a = alpha_bar.view(-1, *([1] * (latents_noisy.dim() - 1)))
    variance = a * sigma**2 + 1 - a
    return (1 - a).sqrt() * (latents_noisy - a.sqrt() * mean) / variance


def mixture_noise_posterior(
    latents_noisy: Tensor, means: Tensor, alpha_bar: Tensor, sigma: float, log_weights: Tensor | None = None
) -> Tensor:
    """E[ε | x_t] for x0 ~ Σ_k π_k N(means[:, k], σ²I), π equal unless ``log_weights`` (N, K) gives log π
    (−inf drops a component). latents_noisy: (N, …); means: (N, K, …) → (N, …)."""
    n, k = means.shape[:2]
    a = alpha_bar.view(n, 1, *([1] * (latents_noisy.dim() - 1)))
    variance = a * sigma**2 + 1 - a
    residual = latents_noisy[:, None] - a.sqrt() * means  # (N, K, …)
    log_resp = -(residual**2).flatten(2).sum(-1) / (2 * variance.view(n, 1))
    if log_weights is not None:
        log_resp = log_resp + log_weights
    resp = torch.softmax(log_resp, dim=1).view(n, k, *([1] * (latents_noisy.dim() - 1)))
    return ((1 - a).sqrt() * residual / variance * resp).sum(1)


def degrade(images: Tensor) -> Tensor:
    """What the negative prompt describes: blurred (5×5 box) and darkened (×0.5). images (B, 3, H, W) in [0, 1]."""
    return F.avg_pool2d(images, 5, stride=1, padding=2, count_include_pad=False) * 0.5


# Latent channel c = Σ_k LATENT_MAP[c, k] · (2·rgb_k − 1). Orthonormal columns: Wᵀ W = I₃, so decode = Wᵀ.
LATENT_MAP = 0.5 * torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, -1.0], [1.0, -1.0, -1.0]])
LATENT_SCALE = 8


def images_to_latents(images: Tensor) -> Tensor:
    """(B, 3, h, w) in [0, 1] at the latent side → (B, 4, h, w): the fixed per-pixel map, no pooling."""
    return torch.einsum("ck,bkhw->bchw", LATENT_MAP.to(images.device, images.dtype), images * 2.0 - 1.0)


@dataclass(frozen=True)
class AnalyticPrompts:
    target: Reference
    negative_is_degraded: bool  # False for an empty negative prompt: then "negative" = ∅


class AnalyticPrior(Prior):
    """Exact ε-prediction for the reference-object distribution; no weights, any device."""

    accepts_shading = False  # the references are unlit

    def recipe_overrides(self) -> RecipeOverrides:
        # t_min 0.02: below t = 200 NFSD's δ_D is ε(∅) alone, the exact pull toward the reference; at t ≥ 300 the ∅
        # mixture's responsibilities are spread over all references and the colour drifts (a red ball ends
        # magenta). Distances 3.0–3.6: at the recipe's 2.0–2.5 the green torus collapses on this prior, a cause not
        # yet found. Linear annealing: the square root lowers t_max too soon for the torus's hole.
        # (benchmarks/quality.py measures each; README "Priors".)
        return RecipeOverrides(t_min=0.02, t_anneal_power=1.0, distance_range=(3.0, 3.6))

    latent_channels = 4
    latent_scale = LATENT_SCALE

    def __init__(self, device: torch.device | str = "cpu", latent_size: int = 32, sigma: float = 0.1):
        if latent_size < 8:
            raise ValueError(f"latent_size must be at least 8 pixels, got {latent_size}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.device = torch.device(device)
        self.latent_size, self.sigma = latent_size, sigma
        self.image_size = latent_size * LATENT_SCALE
        self.alphas_cumprod = scaled_linear_alphas_cumprod().to(self.device)
        self.references = list(REFERENCES.values())

    def prepare_prompts(self, prompt: str, negative_prompt: str) -> AnalyticPrompts:
        return AnalyticPrompts(target=reference_for(prompt), negative_is_degraded=bool(negative_prompt.strip()))

    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] → (B, 4, S, S): resize to image_size, 8× average pooling, the fixed map."""
        side = self.image_size
        if side % images.shape[-1] == 0 and images.shape[-1] == images.shape[-2]:
            resized = F.interpolate(images, size=(side, side), mode="nearest")  # exact: pooling then undoes it
        else:
            resized = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        return images_to_latents(F.avg_pool2d(resized, LATENT_SCALE))

    def decode(self, latents: Tensor) -> Tensor:
        pixels = torch.einsum("ck,bchw->bkhw", LATENT_MAP.to(latents.device, latents.dtype), latents)
        return ((pixels + 1.0) / 2.0).clamp(0.0, 1.0)

    def latent_color_map(self) -> tuple[Tensor, Tensor]:
        """Exact: latent = W (2·rgb − 1) = 2W·rgb − W·1."""
        return 2.0 * LATENT_MAP, -LATENT_MAP.sum(dim=1)

    def reference_latents(self, reference: Reference, conditions: Conditions) -> Tensor:
        """μ for each row's camera, (N, 4, S, S)."""
        images, _ = render_reference(reference, conditions.cameras, self.latent_size)
        return images_to_latents(images)

    @torch.no_grad()
    def predict_noise(self, latents_noisy: Tensor, t: Tensor, conditions: Conditions) -> Tensor:
        prompts: AnalyticPrompts = conditions.prompts
        alpha_bar = self.alphas_cumprod[t]
        clean = torch.stack([self.reference_latents(ref, conditions) for ref in self.references], dim=1)  # (N, K, …)
        target = clean[:, self.references.index(prompts.target)]
        eps_prompt = gaussian_noise_posterior(latents_noisy, target, alpha_bar, self.sigma)
        eps_null = mixture_noise_posterior(latents_noisy, clean, alpha_bar, self.sigma)
        kinds = conditions.kinds.view(-1, 1, 1, 1)
        eps = torch.where(kinds == PromptKind.PROMPT, eps_prompt, eps_null)
        is_negative = conditions.kinds == PromptKind.NEGATIVE
        if prompts.negative_is_degraded and bool(is_negative.any()):
            degraded = images_to_latents(degrade(self.decode(clean.flatten(0, 1)))).view_as(clean)
            eps_negative = mixture_noise_posterior(latents_noisy, degraded, alpha_bar, self.sigma)
            eps = torch.where(kinds == PromptKind.NEGATIVE, eps_negative, eps)
        return eps


@register_prior("analytic")
def load_analytic(
    model: str | None, device: torch.device, latent_size: int = 32, sigma: float = 0.1, dtype: str = "auto",
    encoder: str = ANALYTIC_ENCODER,
) -> AnalyticPrior:
    if model is not None:
        raise ValueError(
            f"the analytic prior takes no model (got {model!r}); drop --model, or use --prior stable-diffusion"
        )
    if dtype not in ("auto", "fp32"):  # a closed form in fp32: nothing to trade for speed
        raise ValueError(f"the analytic prior runs in fp32 only (got dtype {dtype!r}); use dtype auto or fp32")
    if encoder not in (ANALYTIC_ENCODER, "vae"):  # "vae": what older records and clients call it
        raise ValueError(
            f"the analytic prior has one fixed encoder (8× pooling + a 3→4 map), not {encoder!r}; use encoder auto "
            f"(or {ANALYTIC_ENCODER})"
        )
    return AnalyticPrior(device, latent_size=latent_size, sigma=sigma)

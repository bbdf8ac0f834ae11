"""Score-distillation directions as pure tensor functions.

Every tensor is (B, C, H, W) in the prior's latent space; ``t`` is (B,) integer timesteps in [0, T).
The caller multiplies by w(t) = 1 - alphas_cumprod[t] (see ``timestep_weight``) and applies the
stop-gradient loss ``distillation_loss``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# NFSD (Katzir et al. 2024, Eq. 9): below this timestep the unconditional prediction is almost
# all "in-domain" direction δ_D, above it the noise term must be cancelled with the negative prompt.
NFSD_SMALL_T = 200


def needs_negative(t: Tensor) -> Tensor:
    """(B,) bool: which batch elements need ε(z_t; p_neg) under NFSD (t >= 200)."""
    return t >= NFSD_SMALL_T


# The Janus guard's view negative is evaluated from here up (see guidance/distillation.py for why not below).
GUARD_MIN_T = NFSD_SMALL_T


def guard_active(t: Tensor) -> Tensor:
    """(B,) bool: which batch elements get the Janus guard's view-negative row (t >= GUARD_MIN_T)."""
    return t >= GUARD_MIN_T


def nfsd_direction(
    eps_cond: Tensor, eps_uncond: Tensor, eps_neg: Tensor, t: Tensor, guidance_scale: float,
    delta_cond: Tensor | None = None,
) -> Tensor:
    """NFSD direction δ_D + s·δ_C (paper Eq. 9–10).

    δ_C = ε(z_t; y) − ε(z_t; ∅) unless ``delta_cond`` gives it (the Janus guard's ``perp_neg_delta``);
    δ_D = ε(z_t; ∅) where t < 200, else ε(z_t; ∅) − ε(z_t; p_neg).
    Rows of ``eps_neg`` with t < 200 are ignored (they may hold anything, NaN included).
    """
    _check_batch(eps_cond, eps_uncond, eps_neg, t=t)
    use_neg = needs_negative(t).view(-1, *([1] * (eps_uncond.dim() - 1)))
    delta_domain = torch.where(use_neg, eps_uncond - eps_neg, eps_uncond)
    delta_cond = eps_cond - eps_uncond if delta_cond is None else delta_cond
    return delta_domain + guidance_scale * delta_cond


def sds_direction(
    eps_cond: Tensor, eps_uncond: Tensor, noise: Tensor, guidance_scale: float, delta_cond: Tensor | None = None
) -> Tensor:
    """SDS direction ε_cfg(z_t; y) − ε (Poole et al. 2022), with ε_cfg = ε_∅ + s·δ_C, δ_C = ε_y − ε_∅ by default."""
    _check_batch(eps_cond, eps_uncond, noise)
    delta_cond = eps_cond - eps_uncond if delta_cond is None else delta_cond
    return eps_uncond + guidance_scale * delta_cond - noise


# Janus guard (Perp-Neg, Armandpour et al. 2023): the view negative's weight a·exp(−b·r) + c, with r = 0 straight
# behind and 1 at the side: threestudio's perp_neg_f_fsb (1.97 behind, 1.57 at the side).
VIEW_NEGATIVE_DECAY = (1.0, 0.5, 0.967)
FRONT_HALF_WIDTH_DEG = 45.0  # the "front view" sector (scene/cameras.py's suffix rule)
# The weight ramps in from 0 at 90° (a front feature up to 45° wide still shows at the rim of every camera up
# to there, so pushing "front view" away would erase the real one) to the full f(r) at 135° (behind the sector
# from which any of it shows). Starting at the 45° front sector instead, as threestudio does on Stable
# Diffusion, erased the arena ball's real face too: the side cameras outnumber the front ones 2:1.
GUARD_RAMP_DEG = (90.0, 135.0)


def perpendicular_component(vector: Tensor, onto: Tensor) -> Tensor:
    """vector − (⟨vector, onto⟩ / ‖onto‖²)·onto per batch element; (B, …) each. A zero ``onto`` leaves ``vector``."""
    _check_batch(vector, onto)
    dot = (vector * onto).flatten(1).sum(-1)
    norm2 = (onto * onto).flatten(1).sum(-1)
    scale = torch.where(norm2 > 0, dot / norm2.clamp_min(torch.finfo(norm2.dtype).tiny), torch.zeros_like(dot))
    return vector - scale.view(-1, *([1] * (vector.dim() - 1))) * onto


def view_negative_weight(azimuth: Tensor) -> Tensor:
    """(B,) radians → (B,) weight of the "front view" negative for a camera at that azimuth (0 = front).

    f(r) = a·exp(−b·r) + c with r = (180° − |az|)/90° (f(1) ≈ 1.57 at the side, f(0) ≈ 1.97 straight behind),
    times a ramp from 0 at |az| = 90° to 1 at 135° (``GUARD_RAMP_DEG``): 0 wherever the front can be seen."""
    degrees = torch.rad2deg(torch.remainder(azimuth + math.pi, 2 * math.pi) - math.pi).abs()
    a, b, c = VIEW_NEGATIVE_DECAY
    r = ((180.0 - degrees) / 90.0).clamp(0.0, 1.0)
    start, full = GUARD_RAMP_DEG
    ramp = ((degrees - start) / (full - start)).clamp(0.0, 1.0)
    return (a * torch.exp(-b * r) + c) * ramp


def perp_neg_delta(eps_cond: Tensor, eps_uncond: Tensor, eps_view_neg: Tensor, weight: Tensor) -> Tensor:
    """δ_C − w·(δ_v)⊥δ_C with δ_C = ε_y − ε_∅, δ_v = ε_view_neg − ε_∅ (Perp-Neg Eq. 6 for one negative).

    Only the part of the view negative that is not the prompt's own direction is pushed away from, so the
    prompt is kept and the unwanted view (the front, seen from behind) is removed. (B, C, H, W) each;
    weight (B,) ≥ 0; rows of weight 0 are δ_C exactly, whatever ``eps_view_neg`` holds there (NaN included).
    """
    _check_batch(eps_cond, eps_uncond, eps_view_neg)
    if weight.shape != (eps_cond.shape[0],):
        raise ValueError(f"weight must be one per batch element, shape ({eps_cond.shape[0]},), got {tuple(weight.shape)}")
    delta_cond = eps_cond - eps_uncond
    weight = weight.to(delta_cond.dtype).view(-1, *([1] * (eps_cond.dim() - 1)))
    delta_view = torch.where(weight > 0, eps_view_neg - eps_uncond, torch.zeros_like(delta_cond))
    return delta_cond - weight * perpendicular_component(delta_view, delta_cond)


def clip_score(grad: Tensor, limit: float) -> Tensor:
    """Debiased-SDS score debiasing (Hong et al. 2023, as threestudio's ``grad_clip``): every element of the
    weighted direction w(t)·(…) clamped to ±``limit``. Costs no prior row; the caller ramps ``limit`` up over the
    run, so early steps, where a few large elements (an over-confident feature) would set the layout, are tamed."""
    if not limit > 0:
        raise ValueError(f"the score clip limit must be > 0, got {limit}")
    return grad.clamp(-limit, limit)


def timestep_weight(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """w(t) = 1 − ᾱ_t, shaped (B, 1, 1, 1) for broadcasting over latents."""
    return (1.0 - alphas_cumprod[t]).view(-1, 1, 1, 1)


def distillation_loss(latents: Tensor, grad: Tensor) -> Tensor:
    """Stop-gradient trick: d(loss)/d(latents) == grad / B, so backward() pushes ``grad`` into the generator."""
    grad = torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)
    target = (latents - grad).detach()
    return 0.5 * ((latents - target) ** 2).sum() / latents.shape[0]


def _check_batch(*tensors: Tensor, t: Tensor | None = None) -> None:
    shape = tensors[0].shape
    for other in tensors[1:]:
        if other.shape != shape:
            raise ValueError(f"noise predictions must share one shape, got {tuple(shape)} and {tuple(other.shape)}")
    if t is not None and t.shape != (shape[0],):
        raise ValueError(f"t must be one timestep per batch element, shape ({shape[0]},), got {tuple(t.shape)}")

"""Score-distillation directions as pure tensor functions.

Every tensor is (B, C, H, W) in the prior's latent space; ``t`` is (B,) integer timesteps in [0, T).
The caller multiplies by w(t) = 1 - alphas_cumprod[t] (see ``timestep_weight``) and applies the
stop-gradient loss ``distillation_loss``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nfsd_server.scene.cameras import degrees_from_front

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

    δ_C = ε(z_t; y) − ε(z_t; ∅) unless ``delta_cond`` gives it (the Janus guard's ``view_contrast_delta``);
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


# Janus guard: the view contrast. The guard's row is the prompt itself at the opposite view ("front view" seen
# from behind), so ε_y − ε_view_negative holds the view and not the object; adding it steers each camera toward
# what its own view shows and away from the opposite one. Not Perp-Neg (Armandpour et al. 2023), which keeps δ_C's
# direction: where the second face is being painted, δ_C *is* the face. The contrast is small where the views'
# data barely differ (high t): hence the gain; it must never outgrow what the prompt asks for, or it erases the
# real feature (low t): hence the bound. The measurements behind both: README "Janus guard".
VIEW_CONTRAST_GAIN = 10.0
VIEW_CONTRAST_BOUND = 1.0  # ‖guard term‖ ≤ this × ‖δ_C‖, per image
FRONT_HALF_WIDTH_DEG = 45.0  # the "front view" sector (scene/cameras.py's suffix rule)
# The gain ramps in from 0 at 90° to full at 135°, behind the sector from which any of a front feature up to 45°
# wide shows: steering cameras that still see the real face away from "front view" would erase it.
GUARD_RAMP_DEG = (90.0, 135.0)


def view_contrast_weight(azimuth: Tensor) -> Tensor:
    """(B,) radians → (B,) the view contrast's gain for a camera at that azimuth (0 = front): 0 up to 90°, then
    ramping to ``VIEW_CONTRAST_GAIN`` at 135° and beyond (``GUARD_RAMP_DEG``)."""
    start, full = GUARD_RAMP_DEG
    return VIEW_CONTRAST_GAIN * ((degrees_from_front(azimuth) - start) / (full - start)).clamp(0.0, 1.0)


def view_contrast_delta(eps_cond: Tensor, eps_uncond: Tensor, eps_view_neg: Tensor, weight: Tensor) -> Tensor:
    """δ_C + g with δ_C = ε_y − ε_∅ and g = w·(ε_y − ε_view_neg) shrunk, per image, to ‖g‖ ≤ VIEW_CONTRAST_BOUND·‖δ_C‖.

    (B, C, H, W) each; weight (B,) ≥ 0; rows of weight 0 are δ_C exactly, whatever ``eps_view_neg`` holds there
    (NaN included). Where the prompt is already satisfied (δ_C = 0) the guard is silent, however much the views
    differ."""
    _check_batch(eps_cond, eps_uncond, eps_view_neg)
    if weight.shape != (eps_cond.shape[0],):
        raise ValueError(f"weight must be one per batch element, shape ({eps_cond.shape[0]},), got {tuple(weight.shape)}")
    delta_cond = eps_cond - eps_uncond
    weight = weight.to(delta_cond.dtype).view(-1, *([1] * (eps_cond.dim() - 1)))
    contrast = torch.where(weight > 0, weight * (eps_cond - eps_view_neg), torch.zeros_like(delta_cond))
    limit = VIEW_CONTRAST_BOUND * delta_cond.flatten(1).norm(dim=1)
    norm = contrast.flatten(1).norm(dim=1)
    shrink = torch.where(norm > limit, limit / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.ones_like(norm))
    return delta_cond + shrink.view_as(weight) * contrast


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

"""Score-distillation directions as pure tensor functions.

Every tensor is (B, C, H, W) in the prior's latent space; ``t`` is (B,) integer timesteps in [0, T).
The caller multiplies by w(t) = 1 - alphas_cumprod[t] (see ``timestep_weight``) and applies the
stop-gradient loss ``distillation_loss``.
"""

from __future__ import annotations

import torch
from torch import Tensor

# NFSD (Katzir et al. 2024, Eq. 9): below this timestep the unconditional prediction is almost
# all "in-domain" direction δ_D, above it the noise term must be cancelled with the negative prompt.
NFSD_SMALL_T = 200


def needs_negative(t: Tensor) -> Tensor:
    """(B,) bool: which batch elements need ε(z_t; p_neg) under NFSD (t >= 200)."""
    return t >= NFSD_SMALL_T


def nfsd_direction(eps_cond: Tensor, eps_uncond: Tensor, eps_neg: Tensor, t: Tensor, guidance_scale: float) -> Tensor:
    """NFSD direction δ_D + s·δ_C (paper Eq. 9–10).

    δ_C = ε(z_t; y) − ε(z_t; ∅);  δ_D = ε(z_t; ∅) where t < 200, else ε(z_t; ∅) − ε(z_t; p_neg).
    Rows of ``eps_neg`` with t < 200 are ignored (they may hold anything, NaN included).
    """
    _check_batch(eps_cond, eps_uncond, eps_neg, t=t)
    use_neg = needs_negative(t).view(-1, *([1] * (eps_uncond.dim() - 1)))
    delta_domain = torch.where(use_neg, eps_uncond - eps_neg, eps_uncond)
    delta_cond = eps_cond - eps_uncond
    return delta_domain + guidance_scale * delta_cond


def sds_direction(eps_cond: Tensor, eps_uncond: Tensor, noise: Tensor, guidance_scale: float) -> Tensor:
    """SDS direction ε_cfg(z_t; y) − ε (Poole et al. 2022), with ε_cfg = ε_∅ + s·(ε_y − ε_∅)."""
    _check_batch(eps_cond, eps_uncond, noise)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond) - noise


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

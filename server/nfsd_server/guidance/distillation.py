"""NFSD and SDS as guidance objects: noisy latents in, distillation direction out.

Both share ``predict_rows``, which asks the prior for cond, uncond and (only where needed) negative
noise predictions in ONE batched call: the expensive part of a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nfsd_server.guidance.prior import Conditions, Prior, PromptKind
from nfsd_server.guidance.score import needs_negative, nfsd_direction, sds_direction
from nfsd_server.scene.cameras import Cameras
from nfsd_server.devices import host_to_device


@dataclass
class NoisePredictions:
    """(B, C, h, w) each; ``negative`` rows are zero where the negative prompt was not evaluated."""

    cond: Tensor
    uncond: Tensor
    negative: Tensor
    rows_evaluated: int  # UNet rows in the batched call (for tests and benchmarks)


def predict_rows(
    prior: Prior, latents_noisy: Tensor, t: Tensor, cameras: Cameras, prompts: Any, with_negative: Tensor
) -> NoisePredictions:
    """One prior call over rows [cond (B) | uncond (B) | negative (rows where ``with_negative``)].

    latents_noisy (B, C, h, w) on the prior's device; t (B,) long and with_negative (B,) bool on the CPU,
    so choosing the rows needs no device sync (they are copied to the device without blocking).
    """
    batch, device = latents_noisy.shape[0], latents_noisy.device
    t, with_negative = t.cpu(), with_negative.cpu()
    neg_rows = torch.nonzero(with_negative, as_tuple=False).squeeze(1)
    n_neg = neg_rows.numel()
    kinds = torch.cat(
        [
            torch.full((batch,), PromptKind.PROMPT, dtype=torch.long),
            torch.full((batch,), PromptKind.NULL, dtype=torch.long),
            torch.full((n_neg,), PromptKind.NEGATIVE, dtype=torch.long),
        ]
    )
    rows_t = host_to_device(torch.cat([t, t, t.index_select(0, neg_rows)]), device)
    neg_rows_device = host_to_device(neg_rows, device)
    rows_latents = torch.cat([latents_noisy, latents_noisy, latents_noisy.index_select(0, neg_rows_device)])
    rows_cameras = Cameras.cat([cameras, cameras, cameras.index(neg_rows_device)])
    eps = prior.predict_noise(rows_latents, rows_t, Conditions(host_to_device(kinds, device), rows_cameras, prompts))
    eps_cond, eps_uncond, eps_neg_rows = eps[:batch], eps[batch : 2 * batch], eps[2 * batch :]
    eps_neg = torch.zeros_like(eps_uncond)
    if n_neg:
        eps_neg = eps_neg.index_copy(0, neg_rows_device, eps_neg_rows)
    return NoisePredictions(eps_cond, eps_uncond, eps_neg, rows_evaluated=eps.shape[0])


class ScoreDistillation:
    """Base: ``direction(...)`` returns the (unweighted) score-distillation direction, (B, C, h, w)."""

    name: str

    def __init__(self, guidance_scale: float):
        if not guidance_scale > 0:
            raise ValueError(f"guidance_scale must be > 0, got {guidance_scale}")
        self.guidance_scale = guidance_scale
        self.last_rows_evaluated = 0

    def direction(
        self, prior: Prior, latents_noisy: Tensor, noise: Tensor, t: Tensor, cameras: Cameras, prompts: Any
    ) -> Tensor:
        """latents_noisy, noise (B, C, h, w) on the prior's device; t (B,) long, best on the CPU (else one sync)."""
        raise NotImplementedError


class NFSDGuidance(ScoreDistillation):
    """Noise-Free Score Distillation (Katzir et al. 2024): δ_D + s·δ_C; the negative prompt only for t ≥ 200."""

    name = "nfsd"

    def direction(self, prior, latents_noisy, noise, t, cameras, prompts):
        t = t.cpu()  # the trainer samples t on the CPU: no sync here, none to pick the negative rows
        eps = predict_rows(prior, latents_noisy, t, cameras, prompts, needs_negative(t))
        self.last_rows_evaluated = eps.rows_evaluated
        t_device = host_to_device(t, latents_noisy.device)
        return nfsd_direction(eps.cond, eps.uncond, eps.negative, t_device, self.guidance_scale)


class SDSGuidance(ScoreDistillation):
    """Score Distillation Sampling (Poole et al. 2022): ε_cfg − ε."""

    name = "sds"

    def direction(self, prior, latents_noisy, noise, t, cameras, prompts):
        with_negative = torch.zeros(t.shape[0], dtype=torch.bool)
        eps = predict_rows(prior, latents_noisy, t, cameras, prompts, with_negative)
        self.last_rows_evaluated = eps.rows_evaluated
        return sds_direction(eps.cond, eps.uncond, noise, self.guidance_scale)


GUIDANCES: dict[str, type[ScoreDistillation]] = {"nfsd": NFSDGuidance, "sds": SDSGuidance}


def make_guidance(method: str, guidance_scale: float) -> ScoreDistillation:
    if method not in GUIDANCES:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(GUIDANCES)}")
    return GUIDANCES[method](guidance_scale)

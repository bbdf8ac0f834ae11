"""NFSD and SDS as guidance objects: noisy latents in, distillation direction out; DDS for edits.

Both share ``predict_rows``, which asks the prior for cond, uncond, (only where needed) negative and, with the
Janus guard, view-negative noise predictions in ONE batched call: the expensive part of a step.

The Janus guard (view negatives): each image with t ≥ ``GUARD_MIN_T`` gets one more row, the prompt seen from
its *view negative*, "front view" for a camera outside the front sector ("back view" for a front camera). That
row is an ordinary prompt row at a camera moved to the negative view, so every prior answers it as it answers
the prompt: Stable Diffusion from its cached view-suffix embeddings, the analytic
prior (which sees the camera) from that camera. δ_C is steered along the view contrast ε_y − ε_view_negative,
bounded by ‖δ_C‖ (``score.view_contrast_delta``, which says why not Perp-Neg's perpendicular part), with a gain
that is 0 within 90° of the front (``score.GUARD_RAMP_DEG``); the row is evaluated there all the same, so the
batch shape needs no host sync on the cameras. Below t = 200 the guard is off: at that little noise the layout
(which side has the face) is already decided and the prior only sharpens it, and there NFSD evaluates 2 rows,
so a third would cost 1.5× where the guard earns nothing; at t ≥ 200 it is 4 rows for NFSD's 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import math

import torch
from torch import Tensor

from nfsd_server.guidance.prior import Conditions, Prior, PromptKind
from nfsd_server.guidance.score import (
    FRONT_HALF_WIDTH_DEG, GUARD_MIN_T, NFSD_SMALL_T, guard_active, needs_negative, nfsd_direction, sds_direction,
    view_contrast_delta, view_contrast_weight,
)
from nfsd_server.scene.cameras import BACK, FRONT, Cameras, degrees_from_front, look_at_origin
from nfsd_server.devices import host_to_device


@dataclass
class NoisePredictions:
    """(B, C, h, w) each; ``negative`` rows are zero where the negative prompt was not evaluated; so are
    ``view_negative`` rows where the view negative was not (all of it None unless asked for: the Janus guard)."""

    cond: Tensor
    uncond: Tensor
    negative: Tensor
    rows_evaluated: int  # UNet rows in the batched call (for tests and benchmarks)
    view_negative: Tensor | None = None


def view_negative_cameras(cameras: Cameras) -> Cameras:
    """Each camera moved to its view negative: azimuth 180° and view BACK for a front camera (|az| ≤ 45°), else
    azimuth 0° and view FRONT (overhead cameras too); elevation, distance and fov kept, the light turned along."""
    is_front = degrees_from_front(cameras.azimuth) <= FRONT_HALF_WIDTH_DEG
    target = torch.where(is_front, torch.full_like(cameras.azimuth, math.pi), torch.zeros_like(cameras.azimuth))
    turn = target - cameras.azimuth  # whole turns in it cancel in cos and sin
    cos, sin = torch.cos(turn), torch.sin(turn)
    lx, ly, lz = cameras.light_dir.unbind(-1)
    light = torch.stack([cos * lx - sin * ly, sin * lx + cos * ly, lz], dim=-1)
    view = torch.where(is_front, torch.full_like(cameras.view, BACK), torch.full_like(cameras.view, FRONT))
    return Cameras(c2w=look_at_origin(cameras.elevation, target, cameras.distance), fov_y=cameras.fov_y,
                   elevation=cameras.elevation, azimuth=target, distance=cameras.distance, view=view, light_dir=light)


def _scatter_rows(rows: Tensor, index: Tensor, like: Tensor) -> Tensor:
    """``like``-shaped zeros with ``rows`` at batch positions ``index``."""
    return torch.zeros_like(like).index_copy(0, index, rows) if index.numel() else torch.zeros_like(like)


def predict_rows(
    prior: Prior, latents_noisy: Tensor, t: Tensor, cameras: Cameras, prompts: Any, with_negative: Tensor,
    with_view_negative: Tensor | None = None,
) -> NoisePredictions:
    """One prior call over rows [cond (B) | uncond (B) | negative (rows where ``with_negative``) | view negative
    (rows where ``with_view_negative``: the prompt at ``view_negative_cameras``)].

    latents_noisy (B, C, h, w) on the prior's device; t (B,) long and the (B,) bool masks on the CPU, so
    choosing the rows needs no device sync (they are copied to the device without blocking).
    """
    batch, device = latents_noisy.shape[0], latents_noisy.device
    t, with_negative = t.cpu(), with_negative.cpu()
    neg_rows = torch.nonzero(with_negative, as_tuple=False).squeeze(1)
    guarded = with_view_negative is not None
    view_rows = torch.nonzero(with_view_negative.cpu(), as_tuple=False).squeeze(1) if guarded else neg_rows[:0]
    n_neg, n_view = neg_rows.numel(), view_rows.numel()
    kinds = torch.cat(
        [
            torch.full((batch,), PromptKind.PROMPT, dtype=torch.long),
            torch.full((batch,), PromptKind.NULL, dtype=torch.long),
            torch.full((n_neg,), PromptKind.NEGATIVE, dtype=torch.long),
            torch.full((n_view,), PromptKind.PROMPT, dtype=torch.long),
        ]
    )
    rows_t = host_to_device(torch.cat([t, t, t.index_select(0, neg_rows), t.index_select(0, view_rows)]), device)
    neg_rows_device, view_rows_device = host_to_device(neg_rows, device), host_to_device(view_rows, device)
    rows_latents = torch.cat([latents_noisy, latents_noisy, latents_noisy.index_select(0, neg_rows_device),
                              latents_noisy.index_select(0, view_rows_device)])
    camera_parts = [cameras, cameras, cameras.index(neg_rows_device)]
    if n_view:
        camera_parts.append(view_negative_cameras(cameras.index(view_rows_device)))
    rows_cameras = Cameras.cat(camera_parts)
    eps = prior.predict_noise(rows_latents, rows_t, Conditions(host_to_device(kinds, device), rows_cameras, prompts))
    eps_cond, eps_uncond = eps[:batch], eps[batch : 2 * batch]
    eps_neg = _scatter_rows(eps[2 * batch : 2 * batch + n_neg], neg_rows_device, eps_uncond)
    eps_view = _scatter_rows(eps[2 * batch + n_neg :], view_rows_device, eps_uncond) if guarded else None
    return NoisePredictions(eps_cond, eps_uncond, eps_neg, rows_evaluated=eps.shape[0], view_negative=eps_view)


def images_above(batch: int, t_lo: int, t_hi: int, threshold: int) -> range:
    """How many of ``batch`` images can have t ≥ ``threshold`` when t is drawn from [t_lo, t_hi)."""
    some_below, some_above = t_lo < threshold, t_hi - 1 >= threshold
    return range(0 if some_below else batch, (batch if some_above else 0) + 1)


class ScoreDistillation:
    """Base: ``direction(...)`` returns the (unweighted) score-distillation direction, (B, C, h, w).

    ``janus_guard``: view negatives (one more prior row per image, see the module docstring)."""

    name: str

    def __init__(self, guidance_scale: float, janus_guard: bool = False):
        if not guidance_scale > 0:
            raise ValueError(f"guidance_scale must be > 0, got {guidance_scale}")
        self.guidance_scale = guidance_scale
        self.janus_guard = janus_guard
        self.last_rows_evaluated = 0

    def direction(
        self, prior: Prior, latents_noisy: Tensor, noise: Tensor, t: Tensor, cameras: Cameras, prompts: Any
    ) -> Tensor:
        """latents_noisy, noise (B, C, h, w) on the prior's device; t (B,) long, best on the CPU (else one sync)."""
        raise NotImplementedError

    def row_counts(self, batch: int, t_lo: int, t_hi: int) -> list[int]:
        """Every row count the batched prior call can have for ``batch`` images with t in [t_lo, t_hi)."""
        views = images_above(batch, t_lo, t_hi, GUARD_MIN_T) if self.janus_guard else range(1)
        return [2 * batch + n for n in views]

    def predictions(self, prior, latents_noisy, t, cameras, prompts, with_negative: Tensor) -> tuple[NoisePredictions, Tensor]:
        """The batched prior call and δ_C (steered by the view contrast with ``janus_guard`` where t ≥ GUARD_MIN_T),
        (B, C, h, w)."""
        guarded = guard_active(t) if self.janus_guard else None
        eps = predict_rows(prior, latents_noisy, t, cameras, prompts, with_negative, with_view_negative=guarded)
        self.last_rows_evaluated = eps.rows_evaluated
        if eps.view_negative is None:
            return eps, eps.cond - eps.uncond
        weight = view_contrast_weight(cameras.azimuth) * host_to_device(guarded, cameras.azimuth.device)
        return eps, view_contrast_delta(eps.cond, eps.uncond, eps.view_negative, weight)


class NFSDGuidance(ScoreDistillation):
    """Noise-Free Score Distillation (Katzir et al. 2024): δ_D + s·δ_C; the negative prompt only for t ≥ 200."""

    name = "nfsd"

    def row_counts(self, batch, t_lo, t_hi):
        # An image gets a negative row when its t ≥ NFSD_SMALL_T (and, guarded, a view-negative row: GUARD_MIN_T
        # is the same threshold), so t in [t_lo, t_hi) decides how many can.
        per_image = 2 if self.janus_guard else 1
        return [2 * batch + per_image * n for n in images_above(batch, t_lo, t_hi, NFSD_SMALL_T)]

    def direction(self, prior, latents_noisy, noise, t, cameras, prompts):
        t = t.cpu()  # the trainer samples t on the CPU: no sync here, none to pick the negative rows
        eps, delta_cond = self.predictions(prior, latents_noisy, t, cameras, prompts, needs_negative(t))
        t_device = host_to_device(t, latents_noisy.device)
        return nfsd_direction(eps.cond, eps.uncond, eps.negative, t_device, self.guidance_scale, delta_cond=delta_cond)


class SDSGuidance(ScoreDistillation):
    """Score Distillation Sampling (Poole et al. 2022): ε_cfg − ε."""

    name = "sds"

    def direction(self, prior, latents_noisy, noise, t, cameras, prompts):
        t = t.cpu()  # the guard picks its rows from t on the host, as NFSD picks its negative rows
        with_negative = torch.zeros(t.shape[0], dtype=torch.bool)
        eps, delta_cond = self.predictions(prior, latents_noisy, t, cameras, prompts, with_negative)
        return sds_direction(eps.cond, eps.uncond, noise, self.guidance_scale, delta_cond=delta_cond)


class DeltaDenoising(ScoreDistillation):
    """Delta Denoising Score (Hertz et al. 2023) for an edit: the edit's render z and its frozen source's z̃,
    noised with the same ε at the same t, give s·(δ_C(z_t; y_edit) − δ_C(z̃_t; y_source)). In NFSD's terms the
    noise and domain parts of the two scores are alike wherever the renders agree and cancel; what is left is
    what the new prompt asks beyond the old one. One prior call of 4B rows (y and ∅ for each render), and with
    ``janus_guard`` one view-negative row more per edit image at t ≥ GUARD_MIN_T, steering the edit's δ_C as a
    new run's (a feature the edit adds goes on the front only). Its direction needs the source: ``edit_direction``."""

    name = "dds"

    def direction(self, prior, latents_noisy, noise, t, cameras, prompts):
        raise TypeError("delta denoising compares an edit with its source: call edit_direction")

    def row_counts(self, batch: int, t_lo: int, t_hi: int) -> list[int]:
        views = images_above(batch, t_lo, t_hi, GUARD_MIN_T) if self.janus_guard else range(1)
        return [4 * batch + n for n in views]

    def deltas(self, prior: Prior, latents_noisy: Tensor, source_noisy: Tensor, t: Tensor, cameras: Cameras,
               prompts: Any, source_prompts: Any) -> tuple[Tensor, Tensor, Tensor]:
        """(δ_C(z_t; y_edit) (guarded), δ_C(z̃_t; y_source), ε(z_t; ∅)), each (B, C, h, w), from one batched call."""
        batch, device = latents_noisy.shape[0], latents_noisy.device
        t = t.cpu()
        guarded = guard_active(t) if self.janus_guard else torch.zeros(batch, dtype=torch.bool)
        view_rows = torch.nonzero(guarded, as_tuple=False).squeeze(1)
        view_rows_device = host_to_device(view_rows, device)
        pair = [torch.full((batch,), PromptKind.PROMPT, dtype=torch.long),
                torch.full((batch,), PromptKind.NULL, dtype=torch.long)]
        edit_kinds = torch.cat([*pair, torch.full((view_rows.numel(),), PromptKind.PROMPT, dtype=torch.long)])
        edit_cameras = [cameras, cameras]
        if view_rows.numel():
            edit_cameras.append(view_negative_cameras(cameras.index(view_rows_device)))
        edit_rows = torch.cat([latents_noisy, latents_noisy, latents_noisy.index_select(0, view_rows_device)])
        edit, source = prior.predict_noise_groups([
            (edit_rows, host_to_device(torch.cat([t, t, t.index_select(0, view_rows)]), device),
             Conditions(host_to_device(edit_kinds, device), Cameras.cat(edit_cameras), prompts)),
            (torch.cat([source_noisy, source_noisy]), host_to_device(torch.cat([t, t]), device),
             Conditions(host_to_device(torch.cat(pair), device), Cameras.cat([cameras, cameras]), source_prompts)),
        ])
        self.last_rows_evaluated = len(edit_rows) + 2 * batch
        cond, uncond = edit[:batch], edit[batch : 2 * batch]
        if self.janus_guard:
            view_negative = _scatter_rows(edit[2 * batch :], view_rows_device, uncond)
            weight = view_contrast_weight(cameras.azimuth) * host_to_device(guarded, cameras.azimuth.device)
            delta_edit = view_contrast_delta(cond, uncond, view_negative, weight)
        else:
            delta_edit = cond - uncond
        return delta_edit, source[:batch] - source[batch:], uncond

    def edit_direction(self, prior: Prior, latents_noisy: Tensor, source_noisy: Tensor, t: Tensor, cameras: Cameras,
                       prompts: Any, source_prompts: Any) -> Tensor:
        """latents_noisy, source_noisy (B, C, h, w) on the prior's device, noised alike; t (B,) long."""
        delta_edit, delta_source, _ = self.deltas(prior, latents_noisy, source_noisy, t, cameras, prompts,
                                                  source_prompts)
        return self.guidance_scale * (delta_edit - delta_source)


GUIDANCES: dict[str, type[ScoreDistillation]] = {"nfsd": NFSDGuidance, "sds": SDSGuidance}


def make_guidance(method: str, guidance_scale: float, janus_guard: bool = False) -> ScoreDistillation:
    if method not in GUIDANCES:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(GUIDANCES)}")
    return GUIDANCES[method](guidance_scale, janus_guard=janus_guard)

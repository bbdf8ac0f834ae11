"""Experiment knobs no shipped entry point sets, plugged into the trainer through its hooks."""

from __future__ import annotations

from typing import Callable

from torch import Tensor


def clip_score(grad: Tensor, limit: float) -> Tensor:
    """Debiased-SDS score clipping (Hong et al. 2023, as threestudio's ``grad_clip``): every element of the
    weighted direction w(t)·(…) clamped to ±``limit``. Costs no prior row."""
    if not limit > 0:
        raise ValueError(f"the score clip limit must be > 0, got {limit}")
    return grad.clamp(-limit, limit)


def score_clip_hook(start: float, end: float) -> Callable[[Tensor, float], Tensor]:
    """A ``Trainer.grad_hook`` clipping with a limit linear from ``start`` to ``end`` over the run, so early
    steps, where a few large elements (an over-confident feature) would set the layout, are tamed."""
    if not 0 < start <= end:
        raise ValueError(f"score clip must be (start, end) with 0 < start ≤ end, got {(start, end)}")
    return lambda grad, progress: clip_score(grad, start + (end - start) * progress)

"""A fixed number of field evaluations per render, chosen from the occupied samples with no host sync.

``keep.nonzero()`` returns as many samples as are occupied, so the host must wait for the device to learn that
count before it can size the field's input: one sync per step, and a shape that changes every step, so the step
cannot be captured (CUDA graphs) or compiled without recompiles. Here the field always sees ``budget`` samples:
the occupied ones in their order when they fit, or, when more are occupied, ``budget`` of them evenly spaced in
that order with their density scaled by occupied ÷ budget, so the kept samples carry the optical depth of the
ones between them (a coarser Riemann sum of the same integral: the image loses detail, not opacity). Slots
beyond the occupied count repeat sample 0 and are masked out. Every shape depends on ``budget`` alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Budgets are whole 1/BUDGET_STEPS of all samples, so a CUDA graph or compiled step is reused until the
# occupied share moves by a step (a few shapes per run, not one per refresh).
BUDGET_STEPS = 64


@dataclass
class BudgetSlots:
    """Which samples fill the field's ``budget`` slots.

    indices (K,) long into the flattened samples (0 in unused slots); valid (K,) bool; density_scale () float
    (≥ 1: occupied ÷ K when more samples are occupied than fit); occupied () long, the occupied count."""

    indices: Tensor
    valid: Tensor
    density_scale: Tensor
    occupied: Tensor


def budget_slots(keep: Tensor, budget: int) -> BudgetSlots:
    """keep (N,) bool → the ``budget`` slots (see the module docstring); fixed shapes, no host sync."""
    if budget < 1:
        raise ValueError(f"a sample budget must be ≥ 1, got {budget}")
    n = keep.shape[0]
    rank = keep.long().cumsum(0) - 1  # (N,): the occupied sample's place in order (its predecessor's if empty)
    occupied = (rank[-1] + 1) if n else rank.new_zeros(())
    spread = occupied.clamp_min(budget)
    slot = torch.div(rank * budget, spread, rounding_mode="floor")  # occupied ≤ budget: slot = rank
    previous = torch.cat([slot.new_full((1,), -1), slot[:-1]])
    first_in_slot = keep & (slot != previous)  # one sample per slot: exactly min(occupied, budget) of them
    # Samples that fill no slot write into a spare one past the end, dropped below.
    target = torch.where(first_in_slot, slot, torch.full_like(slot, budget))
    indices = keep.new_zeros(budget + 1, dtype=torch.long).scatter(0, target, torch.arange(n, device=keep.device))
    valid = torch.arange(budget, device=keep.device) < occupied
    return BudgetSlots(indices[:budget], valid, spread.float() / budget, occupied)


def scatter_to_samples(values: Tensor, slots: BudgetSlots, n_samples: int) -> Tensor:
    """values (K, ...) per slot → (N, ...) per sample: a slot's value at its sample, 0 at every other sample
    (differentiable in ``values``)."""
    masked = values * slots.valid.view(-1, *[1] * (values.dim() - 1)).to(values.dtype)
    target = torch.where(slots.valid, slots.indices, torch.full_like(slots.indices, n_samples))
    out = values.new_zeros((n_samples + 1, *values.shape[1:]))
    return out.index_put((target,), masked)[:n_samples]


def budget_steps_for(occupied_share: float, headroom: float) -> int:
    """How many 1/BUDGET_STEPS of all samples (1..BUDGET_STEPS) hold ``occupied_share`` (0..1) × ``headroom``."""
    return min(max(math.ceil(occupied_share * headroom * BUDGET_STEPS), 1), BUDGET_STEPS)


def budget_size(budget_steps: int, n_samples: int) -> int:
    """The field's sample count for a render of ``n_samples`` samples at ``budget_steps`` (≥ 1)."""
    return max(n_samples * budget_steps // BUDGET_STEPS, 1)

"""Watch the prior's outputs for NaN/inf: a model that diverges (fp16 overflow, broken weights) must fail the job.

``distillation_loss`` zeroes non-finite directions and the trainer zeroes non-finite gradients, so one bad
step is survivable and costs nothing; a persistent run of them means the NeRF is no longer being trained, and
the job has to stop with a message instead of exporting the starting blob. Counting happens on the device
(no sync per step); ``check`` reads the counters when the trainer already syncs (progress reads, the end).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Consecutive steps of non-finite prior output that fail the job.
NONFINITE_STEP_LIMIT = 5


class NonFiniteOutputError(FloatingPointError):
    """The prior produced NaN/inf for ``NONFINITE_STEP_LIMIT`` steps in a row; the message says when and what to try."""


def nonfinite_hint(prior_dtype: torch.dtype | None) -> str:
    """What to try: full precision if the prior runs in half precision, else the model itself is suspect."""
    if prior_dtype is None or prior_dtype == torch.float32:
        return "the model's weights may be broken: check the model, or lower the guidance scale"
    return "try --dtype fp32"


class NonFiniteWatch:
    """Device-side counters of steps whose prior output held NaN or inf."""

    def __init__(self, device: torch.device, hint: str = "try --dtype fp32", limit: int = NONFINITE_STEP_LIMIT):
        if limit < 1:
            raise ValueError(f"limit must be ≥ 1 consecutive steps, got {limit}")
        self.limit, self.hint = limit, hint
        zero = torch.zeros((), dtype=torch.long, device=device)
        self.run = zero.clone()  # consecutive bad steps ending at the latest step
        self.total = zero.clone()  # bad steps in all
        self.run_start = zero.clone()  # 1-based step where the current (or failing) run began
        self.failed_at = zero.clone() - 1  # run_start of the first run that reached the limit; -1: none
        self.failed_nan = torch.zeros((), dtype=torch.bool, device=device)

    def observe(self, prior_output: Tensor, step: int) -> None:
        """prior_output: anything computed from this step's noise predictions; step: 1-based step number."""
        has_nan = torch.isnan(prior_output).any()
        bad = has_nan | torch.isinf(prior_output).any()
        self.run_start = torch.where(bad & (self.run == 0), step, self.run_start)
        self.run = torch.where(bad, self.run + 1, 0)
        self.total += bad.long()
        first_failure = (self.run >= self.limit) & (self.failed_at < 0)
        self.failed_at = torch.where(first_failure, self.run_start, self.failed_at)
        self.failed_nan = torch.where(first_failure, has_nan, self.failed_nan)

    def check(self) -> None:
        """Raise NonFiniteOutputError if a run of ``limit`` bad steps happened (syncs the device once)."""
        failed_at = int(self.failed_at)
        if failed_at >= 0:
            what = "NaN" if bool(self.failed_nan) else "infinite values"
            raise NonFiniteOutputError(
                f"the model produced {what} at step {failed_at} ({self.limit} steps in a row); {self.hint}"
            )

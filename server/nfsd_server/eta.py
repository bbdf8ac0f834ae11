"""Seconds left of the training loop, timed from the end of its first step (pure Python, no torch)."""

from __future__ import annotations

import time
from typing import Callable


class EtaClock:
    """The first step carries one-off costs later steps do not (CUDA context, kernel selection, the allocator's
    first blocks, lazily built caches); averaging it in made the first ETA 2–3× too high (6:40 shown for a
    2:57 run). So the rate is measured over the steps after it, and the ETA is unknown (None) until one such
    step has run."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._first: tuple[float, int] | None = None  # (time, step) when the first step ended

    def step_done(self, step: int) -> None:
        if self._first is None:
            self._first = (self._clock(), step)

    def eta_s(self, step: int, total: int) -> float | None:
        if self._first is None or step <= self._first[1]:
            return None
        started, first_step = self._first
        return (self._clock() - started) / (step - first_step) * (total - step)

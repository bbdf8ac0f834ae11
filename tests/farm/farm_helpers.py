"""Helpers for the farm tests (a module of its own so test files import it by a repository-unique name)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# Keep the Ray tests cheap: analytic prior, draft preset, few steps, small export.
FAST = ["--steps", "40", "--texture-size", "512", "--poly-budget", "2000"]
FAST_JOB = {"prior": "analytic", "preset": "draft", "steps": 40, "texture_size": 512, "poly_budget": 2000}


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; return its value, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")

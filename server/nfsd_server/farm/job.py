"""The one place the farm touches the pipeline's settings and job function (adapt here when they move)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nfsd_server.guidance.prior import Prior
from nfsd_server.pipeline import Callbacks, GenerationCancelled, GenerationResult, run_generation
from nfsd_server.settings import GenerationSettings

__all__ = [
    "Callbacks", "GenerationCancelled", "GenerationResult", "GenerationSettings",
    "run_job", "settings_for", "settings_record", "total_steps",
]


def run_job(
    settings: GenerationSettings, prior: Prior, out_dir: Path, callbacks: Callbacks, resume: bool = False
) -> GenerationResult:
    """Exactly what the in-process job worker runs."""
    return run_generation(settings, prior, out_dir, callbacks, resume=resume)


def settings_for(args: argparse.Namespace, prompt: str, seed: int) -> GenerationSettings:
    """``nfsd generate``'s validation and defaults, for one (prompt, seed) of a batch."""
    from nfsd_server.generate_command import settings_from_args

    return settings_from_args(argparse.Namespace(**{**vars(args), "prompt": prompt, "seed": seed}))


def settings_record(settings: GenerationSettings) -> dict[str, Any]:
    return asdict(settings)


def total_steps(settings: GenerationSettings) -> int:
    return settings.steps

"""Priors by name: ``register_prior`` (a decorator on a factory) and ``load_prior``.

Apart from the interface (``prior.py``), so the interface never imports its implementations. The product's
priors are imported here, lazily, so ``import nfsd_server`` stays cheap (no diffusers at import time). Other
packages (a laboratory's experimental prior) register theirs with ``register_prior`` when they are imported; this module
never imports them.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from nfsd_server.devices import default_device
from nfsd_server.guidance.prior import Prior

# name → factory(model: str | None, device: torch.device, **options) -> Prior
_PRIORS: dict[str, Callable[..., Prior]] = {}


def register_prior(name: str) -> Callable[[Callable[..., Prior]], Callable[..., Prior]]:
    def decorator(factory: Callable[..., Prior]) -> Callable[..., Prior]:
        if name in _PRIORS:
            raise ValueError(f"prior {name!r} is registered twice")
        _PRIORS[name] = factory
        return factory

    return decorator


def load_prior(name: str, model: str | None = None, device: torch.device | str | None = None, **options: Any) -> Prior:
    """Build the prior registered as ``name`` (e.g. "stable-diffusion" with a hub id or folder, "analytic")."""
    _import_builtin_priors()
    if name not in _PRIORS:
        raise ValueError(f"unknown prior {name!r}; expected one of {sorted(_PRIORS)}")
    device = torch.device(device) if device is not None else default_device()
    return _PRIORS[name](model=model, device=device, **options)


def _import_builtin_priors() -> None:
    from nfsd_server.guidance import analytic, stable_diffusion  # noqa: F401

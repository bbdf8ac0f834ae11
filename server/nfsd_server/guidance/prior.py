"""What a denoising prior must offer the score-distillation loop.

A prior evaluates ε(z_t; c, t) for a batch of rows, where every row carries its own condition kind
(the job prompt, the empty prompt ∅, or the negative prompt) and its camera. The guidance classes build
one batch of rows per step (cond, uncond and — only where needed — negative), so every prior gets a
single batched call per step.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable

import torch
from torch import Tensor

from nfsd_server.devices import default_device
from nfsd_server.scene.cameras import Cameras


class PromptKind(IntEnum):
    PROMPT = 0
    NULL = 1
    NEGATIVE = 2


@dataclass
class Conditions:
    """Per-row conditions for ``Prior.predict_noise``.

    kinds: (N,) long PromptKind per row; cameras: N cameras (row i's camera); prompts: the job's
    prepared prompts (``Prior.prepare_prompts``), shared by every row.
    """

    kinds: Tensor
    cameras: Cameras
    prompts: Any


class Prior(abc.ABC):
    """A frozen denoiser: encodes renders to its latent space and predicts the noise in noisy latents."""

    #: (T,) float32 ᾱ_t on ``device`` (the DDPM schedule; T = 1000 for Stable Diffusion).
    alphas_cumprod: Tensor
    #: Side length in pixels the prior wants renders resized to before ``encode``.
    image_size: int
    device: torch.device
    #: False for priors whose data is unlit (the analytic one): training then renders albedo only,
    #: because shading would make every render disagree with the data however good the NeRF is.
    accepts_shading: bool = True

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @abc.abstractmethod
    def prepare_prompts(self, prompt: str, negative_prompt: str) -> Any:
        """Everything per-job that depends on text (e.g. embeddings for every view suffix), computed once.

        Raises ValueError naming the prompt if the prior cannot condition on it.
        """

    @abc.abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """images: (B, 3, H, W) in [0, 1] → latents z0 (B, C, h, w), differentiable w.r.t. images."""

    @abc.abstractmethod
    def predict_noise(self, latents_noisy: Tensor, t: Tensor, conditions: Conditions) -> Tensor:
        """latents_noisy: (N, C, h, w); t: (N,) long → ε prediction (N, C, h, w) in float32, no grad."""

    def compile(self) -> None:
        """torch.compile the network ``predict_noise`` runs, in place (idempotent); a no-op unless overridden."""

    def decode(self, latents: Tensor) -> Tensor:
        """latents → images (B, 3, H, W) in [0, 1]; used for previews and debugging only."""
        raise NotImplementedError(f"{type(self).__name__} cannot decode latents")


# name → factory(model: str | None, device: torch.device, **options) -> Prior
_PRIORS: dict[str, Callable[..., Prior]] = {}


def register_prior(name: str) -> Callable[[Callable[..., Prior]], Callable[..., Prior]]:
    def decorator(factory: Callable[..., Prior]) -> Callable[..., Prior]:
        if name in _PRIORS:
            raise ValueError(f"prior {name!r} is registered twice")
        _PRIORS[name] = factory
        return factory

    return decorator


def prior_names() -> list[str]:
    _import_builtin_priors()
    return sorted(_PRIORS)


def load_prior(name: str, model: str | None = None, device: torch.device | str | None = None, **options: Any) -> Prior:
    """Build the prior registered as ``name`` (e.g. "stable-diffusion" with a hub id or folder, "analytic")."""
    _import_builtin_priors()
    if name not in _PRIORS:
        raise ValueError(f"unknown prior {name!r}; expected one of {sorted(_PRIORS)}")
    device = torch.device(device) if device is not None else default_device()
    return _PRIORS[name](model=model, device=device, **options)


def _import_builtin_priors() -> None:
    # Imported lazily so `import nfsd_server` stays cheap (no diffusers at import time).
    from nfsd_server.guidance import analytic, stable_diffusion  # noqa: F401

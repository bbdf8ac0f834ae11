"""What a denoising prior must offer the score-distillation loop.

A prior evaluates ε(z_t; c, t) for a batch of rows, where every row carries its own condition kind
(the job prompt, the empty prompt ∅, or the negative prompt) and its camera. The guidance classes build
one batch of rows per step (cond, uncond and — only where needed — negative), so every prior gets a
single batched call per step.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any, Iterable

import torch
from torch import Tensor

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


@dataclass(frozen=True)
class RecipeOverrides:
    """What a prior asks of the training recipe where its data differ from a real model's; None keeps the
    recipe's value. ``t_min`` only ever lowers the recipe's."""

    t_min: float | None = None
    t_anneal_power: float | None = None
    distance_range: tuple[float, float] | None = None

    def apply(self, config):
        """``config`` (a ``TrainConfig``) with these overrides."""
        changes = {}
        if self.t_min is not None and self.t_min < config.t_min:
            changes["t_min"] = self.t_min
        if self.t_anneal_power is not None:
            changes["t_anneal_power"] = self.t_anneal_power
        if self.distance_range is not None:
            changes["orbit"] = replace(config.orbit, distance_range=self.distance_range)
        return replace(config, **changes) if changes else config


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
    #: Channels of the latent space ``predict_noise`` works in, when a NeRF can render straight into it
    #: (the latent-first schedule); None for a prior without one (then every step renders RGB and encodes).
    latent_channels: int | None = None
    #: Image pixels per latent pixel along a side (8 for Stable Diffusion's VAE).
    latent_scale: int = 8

    def recipe_overrides(self) -> RecipeOverrides:
        """How training must differ for this prior; a real model changes nothing."""
        return RecipeOverrides()

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

    def predict_noise_groups(self, groups: list[tuple[Tensor, Tensor, Conditions]]) -> list[Tensor]:
        """``predict_noise`` for several groups of rows (latents_noisy, t, conditions), each with its own prompts
        (an edit asks about its source's prompt and its target's): one prediction per group. This default calls
        ``predict_noise`` per group; a prior whose network takes rows of different prompts together answers in
        one call (Stable Diffusion does)."""
        return [self.predict_noise(latents, t, conditions) for latents, t, conditions in groups]

    def latent_side(self, image_side: int | None = None) -> int:
        """The latent side for an image side (default: the prior's ``image_size``), e.g. 512 → 64 for SD 2.1-base."""
        return (image_side or self.image_size) // self.latent_scale

    def latent_color_map(self) -> tuple[Tensor, Tensor]:
        """(weight (C, 3), bias (C,)): the affine map from a colour in [0, 1] to the latent of a flat image of it.

        Starts a NeRF's albedo→latent head where the encoder is, so colours learned in the latent phase carry
        into the RGB phase. Default: a least-squares fit to ``encode`` of flat images (the 8 corners of the
        RGB cube and mid grey) at ``image_size``, the side every RGB render is encoded at, over the latent's
        interior pixels (``color_map_interior``): a convolutional encoder's border latents see its zero padding,
        and a flat image's interior latent still depends on the image's size (its attention block mixes the
        borders in). Computed once per prior.
        """
        if getattr(self, "_latent_color_map", None) is not None:
            return self._latent_color_map
        if self.latent_channels is None:
            raise ValueError(f"{type(self).__name__} has no latent space a NeRF can render into")
        colors = flat_fit_colors()
        latents = torch.stack([color_map_interior(latent) for latent in self.encode_flat_colors(colors, self.image_size)])
        design = torch.cat([colors, torch.ones(len(colors), 1)], dim=1)  # (9, 4)
        solution = torch.linalg.lstsq(design, latents).solution  # (4, C)
        self._latent_color_map = solution[:3].T.contiguous(), solution[3].contiguous()
        return self._latent_color_map

    @torch.no_grad()
    def encode_flat_colors(self, colors: Tensor, side: int) -> list[Tensor]:
        """``encode`` of one flat side × side image per colour (K, 3) in [0, 1] → K latents (C, h, w) float32 on
        the CPU, one image at a time (a 512² VAE encode is large)."""
        images = colors[:, :, None, None].expand(-1, 3, side, side)
        return [self.encode(image[None].to(self.device)).float()[0].cpu() for image in images]

    def compile(self, dynamic_rows: bool = False) -> None:
        """torch.compile the network ``predict_noise`` runs, in place (idempotent); a no-op unless overridden.
        ``dynamic_rows``: one graph for every row count instead of one static graph per row count."""

    def rows_to_compile(self, row_counts: Iterable[int]) -> list[int]:
        """The row counts among ``row_counts`` that ``warm_compiled`` would still compile ([] when not compiled)."""
        return []

    def warm_compiled(self, row_counts: Iterable[int], prompts: Any) -> None:
        """Compile the network for ``row_counts`` (B rows per ``predict_noise`` call) now, before any step."""

    def decode(self, latents: Tensor) -> Tensor:
        """latents → images (B, 3, H, W) in [0, 1]; used for previews and debugging only."""
        raise NotImplementedError(f"{type(self).__name__} cannot decode latents")


def flat_fit_colors() -> Tensor:
    """(9, 3): the 8 corners of the RGB cube and mid grey, the colours the colour→latent map is fitted on."""
    corners = [[r, g, b] for r in (0.0, 1.0) for g in (0.0, 1.0) for b in (0.0, 1.0)]
    return torch.tensor(corners + [[0.5] * 3])


def color_map_interior(latent: Tensor) -> Tensor:
    """(C,) mean of a latent (C, h, w) over its interior: an eighth of the side (at least one pixel) off each edge."""
    margin = max(1, latent.shape[-1] // 8)
    return latent[:, margin:-margin, margin:-margin].mean(dim=(1, 2))

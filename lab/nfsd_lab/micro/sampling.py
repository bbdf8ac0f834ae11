"""DDIM samples of a Stable Diffusion prior with classifier-free guidance: what the model itself draws for a caption."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def ddim_sample(prior, captions: list[str], guidance: float = 7.5, steps: int = 30, seed: int = 0) -> Tensor:
    """(N, 3, S, S) images in [0, 1], one per caption, from ``prior`` (a loaded ``StableDiffusionPrior``)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(prior.scheduler_config, clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(steps)
    embeddings = prior._embed(list(captions) + [""])
    conditional, null = embeddings[:-1], embeddings[-1:].expand(len(captions), -1, -1)
    side = prior.latent_side()
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(len(captions), prior.latent_channels, side, side, generator=generator).to(prior.device)
    for t in scheduler.timesteps:
        t_batch = torch.full((2 * len(captions),), int(t), device=prior.device)
        eps_cond, eps_null = prior._denoise(torch.cat([latents, latents]), t_batch,
                                            torch.cat([conditional, null])).chunk(2)
        latents = scheduler.step(eps_null + guidance * (eps_cond - eps_null), t, latents).prev_sample
    return prior.decode(latents)

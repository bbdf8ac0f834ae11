"""Train the micro Stable Diffusion on the world, resumably, and write it as a diffusers folder.

    .venv/bin/python -m nfsd_lab.micro.train                       # → server/nfsd_server/models/micro (~60 min, 2 cores)
    .venv/bin/python -m nfsd_lab.micro.train --work DIR --out DIR  # elsewhere; rerun the same line to resume

Stages, each resumable from its last checkpoint in ``--work`` (safetensors + JSON, never pickles):
data (the world's renders) → vae (AutoencoderKL, 4 latent channels, ×4 down) → unet (UNet2DConditionModel
with cross-attention, trained with the CLIPTextModel from scratch, 10 % caption dropout, min-SNR weights, EMA)
→ taesd (AutoencoderTiny distilled from the VAE) → export (save_pretrained, model card data, sample grid).
Every random draw comes from (seed, stage, step), so a resumed run is the run it would have been.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from nfsd_lab.micro.tokenizer import MAX_LENGTH, write_word_tokenizer
from nfsd_lab.micro.world import HELD_OUT, sample_world, vocabulary, vocabulary_summary
from nfsd_server.guidance.random_models import SCHEDULER

log = logging.getLogger("micro")
REPO = Path(__file__).resolve().parents[3]
DEFAULT_OUT = REPO / "server" / "nfsd_server" / "models" / "micro"
DEFAULT_WORK = REPO / ".micro-work"


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    images: int = 24000
    image_size: int = 32
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 6000
    unet_batch: int = 64
    unet_lr: float = 5e-4
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    taesd_steps: int = 1500
    taesd_batch: int = 32
    taesd_lr: float = 1e-3
    checkpoint_every: int = 250


VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=16,
    sample_size=32,
)
UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 96, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32,
)
TEXT_CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH, bos_token_id=0, eos_token_id=1, pad_token_id=1,
)
TAESD_CONFIG = dict(
    encoder_block_out_channels=(32, 32, 32), decoder_block_out_channels=(32, 32, 32),
    num_encoder_blocks=(1, 2, 2), num_decoder_blocks=(2, 2, 1), latent_channels=4,
)


STAGE_IDS = {"vae": 1, "unet": 2, "taesd": 3}


def generator_for(seed: int, stage: str, step: int) -> torch.Generator:
    """The draws of one step of one stage: the same on a resumed run as on an unbroken one."""
    return torch.Generator().manual_seed(seed * 7_919_000 + STAGE_IDS[stage] * 1_000_003 + step)


# --- checkpoints: tensors in safetensors, the rest in JSON ---------------------------------------------------

def save_state(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, meta: dict) -> None:
    tensors = {f"{name}.{key}": value.detach().contiguous()
               for name, module in modules.items() for key, value in module.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).contiguous()
    partial = path.with_suffix(".partial")
    save_file(tensors, str(partial))
    partial.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta))


def load_state(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> dict:
    tensors = load_file(str(path))
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, field = key.split(".", 2)
            state.setdefault(int(index), {})[field] = value
    saved = optimizer.state_dict()
    saved["state"] = state
    optimizer.load_state_dict(saved)
    return json.loads(path.with_suffix(".json").read_text())


class Stage:
    """A resumable loop: ``run(step_fn)`` calls step_fn(step) → loss until ``steps``, checkpointing as it goes."""

    def __init__(self, name: str, work: Path, steps: int, modules: dict, optimizer, every: int):
        self.name, self.steps, self.modules, self.optimizer, self.every = name, steps, modules, optimizer, every
        self.checkpoint = work / f"{name}.ckpt.safetensors"
        self.meta = {"step": 0, "losses": [], "seconds": 0.0}
        if self.checkpoint.exists():
            self.meta = load_state(self.checkpoint, modules, optimizer)
            log.info("%s: resumed at step %d", name, self.meta["step"])

    def run(self, step_fn) -> dict:
        started, window = time.perf_counter(), []
        base_seconds = self.meta["seconds"]
        for step in range(self.meta["step"], self.steps):
            window.append(step_fn(step))
            if (step + 1) % 50 == 0:
                self.meta["losses"].append([step + 1, sum(window) / len(window)])
                log.info("%s %d/%d loss %.4f (%.0f s)", self.name, step + 1, self.steps, self.meta["losses"][-1][1],
                         base_seconds + time.perf_counter() - started)
                window = []
            if (step + 1) % self.every == 0 or step + 1 == self.steps:
                self.meta.update(step=step + 1, seconds=base_seconds + time.perf_counter() - started)
                save_state(self.checkpoint, self.modules, self.optimizer, self.meta)
        return self.meta


def set_cosine_lr(optimizer, base: float, step: int, steps: int, warmup: int = 0) -> None:
    scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
    for group in optimizer.param_groups:
        group["lr"] = base * scale * 0.5 * (1 + math.cos(math.pi * step / steps))


def take_step(optimizer, loss: torch.Tensor, parameters) -> float:
    """One clipped AdamW step on ``loss``; its value for the log."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    return float(loss.detach())


# --- stages -----------------------------------------------------------------------------------------------------

def _render_chunk(job: tuple[int, int, int, int]) -> tuple[torch.Tensor, list[str]]:
    seed, start, stop, size = job
    torch.set_num_threads(1)  # thousands of tiny renders: threads only contend
    images, captions, _ = sample_world(stop - start, seed, size, first=start)
    return images, captions


def render_world(recipe: Recipe, workers: int) -> tuple[torch.Tensor, list[str]]:
    """The world's renders in ``workers`` processes; sample i depends only on (seed, i), so the split is free."""
    bounds = [round(recipe.images * k / (4 * workers)) for k in range(4 * workers + 1)]
    jobs = [(recipe.seed, start, stop, recipe.image_size) for start, stop in zip(bounds, bounds[1:])]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        chunks = pool.map(_render_chunk, jobs)
    return torch.cat([images for images, _ in chunks]), [c for _, captions in chunks for c in captions]


def stage_data(recipe: Recipe, work: Path, workers: int) -> tuple[torch.Tensor, list[str]]:
    images_path, captions_path = work / "data.safetensors", work / "data.json"
    if images_path.exists() and captions_path.exists():
        return load_file(str(images_path))["images"], json.loads(captions_path.read_text())["captions"]
    started = time.perf_counter()
    images, captions = render_world(recipe, workers)
    save_file({"images": images}, str(images_path))
    captions_path.write_text(json.dumps({"captions": captions, "seconds": time.perf_counter() - started}))
    log.info("data: %d images in %.0f s", len(images), time.perf_counter() - started)
    return images, captions


def batch_images(images: torch.Tensor, generator: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, images in [-1, 1]) with random horizontal flips (a mirrored world is the same world)."""
    indices = torch.randint(len(images), (size,), generator=generator)
    batch = images[indices].float() / 127.5 - 1.0
    flip = torch.rand(size, generator=generator) < 0.5
    batch[flip] = batch[flip].flip(-1)
    return indices, batch


def stage_vae(recipe: Recipe, work: Path, images: torch.Tensor):
    from diffusers import AutoencoderKL

    torch.manual_seed(recipe.seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    stage = Stage("vae", work, recipe.vae_steps, {"vae": vae}, optimizer, recipe.checkpoint_every)

    def step(i: int) -> float:
        set_cosine_lr(optimizer, recipe.vae_lr, i, recipe.vae_steps)
        generator = generator_for(recipe.seed, "vae", i)
        _, x = batch_images(images, generator, recipe.vae_batch)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(z).sample
        loss = F.mse_loss(reconstruction, x) + 0.5 * F.l1_loss(reconstruction, x) + recipe.kl_weight * posterior.kl().mean()
        return take_step(optimizer, loss, vae.parameters())

    meta = stage.run(step)
    return vae.eval().requires_grad_(False), meta


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior means and stds of every image and of its mirror: (2N, 4, h, w) each."""
    means, stds = [], []
    for flip in (False, True):
        for start in range(0, len(images), chunk):
            x = images[start:start + chunk].float() / 127.5 - 1.0
            posterior = vae.encode(x.flip(-1) if flip else x).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def stage_unet(recipe: Recipe, work: Path, vae, images: torch.Tensor, captions: list[str], tokenizer):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    latents_path = work / "latents.safetensors"
    if latents_path.exists():
        stored = load_file(str(latents_path))
        means, stds = stored["means"], stored["stds"]
    else:
        means, stds = encode_all(vae, images)
        save_file({"means": means.contiguous(), "stds": stds.contiguous()}, str(latents_path))
    scaling_factor = float(1.0 / means.std())
    log.info("latents: std %.3f → scaling_factor %.4f", float(means.std()), scaling_factor)
    tokens = tokenizer(captions + [""], padding="max_length", max_length=MAX_LENGTH, truncation=True,
                       return_tensors="pt").input_ids
    null_tokens, tokens = tokens[-1], tokens[:-1]

    torch.manual_seed(recipe.seed + 1)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **TEXT_CONFIG))
    ema = UNet2DConditionModel(**UNET_CONFIG)
    ema.load_state_dict(unet.state_dict())
    ema_text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **TEXT_CONFIG))
    ema_text.load_state_dict(text_encoder.state_dict())
    scheduler = DDPMScheduler(**SCHEDULER)
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=recipe.unet_lr, weight_decay=1e-2)
    modules = {"unet": unet, "text_encoder": text_encoder, "ema": ema, "ema_text": ema_text}
    stage = Stage("unet", work, recipe.unet_steps, modules, optimizer, recipe.checkpoint_every)
    online = parameters
    averaged = list(ema.parameters()) + list(ema_text.parameters())
    count = len(images)

    def step(i: int) -> float:
        set_cosine_lr(optimizer, recipe.unet_lr, i, recipe.unet_steps, warmup=200)
        generator = generator_for(recipe.seed, "unet", i)
        rows = torch.randint(2 * count, (recipe.unet_batch,), generator=generator)  # the second half: mirrors
        z0 = (means[rows] + stds[rows] * torch.randn(means[rows].shape, generator=generator)) * scaling_factor
        ids = tokens[rows % count].clone()
        dropped = torch.rand(recipe.unet_batch, generator=generator) < recipe.caption_dropout
        ids[dropped] = null_tokens
        t = torch.randint(scheduler.config.num_train_timesteps, (recipe.unet_batch,), generator=generator)
        noise = torch.randn(z0.shape, generator=generator)
        zt = scheduler.add_noise(z0, noise, t)
        prediction = unet(zt, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        weight = (torch.minimum(snr[t], torch.full_like(snr[t], recipe.min_snr_gamma)) / snr[t]).view(-1, 1, 1, 1)
        loss = (weight * (prediction - noise) ** 2).mean()
        value = take_step(optimizer, loss, parameters)
        decay = min(recipe.ema_decay, (1 + i) / (10 + i))
        with torch.no_grad():
            torch._foreach_lerp_(averaged, online, 1 - decay)
        return value

    meta = stage.run(step)
    meta["scaling_factor"] = scaling_factor
    return ema.eval(), ema_text.eval(), scheduler, scaling_factor, meta


def stage_taesd(recipe: Recipe, work: Path, vae, images: torch.Tensor, scaling_factor: float):
    from diffusers import AutoencoderTiny

    torch.manual_seed(recipe.seed + 2)
    taesd = AutoencoderTiny(**TAESD_CONFIG)
    optimizer = torch.optim.AdamW(taesd.parameters(), lr=recipe.taesd_lr, weight_decay=0.0)
    stage = Stage("taesd", work, recipe.taesd_steps, {"taesd": taesd}, optimizer, recipe.checkpoint_every)

    def step(i: int) -> float:
        set_cosine_lr(optimizer, recipe.taesd_lr, i, recipe.taesd_steps)
        _, x = batch_images(images, generator_for(recipe.seed, "taesd", i), recipe.taesd_batch)
        with torch.no_grad():
            target = vae.encode(x).latent_dist.mean * scaling_factor
        encoded = taesd.encode(x).latents
        decoded = taesd.decode(target).sample  # the decoder learns the VAE's latents, as TAESD is distilled
        loss = F.mse_loss(encoded, target) + F.mse_loss(decoded, x) + 0.5 * F.l1_loss(decoded, x)
        return take_step(optimizer, loss, taesd.parameters())

    meta = stage.run(step)
    return taesd.eval(), meta


def export(out: Path, recipe: Recipe, vae, unet, text_encoder, tokenizer_dir: Path, scheduler, taesd,
           scaling_factor: float, metas: dict, data_seconds: float) -> None:
    from transformers import CLIPTokenizer

    out.mkdir(parents=True, exist_ok=True)
    vae.register_to_config(scaling_factor=scaling_factor)
    vae.save_pretrained(out / "vae")
    unet.save_pretrained(out / "unet")
    text_encoder.save_pretrained(out / "text_encoder")
    CLIPTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(out / "tokenizer")
    scheduler.save_pretrained(out / "scheduler")
    taesd.save_pretrained(out / "taesd")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }, indent=1))
    (out / "vocabulary.json").write_text(json.dumps({"words": vocabulary(), "summary": vocabulary_summary()}, indent=1))
    (out / "training.json").write_text(json.dumps({
        "recipe": asdict(recipe), "held_out": HELD_OUT, "scaling_factor": scaling_factor,
        "stages": {name: {"steps": meta["step"], "seconds": round(meta["seconds"], 1), "losses": meta["losses"]}
                   for name, meta in metas.items()},
        "data_seconds": round(data_seconds, 1),
    }))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="train the micro Stable Diffusion on the procedural world")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="checkpoints and data; rerun to resume")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the diffusers folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps (a quick try: 0.02)")
    parser.add_argument("--images", type=int, help="how many renders (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    base = Recipe(seed=args.seed)
    recipe = Recipe(**{**asdict(base), **{k: max(1, round(getattr(base, k) * args.scale))
                                          for k in ("vae_steps", "unet_steps", "taesd_steps")},
                       "images": args.images or base.images})
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "recipe.json").write_text(json.dumps(asdict(recipe)))
    from transformers import CLIPTokenizer

    tokenizer_dir = write_word_tokenizer(args.work / "tokenizer", vocabulary())
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    images, captions = stage_data(recipe, args.work, args.threads)
    vae, vae_meta = stage_vae(recipe, args.work, images)
    unet, text_encoder, scheduler, scaling_factor, unet_meta = stage_unet(recipe, args.work, vae, images, captions, tokenizer)
    taesd, taesd_meta = stage_taesd(recipe, args.work, vae, images, scaling_factor)
    data_seconds = json.loads((args.work / "data.json").read_text())["seconds"]
    export(args.out, recipe, vae, unet, text_encoder, tokenizer_dir, scheduler, taesd, scaling_factor,
           {"vae": vae_meta, "unet": unet_meta, "taesd": taesd_meta}, data_seconds)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()

"""Stable Diffusion architectures with random weights, built from configs (no downloads).

- ``tiny``: a few-KB-per-layer SD for tests; ``save_random_stable_diffusion`` writes it as a diffusers
  folder so tests go through the real ``from_pretrained`` loader.
- ``sd21-base``: the real Stable Diffusion 2.1-base sizes (UNet 865M, VAE 84M, OpenCLIP-H text 340M) for
  benchmarks: random weights, real cost. Never used silently: only ``--model random:sd21-base`` asks for it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

_TINY = {
    "unet": dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=16,
    ),
    "vae": dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=16, sample_size=16,
    ),
    "text_encoder": dict(
        vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ),
}

# Published Stable Diffusion 2.1-base configs (stabilityai/stable-diffusion-2-1-base), retyped.
_SD21_BASE = {
    "unet": dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    ),
    "vae": dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
    ),
    "text_encoder": dict(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=512, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    ),
}
CONFIGS = {"tiny": _TINY, "sd21-base": _SD21_BASE}
# AutoencoderTiny (TAESD) per architecture: the same latent channels and downsampling as its VAE.
# sd21-base: the published madebyollin/taesd config, which is AutoencoderTiny's default.
TAESD_CONFIGS = {
    "tiny": dict(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                 num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)),
    "sd21-base": {},
}
SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, steps_offset=1, prediction_type="epsilon",
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-character map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_clip_tokenizer(folder: Path) -> Path:
    """A small but real CLIP BPE tokenizer: every byte (plus its end-of-word form), a few merges, specials."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    merges = ["a n", "t h", "th e</w>", "r e", "e d</w>", "i n", "o n", "a r"]
    vocab_tokens = ["<|startoftext|>", "<|endoftext|>"] + symbols + [s + "</w>" for s in symbols]
    vocab_tokens += ["".join(m.split()) for m in merges]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                    "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"})
    )
    return folder


def build_random_stable_diffusion(name: str, seed: int = 0) -> dict[str, Any]:
    """Components (unet, vae, text_encoder, tokenizer, scheduler) of the named architecture, random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if name not in CONFIGS:
        raise ValueError(f"unknown random model {name!r}; expected one of {sorted(CONFIGS)} (e.g. random:sd21-base)")
    config = CONFIGS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**config["unet"])
        vae = AutoencoderKL(**config["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
    with tempfile.TemporaryDirectory(prefix="nfsd-tokenizer-") as scratch:  # the tokenizer reads its files once
        tokenizer_dir = write_clip_tokenizer(Path(scratch))
        tokenizer = CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"), model_max_length=77)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=DDPMScheduler(**SCHEDULER))


def build_random_taesd(name: str, seed: int = 0):
    """A random AutoencoderTiny matching the named architecture's latents (4 channels, same downsampling)."""
    from diffusers import AutoencoderTiny

    if name not in TAESD_CONFIGS:
        raise ValueError(f"unknown random model {name!r}; expected one of {sorted(TAESD_CONFIGS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderTiny(**TAESD_CONFIGS[name])


def save_random_stable_diffusion(folder: Path, name: str = "tiny", seed: int = 0, taesd: bool = True) -> Path:
    """Write a random SD as a diffusers folder (model_index.json + one subfolder per component), with a
    random TAESD as taesd/ (what ``--encoder taesd`` loads from a model folder) unless ``taesd`` is False."""
    folder = Path(folder)
    components = build_random_stable_diffusion(name, seed)
    for component_name, component in components.items():
        component.save_pretrained(folder / component_name)
    if taesd:
        build_random_taesd(name, seed).save_pretrained(folder / "taesd")
    (folder / "model_index.json").write_text(
        json.dumps({
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.30.0",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDPMScheduler"],
        })
    )
    return folder

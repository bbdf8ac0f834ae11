"""Which precision each Stable Diffusion component runs in: the one place that decides.

``--dtype`` (CLI) and ``dtype`` (API) name the UNet's precision; the rest follows from what stays correct:

- text encoder: fp32 always, and on the CPU when the rest is on CUDA. It runs once per job (prompt embeddings
  are cached): precision costs nothing, and its 1.4 GB of fp32 weights would push a standard-preset step
  past an 8 GB card (see ``text_encoder_device``).
- VAE: fp32 always. Its encoder is differentiated every step; fp32 keeps that backward finite without
  loss scaling (SD's VAE is known to overflow in fp16), and its weights are small (84M parameters).
- UNet: ``auto`` is fp16 on CUDA (δ_C = ε_y − ε_∅ is a small difference of two large predictions: fp16 keeps
  it ~8× closer to fp32 than bf16 does) and fp32 elsewhere (CPU, Apple MPS: correct before fast).
  bf16 only when asked, and on CUDA only where the GPU has it natively (compute capability ≥ 8.0):
  ``torch.cuda.is_bf16_supported()`` also says yes for emulated bf16 (T4, V100, RTX 20xx), slow and fragile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nfsd_contract import DTYPES as DTYPE_NAMES  # the names --dtype and the API's dtype accept
TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class ComponentDtypes:
    unet: torch.dtype
    text_encoder: torch.dtype = torch.float32
    vae: torch.dtype = torch.float32
    # TAESD (the RGB phase's encoder, differentiated every step): fp32 until benchmarks/dtype_error.py --taesd
    # shows fp16's latent and image-gradient error on the real weights on CUDA small enough to switch.
    taesd: torch.dtype = torch.float32

    @property
    def name(self) -> str:
        return next(name for name, dtype in TORCH_DTYPES.items() if dtype == self.unet)


def resolve_dtypes(name: str, device: torch.device | str) -> ComponentDtypes:
    """``name`` in DTYPE_NAMES on ``device`` → per-component dtypes; ValueError saying what to pick instead."""
    device = torch.device(device)
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPE_NAMES)}")
    if name == "auto":
        name = "fp16" if device.type == "cuda" else "fp32"
    if name == "bf16" and device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < (8, 0):
            raise ValueError(
                f"bf16 is not native on this GPU ({torch.cuda.get_device_name(device)}, compute capability "
                f"{capability[0]}.{capability[1]} < 8.0): it would be emulated, slow and may fail in cuDNN; "
                "use --dtype fp16 (or auto)"
            )
    return ComponentDtypes(unet=TORCH_DTYPES[name])


def text_encoder_device(device: torch.device | str) -> torch.device:
    """Where the text encoder lives: the CPU when the UNet is on CUDA (seconds once per job for 6 prompts with
    SD 2.1's OpenCLIP-H; 1.27 GiB of VRAM freed: the standard preset's projected peak, from weights + the
    activations benchmarks/activation_memory.py measures, drops from ~7.6 GiB to ~6.4 GiB), else next to the
    UNet (CPU; MPS shares memory anyway)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "cuda" else device

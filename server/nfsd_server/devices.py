"""Where tensors live: the default device, checking a ``--device`` the user names, and non-blocking copies."""

from __future__ import annotations

import torch
from torch import Tensor

DEVICE_TYPES = ("cuda", "mps", "cpu")


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def check_device(name: str | None) -> torch.device:
    """``--device`` → a torch device this machine has (None: the default); ValueError saying what is available."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ValueError(f"unknown device {name!r}; expected one of {', '.join(DEVICE_TYPES)} (e.g. cuda:1)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: torch sees no CUDA GPU here; use --device cpu, or install a CUDA build of torch")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: Apple MPS is not available here (needs Apple silicon and macOS 12.3+); "
                         "use --device cpu")
    return device


def host_to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """Copy a CPU-sampled tensor to ``device`` without blocking the host (pinned + non_blocking on CUDA).

    A plain ``.to("cuda")`` of pageable memory waits for the GPU: one sync per call in the training loop.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)

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


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # values are C ints: INT_MAX at most


def keep_freed_host_memory() -> bool:
    """Make glibc keep freed heap memory for the next training step instead of returning it to the OS.

    By default glibc mmaps and unmaps large blocks and trims the heap as soon as its free top passes a few MiB,
    so every step page-faults and zeroes its CPU tensors again: a real-size SD 2.1 UNet call on 3 rows took
    10.2–11.1 s alone and 11.5 s while a TAESD graph was alive, against 8.9–9.2 s and 9.0–9.6 s with this
    (2 cores). Tensors up to 32 MiB (glibc's cap) now come from the heap, which grows 1 GiB at a time (address
    space, not RSS) and is trimmed only when 2 GiB lie free at its top: the process keeps its peak RSS.
    Process-wide and idempotent; returns False (and changes nothing) off glibc.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 0x7FFF_FFFF), (_M_TOP_PAD, 1 << 30),
    ))

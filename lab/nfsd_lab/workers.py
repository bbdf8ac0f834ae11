"""Process-pool helpers for the lab's benchmarks: runs side by side on a few cores."""

from __future__ import annotations

import torch

from nfsd_server.devices import keep_freed_host_memory


def one_torch_thread() -> None:
    """A pool worker's initializer: one torch thread per process (threads across processes only contend) and
    freed host memory given back."""
    torch.set_num_threads(1)
    keep_freed_host_memory()

"""The priors a process keeps loaded between jobs: one LRU cache shared by the API's job runner, the Ray worker
and ``nfsd batch``, so what "warm" means (the key, the limit, freeing GPU memory) is decided once."""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from nfsd_server.guidance.prior import Prior

#: ``load_prior``'s signature: (name, model, device, *, dtype, encoder) → Prior.
LoadPriorFn = Callable[..., Prior]


@dataclass(frozen=True)
class PriorKey:
    """Everything that changes the loaded object: two jobs share a warm prior only when all of it is equal."""

    prior: str
    model: str | None
    device: str
    dtype: str
    encoder: str

    @classmethod
    def for_spec(cls, spec: Any, device: str) -> PriorKey:
        """The key a job (a ``JobSpec``) needs on ``device``."""
        return cls(spec.prior, spec.model, str(device), spec.dtype, spec.encoder)

    @property
    def label(self) -> str:
        """'prior' or 'prior:model', as ``/v1/health`` lists it."""
        return self.prior if self.model is None else f"{self.prior}:{self.model}"


class WarmPriors:
    """At most ``capacity`` loaded priors, least recently used evicted first; thread-safe.

    A load runs outside the lock, so callers wanting other keys (or a health poll) never wait for it; callers
    wanting the key being loaded wait for that one load. A failed load is not kept: every waiter gets its error
    and the next ``get`` tries again. Before a load, warm priors are evicted to make room for it (so two large
    models are not in memory together when ``capacity`` is 1); only when more distinct keys load at once than
    ``capacity`` allows can the total briefly exceed it, and the oldest are evicted as those loads finish.
    """

    def __init__(self, loader: LoadPriorFn, capacity: int = 1):
        if capacity < 1:
            raise ValueError(f"a warm-prior cache holds at least 1 prior, got capacity={capacity}")
        self.capacity = capacity
        self._loader = loader
        self._lock = threading.Lock()
        self._warm: OrderedDict[PriorKey, Prior] = OrderedDict()  # oldest use first
        self._loading: dict[PriorKey, Future[Prior]] = {}

    def get(self, key: PriorKey) -> Prior:
        """The warm prior for ``key``, loading it (or waiting for the load already under way) if needed."""
        with self._lock:
            if key in self._warm:
                self._warm.move_to_end(key)
                return self._warm[key]
            pending = self._loading.get(key)
            loads_here = pending is None
            if loads_here:
                pending = self._loading[key] = Future()
                evicted = self._evict_to(self.capacity - len(self._loading))
        if not loads_here:
            return pending.result()  # another caller is loading this key: its outcome is ours
        self._free(evicted)
        try:
            prior = self._loader(key.prior, key.model, key.device, dtype=key.dtype, encoder=key.encoder)
        except BaseException as error:  # noqa: BLE001 (waiters must wake whatever the loader raised)
            with self._lock:
                del self._loading[key]
            pending.set_exception(error)
            raise
        with self._lock:
            del self._loading[key]
            self._warm[key] = prior
            evicted = self._evict_to(self.capacity)
        pending.set_result(prior)
        self._free(evicted)
        return prior

    def warm_keys(self) -> list[PriorKey]:
        """The loaded priors' keys, least recently used first (loads under way are not listed)."""
        with self._lock:
            return list(self._warm)

    def clear(self) -> None:
        """Drop every warm prior (a load under way still completes and is kept)."""
        with self._lock:
            evicted = self._evict_to(0)
        self._free(evicted)

    def __len__(self) -> int:
        with self._lock:
            return len(self._warm)

    def _evict_to(self, size: int) -> list[tuple[PriorKey, Prior]]:
        """Caller holds the lock: pop the least recently used until at most ``size`` remain."""
        evicted = []
        while len(self._warm) > max(0, size):
            evicted.append(self._warm.popitem(last=False))
        return evicted

    @staticmethod
    def _free(evicted: list[tuple[PriorKey, Prior]]) -> None:
        on_cuda = any(key.device.startswith("cuda") for key, _ in evicted)
        evicted.clear()  # the cache's last references: the models can go now
        if on_cuda and torch.cuda.is_available():
            gc.collect()  # a model held only by reference cycles would otherwise keep its GPU memory
            torch.cuda.empty_cache()  # hand the freed blocks back before the next model allocates

"""WarmPriors: the one cache of loaded priors (job runner, Ray worker, `nfsd batch`): keys, LRU, concurrent loads."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from dataclasses import replace

import pytest
import torch
from nfsd_server.guidance.warm import PriorKey, WarmPriors
from nfsd_contract import resolve_spec

ANALYTIC = PriorKey("analytic", None, "cpu", "auto", "vae")
TINY = PriorKey("stable-diffusion", "tiny/sd", "cpu", "auto", "vae")
OTHER = PriorKey("stable-diffusion", "other/sd", "cpu", "auto", "vae")


class LoadedPrior:
    """What the fake loader returns: remembers how it was asked for (and can be weakly referenced)."""

    def __init__(self, *args, **options):
        self.args, self.options = args, options


class FakeLoader:
    """Records every load; a ``hold``-ed model's load waits for its release event; a ``fail``-ed one raises."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.started: dict[str | None, threading.Event] = {}
        self.release: dict[str | None, threading.Event] = {}
        self.fail: set[str | None] = set()
        self.during_load: list[list[PriorKey]] = []  # what was warm when each load began (set by a test)
        self.cache: WarmPriors | None = None

    def hold(self, model: str | None) -> None:
        self.started[model], self.release[model] = threading.Event(), threading.Event()

    def __call__(self, name, model, device, *, dtype, encoder):
        self.calls.append((name, model, device, dtype, encoder))
        if self.cache is not None:
            self.during_load.append(self.cache.warm_keys())
        if model in self.started:
            self.started[model].set()
            assert self.release[model].wait(10), "the test never released the load"
        if model in self.fail:
            raise OSError(f"no diffusers model at {model!r}")
        return LoadedPrior(name, model, device, dtype=dtype, encoder=encoder)


class CountingLock:
    """Stands in for the cache's lock to count entries: a ``get`` enters once before it loads or waits."""

    def __init__(self):
        self._lock, self.entries = threading.Lock(), 0

    def __enter__(self):
        self._lock.acquire()
        self.entries += 1

    def __exit__(self, *exc_info):
        self._lock.release()


def in_thread(function, *args):
    """Start ``function(*args)`` on a thread; the thread's ``outcome`` list gets ("ok", value) or ("error", exc)."""
    outcome: list = []

    def target():
        try:
            outcome.append(("ok", function(*args)))
        except Exception as error:  # noqa: BLE001 (handed to the test to assert on)
            outcome.append(("error", error))

    thread = threading.Thread(target=target, daemon=True)
    thread.outcome = outcome
    thread.start()
    return thread


def wait_until(predicate, what: str) -> None:
    for _ in range(1000):
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_hit_returns_the_loaded_prior_and_every_key_field_is_passed_to_the_loader():
    loader = FakeLoader()
    cache = WarmPriors(loader, capacity=8)
    key = PriorKey("stable-diffusion", "tiny/sd", "cpu", "fp32", "taesd")
    first = cache.get(key)
    assert cache.get(key) is first and len(loader.calls) == 1
    assert loader.calls == [("stable-diffusion", "tiny/sd", "cpu", "fp32", "taesd")]
    assert first.options == {"dtype": "fp32", "encoder": "taesd"}


@pytest.mark.parametrize(
    ("field", "value"),
    [("prior", "analytic"), ("model", None), ("device", "cuda:1"), ("dtype", "fp16"), ("encoder", "taesd")],
)
def test_a_key_that_differs_in_any_field_is_a_new_load(field, value):
    loader = FakeLoader()
    cache = WarmPriors(loader, capacity=8)
    changed = replace(TINY, **{field: value})
    assert cache.get(TINY) is not cache.get(changed)
    assert len(loader.calls) == 2 and cache.warm_keys() == [TINY, changed]


def test_the_least_recently_used_prior_is_evicted_first():
    loader = FakeLoader()
    cache = WarmPriors(loader, capacity=2)
    analytic = cache.get(ANALYTIC)
    cache.get(TINY)
    assert cache.get(ANALYTIC) is analytic  # a hit makes it the most recently used…
    cache.get(OTHER)  # …so TINY is the one evicted
    assert cache.warm_keys() == [ANALYTIC, OTHER] and len(cache) == 2
    cache.get(TINY)  # a reload, evicting ANALYTIC (least recently used now)
    assert [call[1] for call in loader.calls] == [None, "tiny/sd", "other/sd", "tiny/sd"]
    assert cache.warm_keys() == [OTHER, TINY]


def test_room_is_made_before_loading_and_an_evicted_prior_is_freed():
    loader = FakeLoader()
    cache = loader.cache = WarmPriors(loader, capacity=1)
    freed = weakref.ref(cache.get(ANALYTIC))
    cache.get(TINY)
    assert loader.during_load == [[], []]  # the old model was gone before the new one loaded
    gc.collect()
    assert freed() is None  # the cache held the last reference
    cache.clear()
    assert cache.warm_keys() == [] and len(cache) == 0


def test_evicting_a_cuda_prior_empties_the_cuda_cache(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    cache = WarmPriors(FakeLoader(), capacity=1)
    cache.get(ANALYTIC)
    cache.get(TINY)
    assert emptied == []  # a CPU prior's memory is the host's: nothing to hand back to CUDA
    cache.get(PriorKey("analytic", None, "cuda:0", "auto", "vae"))
    cache.get(ANALYTIC)
    assert emptied == [True]


def test_callers_of_the_key_being_loaded_wait_for_that_one_load():
    loader = FakeLoader()
    loader.hold("tiny/sd")
    cache = WarmPriors(loader, capacity=1)
    cache._lock = lock = CountingLock()
    owner = in_thread(cache.get, TINY)
    assert loader.started["tiny/sd"].wait(10)
    waiters = [in_thread(cache.get, TINY) for _ in range(3)]
    wait_until(lambda: lock.entries == 1 + len(waiters), "every waiter to find the load under way")
    loader.release["tiny/sd"].set()
    for thread in (owner, *waiters):
        thread.join(10)
    results = [thread.outcome[0] for thread in (owner, *waiters)]
    assert len(loader.calls) == 1
    assert all(kind == "ok" and prior is results[0][1] for kind, prior in results)


def test_other_keys_and_the_warm_list_are_not_blocked_by_a_load():
    loader = FakeLoader()
    loader.hold("tiny/sd")
    cache = WarmPriors(loader, capacity=2)
    slow = in_thread(cache.get, TINY)
    assert loader.started["tiny/sd"].wait(10)
    fast = in_thread(cache.get, ANALYTIC)
    fast.join(10)
    assert fast.outcome and fast.outcome[0][0] == "ok"  # loaded while TINY's load still waits
    assert cache.warm_keys() == [ANALYTIC]  # a load under way is not listed as warm
    loader.release["tiny/sd"].set()
    slow.join(10)
    assert slow.outcome[0][0] == "ok" and cache.warm_keys() == [ANALYTIC, TINY]


def test_a_failed_load_reaches_every_waiter_is_not_cached_and_the_next_caller_retries():
    loader = FakeLoader()
    loader.hold("tiny/sd")
    loader.fail.add("tiny/sd")
    cache = WarmPriors(loader, capacity=1)
    cache._lock = lock = CountingLock()
    callers = [in_thread(cache.get, TINY)]
    assert loader.started["tiny/sd"].wait(10)
    callers += [in_thread(cache.get, TINY) for _ in range(2)]
    wait_until(lambda: lock.entries == len(callers), "every waiter to find the load under way")
    loader.release["tiny/sd"].set()
    for thread in callers:
        thread.join(10)
    for thread in callers:
        kind, error = thread.outcome[0]
        assert kind == "error" and isinstance(error, OSError) and "no diffusers model at 'tiny/sd'" in str(error)
    assert len(loader.calls) == 1 and cache.warm_keys() == []
    loader.fail.clear()
    assert isinstance(cache.get(TINY), LoadedPrior)
    assert len(loader.calls) == 2 and cache.warm_keys() == [TINY]


def test_a_cache_needs_room_for_one_prior():
    with pytest.raises(ValueError, match="holds at least 1 prior, got capacity=0"):
        WarmPriors(FakeLoader(), capacity=0)


def test_the_key_for_a_job_carries_its_settings_and_labels_itself_for_health():
    settings = resolve_spec("a red ball", prior="stable-diffusion", model="tiny/sd", dtype="fp32", seed=0)
    key = PriorKey.for_spec(settings, "cuda:1")
    assert key == PriorKey("stable-diffusion", "tiny/sd", "cuda:1", "fp32", settings.encoder)
    assert key.label == "stable-diffusion:tiny/sd" and ANALYTIC.label == "analytic"

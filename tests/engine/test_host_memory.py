"""keep_freed_host_memory: glibc keeps a step's freed tensors for the next step instead of unmapping them."""

import subprocess
import sys
import textwrap

import pytest

from nfsd_server import devices

PROBE = textwrap.dedent("""
    import sys, psutil, torch
    from nfsd_server.devices import keep_freed_host_memory
    if sys.argv[1] == "tuned":
        assert keep_freed_host_memory() and keep_freed_host_memory()  # idempotent
    process = psutil.Process()
    before = process.memory_info().rss
    block = torch.ones(6 << 20)  # 24 MiB, touched: resident
    del block
    print((process.memory_info().rss - before) / 2**20)
""")


def _rss_kept_after_free(mode: str) -> float:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_tensors_stay_in_the_heap_for_the_next_step():
    # Default glibc unmaps a freed 24 MiB block at once (the next step faults it in again); tuned, it stays.
    assert _rss_kept_after_free("default") < 4
    assert _rss_kept_after_free("tuned") > 20


def test_without_glibc_it_changes_nothing(monkeypatch):
    import ctypes

    def no_libc(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert devices.keep_freed_host_memory() is False
    monkeypatch.setattr(sys, "platform", "darwin")
    assert devices.keep_freed_host_memory() is False

"""Helpers for the add-on tests: build the zip, install it into headless bpy, pump the timer."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = "bl_ext.user_default.nfsd_blender"


def build_zip(out_dir: Path) -> Path:
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_addon.py"), "--output-dir", str(out_dir)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return Path(res.stdout.strip().splitlines()[-1])


def addon_module(name: str = ""):
    mod = sys.modules[PKG]
    return sys.modules[f"{PKG}.{name}"] if name else mod


def pump(until, timeout: float, what: str):
    """Headless bpy runs no timers: call the add-on's timer function ourselves until ``until()``."""
    ops = addon_module("operators")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ops.poll_timer()
        if until():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")

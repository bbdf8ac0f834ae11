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


def install_for_tests(tmp_path_factory):
    """Module-fixture body: build and install the zip, point it at this checkout's backend and the analytic
    prior; disabled again afterwards. Yields the preferences."""
    import bpy

    zip_path = build_zip(tmp_path_factory.mktemp("dist"))
    assert zip_path.name == "nfsd_blender-0.1.0.zip"
    res = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True)
    assert res == {"FINISHED"}
    assert PKG in bpy.context.preferences.addons
    prefs = bpy.context.preferences.addons[PKG].preferences
    python = ROOT / ".venv" / "bin" / "python"
    prefs.python_path = str(python) if python.exists() else sys.executable
    prefs.data_dir = str(tmp_path_factory.mktemp("nfsd_data"))
    prefs.default_prior = "analytic"
    yield prefs
    if PKG in bpy.context.preferences.addons:
        bpy.ops.preferences.addon_disable(module=PKG)


def addon_module(name: str = ""):
    mod = sys.modules[PKG]
    return sys.modules[f"{PKG}.{name}"] if name else mod


def pump(until, timeout: float, what: str):
    """Headless bpy runs no timers: call the add-on's timer function ourselves until ``until()``."""
    session = addon_module("session")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session.poll_timer()
        if until():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")

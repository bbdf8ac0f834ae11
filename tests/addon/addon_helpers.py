"""Helpers for the add-on tests: build the zip, install it into headless bpy, pump the timer, hold the add-on
busy, and a fake server that answers like the real one."""

from __future__ import annotations

import json
import stat
import textwrap
import subprocess
import sys
import threading
import time
from pathlib import Path

from fake_http import JsonHandler, serve

ROOT = Path(__file__).resolve().parents[2]
PKG = "bl_ext.user_default.nfsd_blender"


# The start of a script run as `python -c` in a fresh process: the zip in argv[1] installed and enabled in headless
# bpy with no source checkout importable (the venv's editable install dropped: a finder, or a path entry holding
# the contract); `pkg`, `prefs`, `session` and `state` defined.
FROM_THE_ZIP_ALONE = textwrap.dedent("""
    import json, os, sys, importlib.util, time
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "nfsd_contract"))]
    assert all(importlib.util.find_spec(name) is None for name in ("nfsd_blender", "nfsd_server", "nfsd_contract"))
    import bpy
    assert bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default",
                                                    enable_on_install=True) == {"FINISHED"}
    pkg = "bl_ext.user_default.nfsd_blender"
    session, state = sys.modules[pkg + ".session"], sys.modules[pkg + ".state"]
    prefs = bpy.context.preferences.addons[pkg].preferences
""")


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


def executable(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` as an executable script (a fake Python or ``nfsd`` command)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


class Busy:
    """Holds the add-on 'busy' (a live worker) for draw and poll checks."""

    def __init__(self):
        self.event = threading.Event()
        self.thread = threading.Thread(target=self.event.wait, daemon=True)
        self.thread.cancel_event = self.thread.stop_event = threading.Event()

    def __enter__(self):
        self.thread.start()
        addon_module("state").current.worker = self.thread
        return self

    def __exit__(self, *exc):
        self.event.set()
        self.thread.join()
        addon_module("state").current.worker = None


def resolved(**request):
    """A status's ``request`` as the server echoes it: the job with every default resolved (a red ball, by default
    analytic, seed 1, 30 steps)."""
    from nfsd_contract import resolve_spec

    return resolve_spec(**{"prompt": "a red ball", "prior": "analytic", "seed": 1, "steps": 30, **request}).to_dict()


class FakeServer:
    """/v1 with canned answers: POST records the body; GET a job answers ``states[id]`` (404 when absent), with
    the posted job (or a red ball) resolved as its ``request``; GET its result.glb the next of ``glbs[id]`` (a list
    of bodies, the last repeated); DELETE cancels."""

    def __init__(self):
        self.posted, self.states, self.jobs, self.glbs = [], {}, {}, {}
        outer = self

        class Handler(JsonHandler):
            def do_GET(self):
                if self.path.endswith("/result.glb"):
                    bodies = outer.glbs[self.path.split("/")[-2]]
                    data = bodies.pop(0) if len(bodies) > 1 else bodies[0]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return self.wfile.write(data)
                job_id = self.path.rsplit("/", 1)[-1]
                if self.path == "/v1/health":
                    return self._send(200, {"version": "9.9", "device": "cpu"})
                if self.path == "/v1/models":
                    return self._send(200, {"models": [
                        {"id": "org/big", "label": "org/big", "prior": "stable-diffusion", "model": "org/big",
                         "cached": False, "size_bytes": None, "download_bytes": 5_160_000_000, "default": True,
                         "taesd_cached": False}]})
                if job_id not in outer.states:
                    return self._send(404, {"detail": f"no job {job_id!r} on this server"})
                self._send(200, {
                    "id": job_id, "state": outer.states[job_id], "step": 0, "total": 30, "eta_s": None,
                    "queue_position": None, "error": "out of memory", "hint": "try the draft preset",
                    "has_preview": False, "request": outer.jobs.get(job_id) or resolved(),
                })

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posted.append(body)
                job_id = f"j{len(outer.posted)}"
                outer.states[job_id] = "failed"
                outer.jobs[job_id] = resolved(**body)
                self._send(202, {"id": job_id})

            def do_DELETE(self):
                job_id = self.path.rsplit("/", 1)[-1]
                outer.states[job_id] = "cancelled"
                self._send(200, {"id": job_id, "state": "cancelled"})

        self.server, self.url = serve(Handler)

    def close(self):
        self.server.shutdown()

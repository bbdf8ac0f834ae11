"""Spawn and stop the one local nfsd_server of this Blender session (no bpy). It exits when its stdin closes."""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import subprocess
import threading
from pathlib import Path

from .client import BackendError

_READY_TIMEOUT_S = 120.0

# Where Install Backend (installer.py) puts the backend, found without any setting.
DEFAULT_VENV = Path.home() / "nfsd-backend"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def script_interpreter(script) -> str:
    """The Python a console script (``nfsd``, written by pip) runs with, read from its first lines; '' if none.

    pip writes ``#!/venv/bin/python``, or, for long paths, ``#!/bin/sh`` and then an ``'''exec' /venv/bin/python`` line.
    """
    try:
        with open(script, "rb") as fh:
            head = fh.read(512).decode(errors="replace").splitlines()
    except OSError:
        return ""
    if not head or not head[0].startswith("#!"):
        return ""
    candidates = [head[0][2:].strip().split(" ")[0]]
    candidates += [line.split()[1] for line in head[1:3] if line.startswith("'''exec' ") and len(line.split()) > 1]
    for cand in reversed(candidates):
        if "python" in Path(cand).name and Path(cand).is_file():
            return cand
    return ""


def detect_python() -> str:
    """A Python with the backend installed, or '' (the panel then offers to pick one or copy the install line).

    In order: the interpreter of the ``nfsd`` command on PATH, the documented ``~/nfsd-backend`` venv, and the
    repo's ``.venv`` when the add-on runs from a source checkout.
    """
    script = shutil.which("nfsd")
    found = script_interpreter(script) if script else ""
    if found:
        return found
    if venv_python(DEFAULT_VENV).is_file():
        return str(venv_python(DEFAULT_VENV))
    here = Path(__file__).resolve().parent
    for root in (here.parent, *here.parents):
        cand = venv_python(root / ".venv")
        if cand.exists() and (root / "server").is_dir():
            return str(cand)
    return ""


class LocalBackend:
    """One backend per Blender session: ``start`` is serialised, so a Generate pressed while *Start Backend* is
    still booting waits for that server instead of spawning a second, untracked one."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.token: str = ""
        self.version: str = ""
        self._start_lock = threading.Lock()
        self._booting: subprocess.Popen | None = None  # so stop() can end a server that is still booting

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def booting(self) -> bool:
        return self._booting is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, python: str, data_dir: str, prior: str = "", model: str = "") -> None:
        with self._start_lock:
            if not self.running:
                self._start(python, data_dir, prior, model)

    def _start(self, python: str, data_dir: str, prior: str, model: str) -> None:
        if not python or not Path(python).is_file():
            raise BackendError(
                f"Backend Python not found: {python or '(empty)'}",
                "pick the Python of your nfsd backend in the NFSD panel, or install the backend (README)",
            )
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(24)
        cmd = [python, "-m", "nfsd_server", "serve", "--port", "0", "--parent-stdin", "--data-dir", data_dir]
        if prior:
            cmd += ["--default-prior", prior]
        if model:
            cmd += ["--default-model", model]
        env = dict(os.environ, NFSD_TOKEN=token)
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )
        except OSError as err:
            raise BackendError(f"Cannot start the backend: {err}", "check the backend Python path") from None
        self._booting = proc
        lines: queue.Queue = queue.Queue()
        errs: list[str] = []

        def read_out() -> None:
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        def read_err() -> None:
            for line in proc.stderr:
                errs.append(line.decode(errors="replace"))
                del errs[:-20]

        threading.Thread(target=read_out, daemon=True).start()
        threading.Thread(target=read_err, daemon=True).start()
        try:
            line = lines.get(timeout=_READY_TIMEOUT_S)
        except queue.Empty:
            line = None
        stopped = self._booting is None  # stop() was pressed while it booted
        self._booting = None
        info = None
        if line and not stopped:
            try:
                info = json.loads(line)
            except ValueError:
                info = None
        if not info or "port" not in info:
            _end(proc)
            if stopped:
                raise BackendError("The backend was stopped while it started")
            tail = "".join(errs[-3:]).strip().splitlines()
            raise BackendError(
                "The backend did not start" + (f": {tail[-1]}" if tail else ""),
                "the backend Python needs the nfsd_server package (Python 3.11+); see the console",
            )
        self.proc, self.port, self.token, self.version = proc, int(info["port"]), token, info.get("version", "")

    def stop(self, timeout: float = 10.0) -> None:
        booting, self._booting = self._booting, None
        if booting is not None:
            _end(booting, timeout)
        proc, self.proc = self.proc, None
        if proc is not None:
            _end(proc, timeout)


def _end(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Close stdin (the server's cue to exit), then terminate, then kill."""
    try:
        if proc.stdin:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


BACKEND = LocalBackend()

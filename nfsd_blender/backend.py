"""Spawn and stop a local nfsd_server (no bpy). The server exits when its stdin closes."""

from __future__ import annotations

import json
import os
import queue
import secrets
import subprocess
import threading
from pathlib import Path

from .client import BackendError

_READY_TIMEOUT_S = 120.0


def detect_python() -> str:
    """The repo's .venv python when the add-on runs from a source checkout, else ''."""
    here = Path(__file__).resolve().parent
    for root in (here.parent, *here.parents):
        cand = root / ".venv" / "bin" / "python"
        if cand.exists() and (root / "server").is_dir():
            return str(cand)
    return ""


class LocalBackend:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.token: str = ""
        self.version: str = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, python: str, data_dir: str, prior: str = "", model: str = "") -> None:
        if self.running:
            return
        if not python or not Path(python).is_file():
            raise BackendError(
                f"Backend Python not found: {python or '(empty)'}",
                "set the backend Python path in the add-on preferences",
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
        info = None
        if line:
            try:
                info = json.loads(line)
            except ValueError:
                info = None
        if not info or "port" not in info:
            self.proc = proc
            self.stop()
            tail = "".join(errs[-3:]).strip().splitlines()
            raise BackendError(
                "The backend did not start" + (f": {tail[-1]}" if tail else ""),
                "the backend Python needs the nfsd_server package (Python 3.11+); see the console",
            )
        self.proc, self.port, self.token, self.version = proc, int(info["port"]), token, info.get("version", "")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
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

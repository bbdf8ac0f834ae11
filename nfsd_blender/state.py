"""What the add-on knows between timer ticks: the running threads, what the server last said, and the one place
a job's state changes (``enter``). The scene holds the rest, so it is saved with the file. No thread touches bpy:
only the main thread calls in here."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


# A job on its way: not yet at the server, waiting, training, exporting, or its result being fetched and imported.
ACTIVE = ("starting", "queued", "running", "exporting", "fetching")
ENDED = ("done", "failed", "cancelled", "interrupted", "error")


@dataclass
class Session:
    worker: threading.Thread | None = None  # the running JobWorker
    info: threading.Thread | None = None  # the thread asking the server for health and models
    models: list = field(default_factory=list)  # the server's last /v1/models answer
    server: dict = field(default_factory=dict)  # its last /v1/health answer
    server_error: str = ""
    download: threading.Thread | None = None  # the running DownloadWorker
    install: threading.Thread | None = None  # the running (or last) installer.Installer
    downloads: list = field(default_factory=list)  # the server's model downloads, as last heard
    export_started: float | None = None  # the server gives no ETA for export: the panel shows the time it takes
    thumbs: object = None  # the history's bpy.utils.previews collection


current = Session()


def _alive(thread) -> bool:
    return thread is not None and thread.is_alive()


def busy() -> bool:
    """A generation is running (its worker thread is alive)."""
    return _alive(current.worker)


def info_busy() -> bool:
    return _alive(current.info)


def downloading() -> bool:
    """A model download runs (its worker thread is alive)."""
    return _alive(current.download)


def install_running():
    """The Installer at work, or None."""
    return current.install if _alive(current.install) else None


def download_of(model) -> dict | None:
    """The server's download of ``model`` (a hub id) as last heard, or None."""
    return next((d for d in current.downloads if model and d.get("model") == model), None)


def enter(props, item, state: str) -> bool:
    """Move a job to ``state``: its History entry (``item``; None before the server has accepted it) and the
    panel's line when it is the panel's job. A job that ended only leaves its end to be fetched again (Re-import);
    False, and nothing changes, for any other way back."""
    if state not in ACTIVE + ENDED + ("",):
        raise ValueError(f"unknown job state {state!r}")
    if item is not None and item.state in ENDED and state in ACTIVE and state != "fetching":
        return False
    if item is not None:
        item.state = state
    if item is None or not props.job_id or item.job_id == props.job_id:
        props.job_state = state
    return True


def set_error(props, message, details=""):
    """One readable line in the panel; the full text (a traceback, a server log) behind Copy Details."""
    props.error = last_line(message) or "Unknown error"
    props.error_details = details or str(message)


def last_line(message) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[-1] if lines else ""

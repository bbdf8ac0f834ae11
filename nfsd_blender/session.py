"""What the operators start and stop: generations, the server check, model downloads and the backend's install,
each on its own thread; and the timer that drains the threads' events into the scene (``handlers``).

State lives in ``state``; a reopened file's jobs are picked up in ``reopen``.
"""

from __future__ import annotations

import queue
import threading
import traceback

import bpy
import bpy.utils.previews

from . import contract, jobs
from .backend import BACKEND
from .backend import DEFAULT_VENV as backend_venv_default
from .handlers import apply, reset_job, server_status_text
from .preferences import (
    ON_BACKEND_CHANGED, get_prefs, install_log as installer_log, output_dir, settings_from_prefs,
)
from .properties import build_request
from .state import busy, current, downloading, info_busy, install_running, set_error

TIMER_S = 0.25


def start_install(context) -> str:
    """Install the backend from the zip's wheel on a thread; '' or why it cannot start."""
    from . import installer  # bpy-free; imported here so a zip without the wheel still registers

    prefs = get_prefs(context)
    wheel, python = installer.find_wheel(), installer.suitable_python()
    if wheel is None:
        return "This add-on zip has no backend wheel; install the zip built by scripts/build_addon.py"
    if not python:
        return "No Python 3.11 or newer found to create the backend's environment; install Python 3.11"
    stop_backend()  # it may run from the environment being replaced
    target = bpy.path.abspath(prefs.install_dir) if prefs.install_dir else str(backend_venv_default)
    current.install = installer.Installer(
        python, wheel, target, installer_log(context), output_dir(context),
        installer.torch_choice(*installer.detect_machine()), jobs.EVENTS,
    )
    prefs.install_status = ""
    current.install.start()
    _ensure_timer()
    return ""


def job_model(context, props):
    """(the job's prior, its model id as the server reads it, its /v1/models entry or None when not known yet)."""
    request = build_request(props, get_prefs(context))
    entry = jobs.find_model(current.models, request["prior"], request["model"] or "")
    model = request["model"] or (entry or {}).get("model") or contract.DEFAULT_MODEL
    return request["prior"], model, entry


def start_download(context, model: str) -> None:
    """Download ``model`` on the server (starting the local backend first); progress arrives as events."""
    worker = jobs.DownloadWorker(settings_from_prefs(context), model)
    current.download = worker
    context.scene.nfsd.error = context.scene.nfsd.error_details = ""
    worker.start()
    _ensure_timer()


def cancel_download() -> None:
    if downloading():
        current.download.cancel_event.set()


def _ensure_timer():
    if not bpy.app.timers.is_registered(poll_timer):
        bpy.app.timers.register(poll_timer, first_interval=TIMER_S)


def start_job(context, requests, resume=None, worker=None) -> None:
    """Start ``worker`` (default: a JobWorker for ``requests``) and the timer that applies its events."""
    props = context.scene.nfsd
    worker = worker or jobs.JobWorker(settings_from_prefs(context), requests, resume=resume)
    current.worker = worker
    if not resume:
        reset_job(props, "starting")
    props.job_index, props.job_count = 0, max(1, len(requests) + len(resume or []))
    worker.start()
    _ensure_timer()


def cancel(props) -> None:
    """Ask the running worker to cancel its jobs; the server's answer arrives as events."""
    current.worker.cancel_event.set()
    props.job_phase = "cancelling"


def start_info(context, start: bool) -> None:
    """Ask the server for its health and models on a thread (starting the local backend if ``start``)."""
    if info_busy():
        return
    thread = threading.Thread(target=jobs.server_info, args=(settings_from_prefs(context), start), daemon=True)
    current.info = thread  # before start(): the timer must see it busy even if it answers at once
    thread.start()
    _ensure_timer()


def backend_changed() -> None:
    """The preferences now point at another backend (mode, URL, token, Python): what the old one said, its
    models and the errors about reaching it no longer apply. A running job keeps its own worker and errors."""
    current.server, current.server_error, current.models = {}, "", []
    if not busy():
        for scene in bpy.data.scenes:
            scene.nfsd.error = scene.nfsd.error_details = ""
    get_prefs().status = server_status_text()


def stop_backend() -> None:
    """Stop the local backend (cancelling the running generation) and forget what it said."""
    if busy():
        current.worker.cancel_event.set()
    BACKEND.stop()
    current.server = {}


def poll_timer():
    """Main thread: drain the workers' events into bpy. Returns the next interval, or None when idle."""
    while True:
        try:
            event = jobs.EVENTS.get_nowait()
        except queue.Empty:
            break
        try:
            apply(bpy.context.scene.nfsd, event)
        except Exception as err:  # noqa: BLE001  (keep Blender working, show the problem)
            print(f"NFSD: applying {type(event).__name__} failed: {err!r}")
            if hasattr(bpy.context.scene, "nfsd"):
                set_error(bpy.context.scene.nfsd, f"{type(err).__name__}: {err}", traceback.format_exc())
    _redraw()
    if busy() or info_busy() or downloading() or install_running() or not jobs.EVENTS.empty():
        return TIMER_S
    return None


def _redraw():
    wm = getattr(bpy.context, "window_manager", None)
    for win in getattr(wm, "windows", []):
        for area in win.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def fetch_again(context, item) -> None:
    """Download a finished job's GLB from the server again and import it (the worker follows the done job)."""
    start_job(context, [], resume=[item.job_id])


def register():
    current.thumbs = bpy.utils.previews.new()
    ON_BACKEND_CHANGED.append(backend_changed)


def unregister():
    if backend_changed in ON_BACKEND_CHANGED:
        ON_BACKEND_CHANGED.remove(backend_changed)
    if bpy.app.timers.is_registered(poll_timer):
        bpy.app.timers.unregister(poll_timer)
    if current.worker is not None:
        current.worker.stop_event.set()
    if current.download is not None:
        current.download.stop_event.set()  # the server's download goes on; the panel stops following it
    if install_running() is not None:
        current.install.cancel_event.set()
    if current.thumbs is not None:
        bpy.utils.previews.remove(current.thumbs)
        current.thumbs = None

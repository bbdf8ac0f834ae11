"""The add-on's main-thread state machine: the running worker, what the server last said, and the timer that
applies the workers' ``events`` to the scene (one handler per event class, in ``HANDLERS``).

The running job's properties change only in this module: when an event is applied, or when a job starts, is
cancelled or is found in a reopened file. Operators call these functions and the panel reads ``current`` and
``busy()``; no thread touches bpy.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field

import bpy
import bpy.utils.previews
from bpy.app.handlers import persistent

from . import contract, events, importer, jobs
from .backend import BACKEND
from .client import refused_token
from .backend import DEFAULT_VENV as backend_venv_default
from .preferences import (
    ON_BACKEND_CHANGED, get_prefs, install_log as installer_log, output_dir, python_path, settings_from_prefs,
)
from .properties import build_request, fill_item, item_metadata

PREVIEW_IMAGE = "NFSD Preview"
TIMER_S = 0.25
ACTIVE = ("starting", "queued", "running", "exporting")


@dataclass
class Session:
    """What the add-on knows between timer ticks (the scene holds the rest, so it is saved with the file)."""

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


def busy() -> bool:
    """A generation is running (its worker thread is alive)."""
    return current.worker is not None and current.worker.is_alive()


def _info_busy() -> bool:
    return current.info is not None and current.info.is_alive()


def install_running():
    """The Installer at work, or None."""
    return current.install if current.install is not None and current.install.is_alive() else None


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


def _install_ended(props, item, event: events.InstallEnded):
    prefs = get_prefs()
    if event.state == "done":
        prefs.python_path = event.python
        prefs.install_status = f"Backend {event.version} installed: {event.python}"
        current.server, current.server_error = {}, ""
    else:
        prefs.install_status = event.error
        set_error(props, event.error)


def downloading() -> bool:
    """A model download runs (its worker thread is alive)."""
    return current.download is not None and current.download.is_alive()


def download_of(model) -> dict | None:
    """The server's download of ``model`` (a hub id) as last heard, or None."""
    return next((d for d in current.downloads if model and d.get("model") == model), None)


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


def _remember_download(status: dict) -> None:
    current.downloads = [d for d in current.downloads if d.get("model") != status.get("model")] + [status]


def _ensure_timer():
    if not bpy.app.timers.is_registered(poll_timer):
        bpy.app.timers.register(poll_timer, first_interval=TIMER_S)


def start_job(context, requests, resume=None, worker=None) -> None:
    """Start ``worker`` (default: a JobWorker for ``requests``) and the timer that applies its events."""
    props = context.scene.nfsd
    worker = worker or jobs.JobWorker(settings_from_prefs(context), requests, resume=resume)
    current.worker = worker
    if not resume:
        _reset_job(props, "starting")
    props.job_index, props.job_count = 0, max(1, len(requests) + len(resume or []))
    worker.start()
    _ensure_timer()


def cancel(props) -> None:
    """Ask the running worker to cancel its jobs; the server's answer arrives as events."""
    current.worker.cancel_event.set()
    props.job_phase = "cancelling"


def start_info(context, start: bool) -> None:
    """Ask the server for its health and models on a thread (starting the local backend if ``start``)."""
    if _info_busy():
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


def set_error(props, message, details=""):
    """One readable line in the panel; the full text (a traceback, a server log) behind Copy Details."""
    props.error = last_line(message) or "Unknown error"
    props.error_details = details or str(message)


def import_failed(props, err: Exception) -> None:
    """The panel's line for an import that raised: the error's last line, the traceback behind Copy Details."""
    set_error(props, f"Import failed: {last_line(err) or type(err).__name__}", traceback.format_exc())


def last_line(message) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _reset_job(props, state):
    props.error = props.error_details = props.job_phase = ""
    props.job_id = ""
    props.job_state = state
    props.job_step = props.job_total = props.job_reconnect = 0
    props.job_queue_position = -1
    props.job_eta = -1.0
    props.job_download_taesd = False


def _history_item(props, job_id):
    return next((item for item in props.history if item.job_id == job_id), None)


# --- the handlers: (scene props, the job's history item or None, the event) -----------------------------------


def _phase(props, item, event: events.Phase):
    props.job_phase = event.text


def _backend(props, item, event: events.Backend):
    current.server, current.server_error = event.health, token_problem(event.health)


def token_problem(health: dict | None) -> str:
    """'' unless the server's /v1/health says our token is not the one it was started with (health answers
    anyone, so an answer alone does not mean the server will take our jobs)."""
    if health and health.get("authenticated") is False:
        return str(refused_token(get_prefs().token if get_prefs().mode == "REMOTE" else BACKEND.token))
    return ""


def _models(props, item, event: events.Models):
    current.models = event.models


def _taesd(props, item, event: events.Taesd):
    props.job_download_taesd = event.downloads


def _info(props, item, event: events.Info):
    current.server, current.server_error = event.health or {}, event.error or token_problem(event.health)
    if event.models is not None:
        current.models = event.models
    if event.downloads is not None:
        current.downloads = event.downloads
    get_prefs().status = server_status_text()


def _submitted(props, item, event: events.Submitted):
    props.job_id = event.job_id
    props.job_phase = ""
    if props.job_state == "starting":
        props.job_state = "queued"
    item = props.history.add()
    item.job_id, item.state = event.job_id, "queued"
    fill_item(item, event.request)
    props.history_index = len(props.history) - 1


def _status(props, item, event: events.Status):
    status = event.status
    props.job_id = event.job_id
    props.job_reconnect = 0
    if status["state"] == "exporting" and props.job_state != "exporting":
        current.export_started = time.monotonic()
    props.job_state = status["state"]
    props.job_step, props.job_total = status.get("step", 0), status.get("total", 0)
    eta = status.get("eta_s")
    props.job_eta = -1.0 if eta is None else float(eta)
    qpos = status.get("queue_position")
    props.job_queue_position = -1 if qpos is None else int(qpos)
    batch = list(getattr(current.worker, "job_ids", None) or [])
    if event.job_id in batch:
        props.job_index = batch.index(event.job_id)
    if item:
        item.state = status["state"]
        fill_item(item, status["request"])  # what the server runs: the seed, steps and model it chose


def _reconnecting(props, item, event: events.Reconnecting):
    props.job_reconnect = event.attempt


def _preview(props, item, event: events.Preview):
    load_preview(event.path)
    if item:
        item.preview_path = event.path
    if current.thumbs is not None and event.path in current.thumbs:
        current.thumbs[event.path].reload()  # the history thumbnail shows the latest preview, not the first


def _done(props, item, event: events.Done):
    props.job_phase = "importing"
    if item is None:
        props.job_phase = ""
        return
    item.glb_path = event.glb
    # The job is done on the server whatever the import says: a broken file is fetched again by Re-import.
    item.state = props.job_state = "done"
    item.error = ""
    try:
        result = import_item(bpy.context, item)
        placement = getattr(current.worker, "on_imported", None)  # e.g. onto the selected object (selection.py)
        if placement is not None:
            placement(bpy.context, result)
        else:
            place_variation(result, props.job_index)
    except Exception as err:  # noqa: BLE001  (the importer's errors carry whole tracebacks)
        import_failed(props, err)
        props.error = f"{props.error}; Re-import downloads it again"
        item.error = props.error
        _forget_download(item)
    props.job_phase = ""


VARIATION_GAP = 1.5  # variations stand this many object sizes apart along X


def place_variation(result, index: int) -> None:
    """Variation ``index`` (0 = the first, at the cursor) moves along X, so a batch stands side by side instead
    of piled on the cursor."""
    if index > 0:
        result.location.x += index * VARIATION_GAP * (max(result.dimensions) or 1.0)


def _forget_download(item) -> None:
    """Drop a downloaded GLB that would not import, so the next Re-import fetches it from the server again."""
    path = bpy.path.abspath(item.glb_path)
    if path and os.path.isfile(path):
        os.remove(path)
    item.glb_path = ""


def _failed(props, item, event: events.Failed):
    props.job_state = "failed"
    props.job_phase = ""
    err = event.status.get("error") or "The job failed"
    message = f"{err} ({event.status['hint']})" if event.status.get("hint") else err
    set_error(props, message, message)
    if item:
        item.state, item.error = "failed", props.error


def _cancelled(props, item, event: events.Cancelled):
    props.job_state = "cancelled"
    props.job_phase = ""
    if item:
        item.state = "cancelled"


def _interrupted(props, item, event: events.Interrupted):
    props.job_state = "interrupted"
    props.job_phase = ""
    set_error(props, f"{event.message}; press Generate to start again")
    if item:
        item.state = "interrupted"


def _not_downloaded(props, item, event: events.NotDownloaded):
    _reset_job(props, "")
    set_error(props, event.message)


def _error(props, item, event: events.Error):
    props.job_state = "error"
    props.job_phase = ""
    props.job_reconnect = 0
    set_error(props, event.message)
    current.server, current.server_error = {}, event.message  # the status line must not keep saying "ready"
    if item:
        item.state, item.error = "error", props.error


def _download_status(props, item, event: events.DownloadStatus):
    _remember_download(event.status)


def _download_ended(props, item, event: events.DownloadEnded):
    _remember_download(event.status)
    if event.models is not None:
        current.models = event.models
    status = event.status
    if event.error:
        set_error(props, event.error)
    elif status.get("state") == "failed":
        message = status.get("error") or "The download failed"
        set_error(props, f"{message} ({status['hint']})" if status.get("hint") else message)


HANDLERS = {
    events.Phase: _phase, events.Backend: _backend, events.Models: _models,
    events.Taesd: _taesd, events.Info: _info, events.Submitted: _submitted, events.Status: _status,
    events.Reconnecting: _reconnecting, events.Preview: _preview, events.Done: _done, events.Failed: _failed,
    events.Cancelled: _cancelled, events.Interrupted: _interrupted, events.NotDownloaded: _not_downloaded,
    events.Error: _error,
    events.DownloadStatus: _download_status, events.DownloadEnded: _download_ended,
    events.InstallEnded: _install_ended,
}


def apply(props, event) -> None:
    """Apply one event to ``props`` (a scene's NFSD properties) with the handler for its class."""
    job_id = event.job_id if isinstance(event, events.JobEvent) else None
    item = _history_item(props, job_id) if job_id else None
    HANDLERS[type(event)](props, item, event)


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
    if busy() or _info_busy() or downloading() or install_running() or not jobs.EVENTS.empty():
        return TIMER_S
    return None


def _redraw():
    wm = getattr(bpy.context, "window_manager", None)
    for win in getattr(wm, "windows", []):
        for area in win.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def server_status_text() -> str:
    """One line: booting / ready on <device> / stopped / remote, or the last error."""
    prefs = get_prefs()
    if prefs.mode == "REMOTE":  # the URL once: an error that names it already says where
        where = "remote" if prefs.url.rstrip("/") in current.server_error else f"remote {prefs.url}"
    elif BACKEND.booting:
        return "Backend: booting…"
    elif BACKEND.running:
        where = "local"
    else:
        return "Backend: stopped (starts on Generate)"
    if current.server_error:
        return f"Backend ({where}): {current.server_error}"
    health = current.server
    if health:
        return f"Backend ({where}): ready on {str(health.get('device', '?')).upper()}, nfsd {health.get('version')}"
    return f"Backend ({where}): not checked"


def load_preview(path):
    img = bpy.data.images.get(PREVIEW_IMAGE)
    if img is None:
        img = bpy.data.images.load(path, check_existing=False)
        img.name = PREVIEW_IMAGE
    else:
        img.filepath = path
        img.reload()
    if hasattr(img, "preview_ensure"):
        img.preview_ensure()
        img.preview.reload()


def import_item(context, item):
    """Import a history entry's GLB, its job's fields as the object's properties; rotation as Euler angles,
    which the N-panel and the artist's keyframes expect (the glTF importer leaves quaternions)."""
    path = bpy.path.abspath(item.glb_path)
    result = importer.import_glb(context, path, item.prompt, item.job_id, item_metadata(item))
    result.rotation_mode = "XYZ"
    return result


def fetch_again(context, item) -> None:
    """Download a finished job's GLB from the server again and import it (the worker follows the done job)."""
    start_job(context, [], resume=[item.job_id])


@persistent
def reconcile_on_load(_dummy=None):
    """A file saved mid-job reopens with the job as it was: follow it (starting the local backend, which resumes
    it) if the server still has it, else say it was interrupted; Cancel works either way. A running generation
    carries on into a file that has none of its own (File › New), so its result is not lost silently."""
    for scene in bpy.data.scenes:  # the file's last message was about that session; History keeps each job's own
        scene.nfsd.error = scene.nfsd.error_details = ""
    old = current.worker
    if old is not None and old.is_alive():
        if not any(_pending(scene.nfsd) or scene.nfsd.job_state in ACTIVE for scene in bpy.data.scenes):
            _adopt(bpy.context.scene.nfsd, old)
            return
        old.stop_event.set()  # the opened file has its own job to follow
    current.worker = None
    for scene in bpy.data.scenes:
        props = scene.nfsd
        pending = _pending(props)
        if props.job_state not in ACTIVE and not pending:
            continue
        props.job_phase, props.job_reconnect = "", 0
        if not pending and not props.job_id:
            message = "The generation did not reach the server before the file was saved"
            apply(props, events.Interrupted(None, message))
            continue
        pending = pending or [props.job_id]
        prefs = get_prefs()
        if prefs.mode == "LOCAL" and not BACKEND.running and not os.path.isfile(python_path(prefs)):
            for job_id in pending:
                apply(props, events.Interrupted(job_id, "The backend that ran this job has stopped (Blender was closed)"))
            continue
        if scene == bpy.context.scene:
            start_job(bpy.context, [], resume=pending)


def _pending(props) -> list[str]:
    return [it.job_id for it in props.history if it.state in ACTIVE and it.job_id]


def _adopt(props, worker) -> None:
    """Show ``worker``'s running batch in ``props`` (a new file's scene): its jobs in History, its state in the
    panel; the events that follow update them as before."""
    requests = dict(zip(worker.job_ids, worker.requests))
    for job_id in worker.job_ids:
        item = props.history.add()
        item.job_id, item.state = job_id, "queued"
        if job_id in requests:
            fill_item(item, requests[job_id])
    props.history_index = len(props.history) - 1
    props.job_id, props.job_state = worker.job_id or "", "queued" if worker.job_id else "starting"
    props.job_count = max(1, len(worker.requests) + len(worker.resume))


def register():
    current.thumbs = bpy.utils.previews.new()
    bpy.app.handlers.load_post.append(reconcile_on_load)
    ON_BACKEND_CHANGED.append(backend_changed)


def unregister():
    if reconcile_on_load in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(reconcile_on_load)
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

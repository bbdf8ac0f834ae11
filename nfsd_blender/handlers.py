"""The workers' news applied to the scene on the main thread: one handler per ``events`` class (``HANDLERS``),
each given the scene's NFSD properties, the job's History entry (or None) and the event. Job states change only
through ``state.enter``."""

from __future__ import annotations

import time

import bpy

from . import events, placement
from .backend import BACKEND
from .client import refused_token
from .preferences import get_prefs
from .properties import fill_item
from .state import current, enter, set_error

PREVIEW_IMAGE = "NFSD Preview"


def token_problem(health: dict | None) -> str:
    """'' unless the server's /v1/health says our token is not the one it was started with (health answers
    anyone, so an answer alone does not mean the server will take our jobs)."""
    if health and health.get("authenticated") is False:
        return str(refused_token(get_prefs().token if get_prefs().mode == "REMOTE" else BACKEND.token))
    return ""


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


def reset_job(props, state: str) -> None:
    """The panel's job line cleared for a new job (``state``: where it starts)."""
    props.error = props.error_details = props.job_phase = ""
    props.job_id = ""
    enter(props, None, state)
    props.job_step = props.job_total = props.job_reconnect = 0
    props.job_queue_position = -1
    props.job_eta = -1.0
    props.job_download_taesd = False


def _ended(props, item, state: str) -> None:
    enter(props, item, state)
    props.job_phase = ""


def _phase(props, item, event: events.Phase):
    props.job_phase = event.text


def _backend(props, item, event: events.Backend):
    current.server, current.server_error = event.health, token_problem(event.health)


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
    item = props.history.add()
    item.job_id = event.job_id
    fill_item(item, event.request)
    item.variation, item.place_on, item.place_beside = event.variation, event.placement.on, event.placement.beside
    enter(props, item, "queued")
    props.history_index = len(props.history) - 1


def _status(props, item, event: events.Status):
    status = event.status
    props.job_id = event.job_id
    props.job_reconnect = 0
    # The server's "done" is ours once the result is imported: until then it is being fetched.
    state = "fetching" if status["state"] == "done" else status["state"]
    if state == "exporting" and props.job_state != "exporting":
        current.export_started = time.monotonic()
    enter(props, item, state)
    props.job_step, props.job_total = status.get("step", 0), status.get("total", 0)
    eta = status.get("eta_s")
    props.job_eta = -1.0 if eta is None else float(eta)
    qpos = status.get("queue_position")
    props.job_queue_position = -1 if qpos is None else int(qpos)
    batch = list(getattr(current.worker, "job_ids", None) or [])
    if event.job_id in batch:
        props.job_index = batch.index(event.job_id)
    if item:
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
    if item is None:  # not this file's job (its History entry is gone)
        props.job_phase = ""
        return
    item.glb_path = event.glb
    item.error = ""
    props.job_phase = "importing"
    try:
        placement.place(placement.import_item(bpy.context, item), item)
    except Exception as err:  # noqa: BLE001  (the importer's errors carry whole tracebacks)
        placement.import_failed(props, err)
        props.error = f"{props.error}; Re-import downloads it again"
        item.error = props.error
        placement.forget_download(item)
    # The job is done on the server whatever the import said: a broken file is fetched again by Re-import.
    _ended(props, item, "done")


def _failed(props, item, event: events.Failed):
    err = event.status.get("error") or "The job failed"
    message = f"{err} ({event.status['hint']})" if event.status.get("hint") else err
    set_error(props, message, message)
    _ended(props, item, "failed")
    if item:
        item.error = props.error


def _cancelled(props, item, event: events.Cancelled):
    _ended(props, item, "cancelled")


def _interrupted(props, item, event: events.Interrupted):
    set_error(props, f"{event.message}; press Generate to start again")
    _ended(props, item, "interrupted")


def _not_downloaded(props, item, event: events.NotDownloaded):
    reset_job(props, "")
    set_error(props, event.message)


def _error(props, item, event: events.Error):
    props.job_reconnect = 0
    set_error(props, event.message)
    _ended(props, item, "error")
    current.server, current.server_error = {}, event.message  # the status line must not keep saying "ready"
    if item:
        item.error = props.error


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


def _remember_download(status: dict) -> None:
    current.downloads = [d for d in current.downloads if d.get("model") != status.get("model")] + [status]


def _install_ended(props, item, event: events.InstallEnded):
    prefs = get_prefs()
    if event.state == "done":
        prefs.python_path = event.python
        prefs.install_status = f"Backend {event.version} installed: {event.python}"
        current.server, current.server_error = {}, ""
    else:
        prefs.install_status = event.error
        set_error(props, event.error)


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
    item = next((it for it in props.history if it.job_id == job_id), None) if job_id else None
    HANDLERS[type(event)](props, item, event)


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

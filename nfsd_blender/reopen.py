"""A file saved mid-job, reopened: its jobs are followed again (starting the local backend, which resumes them)
if the server still has them, else said to be interrupted; Cancel works either way."""

from __future__ import annotations

import os

import bpy
from bpy.app.handlers import persistent

from . import events, session
from .backend import BACKEND
from .handlers import apply
from .preferences import get_prefs, python_path
from .properties import fill_item
from .state import ACTIVE, current, enter


@persistent
def reconcile_on_load(_dummy=None):
    """Follow the opened file's unfinished jobs. A running generation carries on into a file that has none of
    its own (File › New), so its result is not lost silently."""
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
            session.start_job(bpy.context, [], resume=pending)


def _pending(props) -> list[str]:
    return [it.job_id for it in props.history if it.state in ACTIVE and it.job_id]


def _adopt(props, worker) -> None:
    """Show ``worker``'s running batch in ``props`` (a new file's scene): its jobs in History, its state in the
    panel; the events that follow update them as before."""
    requests = dict(zip(worker.job_ids, worker.requests))
    for index, job_id in enumerate(worker.job_ids):
        item = props.history.add()
        item.job_id, item.state = job_id, "queued"
        placement = getattr(worker, "placement", None)
        item.variation = index
        item.place_on, item.place_beside = (placement.on, placement.beside) if placement else ("", "")
        if job_id in requests:
            fill_item(item, requests[job_id])
    props.history_index = len(props.history) - 1
    props.job_id = worker.job_id or ""
    enter(props, None, "queued" if worker.job_id else "starting")
    props.job_count = max(1, len(worker.requests) + len(worker.resume))


def register():
    bpy.app.handlers.load_post.append(reconcile_on_load)


def unregister():
    if reconcile_on_load in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(reconcile_on_load)

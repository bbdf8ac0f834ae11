"""Operators (short: gather inputs, start a worker, report) and the main-thread timer that reads its events."""

import os
import queue
import random
import threading

import bpy
from bpy.props import BoolProperty

from . import contract, importer, jobs
from .backend import BACKEND
from .client import BackendError
from .preferences import get_prefs

PREVIEW_IMAGE = "NFSD Preview"
TIMER_S = 0.25
STATE = {"worker": None}


def settings_from_prefs(context) -> jobs.Settings:
    p = get_prefs(context)
    data_dir = bpy.path.abspath(p.data_dir) if p.data_dir else os.path.join(os.path.expanduser("~"), "nfsd_data")
    return jobs.Settings(p.mode, bpy.path.abspath(p.python_path), data_dir, p.url, p.token, p.default_prior, p.model)


def build_request(source, prefs, seed=None) -> dict:
    """The POST /v1/jobs body from the form (or a history item: same field names), seed overridable."""
    return contract.job_request(
        source.prompt, negative_prompt=source.negative_prompt, method=source.method,
        guidance_scale=source.guidance_scale, seed=source.seed if seed is None else seed, steps=source.steps,
        preset=source.preset, poly_budget=source.poly_budget, texture_size=int(source.texture_size or contract.DEFAULT_TEXTURE_SIZE),
        prior=prefs.default_prior, model=prefs.model,
    )


def _ensure_timer():
    if not bpy.app.timers.is_registered(poll_timer):
        bpy.app.timers.register(poll_timer, first_interval=TIMER_S)


def _busy() -> bool:
    w = STATE["worker"]
    return w is not None and w.is_alive()


def start_job(context, request, worker=None) -> None:
    """Start ``worker`` (default: a plain JobWorker for ``request``) and the timer that reads its events."""
    props = context.scene.nfsd
    worker = worker or jobs.JobWorker(settings_from_prefs(context), request)
    STATE["worker"] = worker
    props.error = ""
    props.job_id = ""
    props.job_state = "starting"
    props.job_step = props.job_total = 0
    props.job_eta = -1.0
    worker.start()
    _ensure_timer()


def _history_item(props, job_id):
    for item in props.history:
        if item.job_id == job_id:
            return item
    return None


def _redraw():
    wm = getattr(bpy.context, "window_manager", None)
    for win in getattr(wm, "windows", []):
        for area in win.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def _handle(event) -> None:
    kind, job_id, payload = event
    scene = bpy.context.scene
    props = scene.nfsd
    if kind == "health":
        get_prefs().status = payload
        return
    if kind == "submitted":
        props.job_id = job_id
        item = props.history.add()
        item.job_id = job_id
        for key in ("prompt", "negative_prompt", "seed", "preset", "poly_budget"):
            setattr(item, key, payload[key])
        item.method = payload["method"].upper()
        item.guidance_scale = payload["guidance_scale"] or 0.0
        item.steps = payload["steps"] or 0
        item.texture_size = str(payload["texture_size"])
        item.state = "queued"
        props.history_index = len(props.history) - 1
        return
    item = _history_item(props, job_id) if job_id else None
    if kind == "status":
        props.job_state = payload["state"]
        props.job_step, props.job_total = payload.get("step", 0), payload.get("total", 0)
        eta = payload.get("eta_s")
        props.job_eta = -1.0 if eta is None else float(eta)
        if item:
            item.state = payload["state"]
            item.steps = payload["request"]["steps"]
            item.seed = payload["request"]["seed"]
            item.guidance_scale = payload["request"]["guidance_scale"]
    elif kind == "preview":
        load_preview(payload)
    elif kind == "done":
        props.job_state = "done"
        if item:
            item.state = "done"
            item.glb_path = payload["glb"]
            result = import_item(bpy.context, item)
            placement = getattr(STATE["worker"], "on_imported", None)  # e.g. onto the selected object (selection.py)
            if placement is not None:
                placement(bpy.context, result)
    elif kind in ("failed", "cancelled"):
        props.job_state = kind
        if item:
            item.state = kind
        if kind == "failed":
            err = payload.get("error") or "The job failed"
            props.error = f"{err} ({payload['hint']})" if payload.get("hint") else err
    elif kind == "error":
        props.job_state = "error"
        props.error = payload
        if item:
            item.state = "error"


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
    meta = {
        "prompt": item.prompt, "seed": item.seed, "method": item.method,
        "guidance_scale": item.guidance_scale, "steps": item.steps, "job_id": item.job_id,
    }
    return importer.import_glb(context, bpy.path.abspath(item.glb_path), item.prompt, meta)


def poll_timer():
    """Main thread: drain the worker's events into bpy. Returns the next interval, or None when idle."""
    while True:
        try:
            event = jobs.EVENTS.get_nowait()
        except queue.Empty:
            break
        try:
            _handle(event)
        except Exception as err:  # noqa: BLE001  (keep Blender working, show the problem)
            print(f"NFSD: event {event[0]} failed: {err!r}")
            if hasattr(bpy.context.scene, "nfsd"):
                bpy.context.scene.nfsd.error = f"{type(err).__name__}: {err}"
    _redraw()
    if _busy() or not jobs.EVENTS.empty() or STATE.get("health_busy"):
        return TIMER_S
    return None


class NFSD_OT_generate(bpy.types.Operator):
    bl_idname = "nfsd.generate"
    bl_label = "Generate"
    bl_description = "Generate a textured mesh from the prompt"

    def execute(self, context):
        props = context.scene.nfsd
        if not props.prompt.strip():
            props.error = "Type a prompt first"
            self.report({"ERROR"}, props.error)
            return {"CANCELLED"}
        if _busy():
            self.report({"WARNING"}, "A generation is already running")
            return {"CANCELLED"}
        prefs = get_prefs(context)
        if prefs.mode == "LOCAL" and not BACKEND.running and not os.path.isfile(bpy.path.abspath(prefs.python_path)):
            props.error = f"Backend Python not found: {prefs.python_path or '(empty)'}; set it in the preferences"
            self.report({"ERROR"}, props.error)
            return {"CANCELLED"}
        start_job(context, build_request(props, prefs))
        return {"FINISHED"}


class NFSD_OT_cancel(bpy.types.Operator):
    bl_idname = "nfsd.cancel"
    bl_label = "Cancel"
    bl_description = "Cancel the running generation"

    @classmethod
    def poll(cls, context):
        return _busy()

    def execute(self, context):
        STATE["worker"].cancel_event.set()
        self.report({"INFO"}, "Cancelling…")
        return {"FINISHED"}


class NFSD_OT_random_seed(bpy.types.Operator):
    bl_idname = "nfsd.random_seed"
    bl_label = "Random Seed"
    bl_description = "Pick a random seed"

    def execute(self, context):
        context.scene.nfsd.seed = random.randint(0, contract.MAX_SEED)
        return {"FINISHED"}


class NFSD_OT_start_backend(bpy.types.Operator):
    bl_idname = "nfsd.start_backend"
    bl_label = "Start Backend"

    def execute(self, context):
        s = settings_from_prefs(context)
        threading.Thread(target=_health_worker, args=(s, True), daemon=True).start()
        STATE["health_busy"] = True
        _ensure_timer()
        get_prefs(context).status = "Starting…"
        return {"FINISHED"}


class NFSD_OT_stop_backend(bpy.types.Operator):
    bl_idname = "nfsd.stop_backend"
    bl_label = "Stop Backend"

    def execute(self, context):
        BACKEND.stop()
        get_prefs(context).status = "Stopped"
        return {"FINISHED"}


class NFSD_OT_check_health(bpy.types.Operator):
    bl_idname = "nfsd.check_health"
    bl_label = "Check Server"

    def execute(self, context):
        s = settings_from_prefs(context)
        threading.Thread(target=_health_worker, args=(s, False), daemon=True).start()
        STATE["health_busy"] = True
        _ensure_timer()
        return {"FINISHED"}


def _health_worker(settings, start):
    try:
        if settings.mode == "LOCAL" and not BACKEND.running and not start:
            text = "Local backend not running"
        else:
            client = jobs.make_client(settings)
            h = client.health()
            warm = ", ".join(h.get("models_loaded") or []) or "none"
            text = f"nfsd {h.get('version')} on {h.get('device')}; warm models: {warm}"
    except BackendError as err:
        text = f"Error: {err}"
    jobs.EVENTS.put(("health", None, text))
    STATE["health_busy"] = False


class NFSD_OT_history_reimport(bpy.types.Operator):
    bl_idname = "nfsd.history_reimport"
    bl_label = "Re-import"

    def execute(self, context):
        props = context.scene.nfsd
        if not (0 <= props.history_index < len(props.history)):
            return {"CANCELLED"}
        item = props.history[props.history_index]
        if not item.glb_path or not os.path.isfile(bpy.path.abspath(item.glb_path)):
            self.report({"ERROR"}, "No downloaded result for this entry")
            return {"CANCELLED"}
        import_item(context, item)
        return {"FINISHED"}


class NFSD_OT_history_rerun(bpy.types.Operator):
    bl_idname = "nfsd.history_rerun"
    bl_label = "Re-run"
    new_seed: BoolProperty(default=False)

    def execute(self, context):
        props = context.scene.nfsd
        if _busy() or not (0 <= props.history_index < len(props.history)):
            return {"CANCELLED"}
        item = props.history[props.history_index]
        seed = random.randint(0, contract.MAX_SEED) if self.new_seed else None
        start_job(context, build_request(item, get_prefs(context), seed))
        return {"FINISHED"}


classes = (
    NFSD_OT_generate, NFSD_OT_cancel, NFSD_OT_random_seed, NFSD_OT_start_backend, NFSD_OT_stop_backend,
    NFSD_OT_check_health, NFSD_OT_history_reimport, NFSD_OT_history_rerun,
)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister():
    if bpy.app.timers.is_registered(poll_timer):
        bpy.app.timers.unregister(poll_timer)
    w = STATE["worker"]
    if w is not None:
        w.stop_event.set()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)

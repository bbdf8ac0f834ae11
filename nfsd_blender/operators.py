"""Operators (short: gather inputs, start a worker, report) and the main-thread timer that reads its events."""

import os
import queue
import random
import subprocess
import threading
import time
import traceback

import bpy
from bpy.app.handlers import persistent
from bpy.props import BoolProperty, StringProperty

from . import backend, contract, importer, jobs
from .backend import BACKEND
from .client import BackendError
from .preferences import get_prefs

PREVIEW_IMAGE = "NFSD Preview"
TIMER_S = 0.25
ACTIVE = ("starting", "queued", "running", "exporting")
# worker: the running JobWorker; info: the thread asking the server for health and models;
# models: the server's last /v1/models answer; server: its last /v1/health answer; thumbs: the history's
# bpy.utils.previews collection (owned by panel).
STATE = {"worker": None, "info": None, "models": [], "server": {}, "server_error": "", "export_started": None,
         "thumbs": None}
BUSY_MESSAGE = "Wait for the running generation, or cancel it"


def python_path(prefs) -> str:
    """The backend Python: the preference, else whatever is installed where the README says (found each time)."""
    return bpy.path.abspath(prefs.python_path) if prefs.python_path else backend.detect_python()


def output_dir(context=None) -> str:
    p = get_prefs(context)
    data_dir = bpy.path.abspath(p.data_dir) if p.data_dir else os.path.join(os.path.expanduser("~"), "nfsd_data")
    return data_dir


def settings_from_prefs(context) -> jobs.Settings:
    p = get_prefs(context)
    return jobs.Settings(p.mode, python_path(p), output_dir(context), p.url, p.token, p.default_prior, p.model)


def build_request(source, prefs, seed=None, **extra) -> dict:
    """The POST /v1/jobs body from the form (or a history item: same field names); seed and any other
    ``contract.job_request`` field (e.g. the init-mesh ones) overridable."""
    prior = source.prior or prefs.default_prior
    return contract.job_request(
        source.prompt, negative_prompt=source.negative_prompt, method=source.method,
        guidance_scale=source.guidance_scale, seed=source.seed if seed is None else seed, steps=source.steps,
        preset=source.preset, poly_budget=source.poly_budget,
        texture_size=int(source.texture_size or contract.DEFAULT_TEXTURE_SIZE),
        prior=prior, model=source.model or prefs.model, dtype=prefs.dtype,
        encoder=jobs.request_encoder(prior, prefs.encoder), **extra,
    )


def _ensure_timer():
    if not bpy.app.timers.is_registered(poll_timer):
        bpy.app.timers.register(poll_timer, first_interval=TIMER_S)


def busy() -> bool:
    w = STATE["worker"]
    return w is not None and w.is_alive()


def _info_busy() -> bool:
    t = STATE["info"]
    return t is not None and t.is_alive()


def _reset_job(props, state):
    props.error = props.error_details = props.job_phase = ""
    props.job_id = ""
    props.job_state = state
    props.job_step = props.job_total = props.job_reconnect = 0
    props.job_queue_position = -1
    props.job_eta = -1.0
    props.job_download_gb = 0.0
    props.job_download_taesd = False


def start_job(context, requests, resume=None, worker=None) -> None:
    """Start ``worker`` (default: a JobWorker for ``requests``) and the timer that reads its events."""
    props = context.scene.nfsd
    worker = worker or jobs.JobWorker(settings_from_prefs(context), requests, resume=resume)
    STATE["worker"] = worker
    if not resume:
        _reset_job(props, "starting")
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


def set_error(props, message, details=""):
    """One readable line in the panel; the full text (a traceback, a server log) behind Copy Details."""
    lines = [ln.strip() for ln in str(message).strip().splitlines() if ln.strip()]
    props.error = lines[-1] if lines else "Unknown error"
    props.error_details = details or str(message)


# --- worker events, applied on the main thread -------------------------------------------------------------


def _on_phase(props, item, text):
    props.job_phase = text


def _on_backend(props, item, health):
    STATE["server"], STATE["server_error"] = health, ""


def _on_models(props, item, models):
    STATE["models"] = models


def _on_model(props, item, entry):
    props.job_download_gb = 0.0 if entry.get("cached", True) else (entry.get("download_bytes") or 0) / 1e9


def _on_taesd(props, item, downloads):
    props.job_download_taesd = bool(downloads)


def _on_submitted(props, item, request, job_id=""):
    props.job_id = job_id
    props.job_phase = ""
    if props.job_state == "starting":
        props.job_state = "queued"
    item = props.history.add()
    item.job_id = job_id
    for key in ("prompt", "negative_prompt", "seed", "preset", "poly_budget"):
        setattr(item, key, request[key])
    item.method = request["method"].upper()
    item.guidance_scale = request["guidance_scale"] or 0.0
    item.steps = request["steps"] or 0
    item.texture_size = str(request["texture_size"])
    item.prior, item.model = request["prior"] or "", request["model"] or ""
    item.state = "queued"
    props.history_index = len(props.history) - 1


def _on_status(props, item, status, job_id=""):
    props.job_id = job_id
    props.job_reconnect = 0
    if status["state"] == "exporting" and props.job_state != "exporting":
        STATE["export_started"] = time.monotonic()  # the server gives no ETA for export: show the time it takes
    props.job_state = status["state"]
    props.job_step, props.job_total = status.get("step", 0), status.get("total", 0)
    eta = status.get("eta_s")
    props.job_eta = -1.0 if eta is None else float(eta)
    qpos = status.get("queue_position")
    props.job_queue_position = -1 if qpos is None else int(qpos)
    if item:
        item.state = status["state"]
        item.steps = status["request"]["steps"]
        item.seed = status["request"]["seed"]
        item.guidance_scale = status["request"]["guidance_scale"]
        item.prior = status["request"].get("prior") or item.prior


def _on_reconnecting(props, item, info):
    props.job_reconnect = int(info["attempt"])


def _on_preview(props, item, path):
    load_preview(path)
    if item:
        item.preview_path = path
    thumbs = STATE["thumbs"]
    if thumbs is not None and path in thumbs:
        thumbs[path].reload()  # the history thumbnail shows the latest preview, not the first


def _on_done(props, item, payload):
    props.job_phase = "importing"
    if item is None:
        props.job_phase = ""
        return
    item.glb_path = payload["glb"]
    try:
        result = import_item(bpy.context, item)
        placement = getattr(STATE["worker"], "on_imported", None)  # e.g. onto the selected object (selection.py)
        if placement is not None:
            placement(bpy.context, result)
    except Exception as err:  # noqa: BLE001  (the importer's errors carry whole tracebacks)
        item.state = "failed"
        props.job_state = "failed"
        set_error(props, f"Import failed: {_last_line(err)}", traceback.format_exc())
        item.error = props.error
    else:
        item.state = props.job_state = "done"
    props.job_phase = ""


def _on_failed(props, item, status):
    props.job_state = "failed"
    props.job_phase = ""
    err = status.get("error") or "The job failed"
    message = f"{err} ({status['hint']})" if status.get("hint") else err
    if props.job_download_gb:
        message += " — the model is not downloaded; pick a downloaded model or Analytic in Model"
    set_error(props, message, message)
    if item:
        item.state, item.error = "failed", props.error


def _on_cancelled(props, item, status):
    props.job_state = "cancelled"
    props.job_phase = ""
    if item:
        item.state = "cancelled"


def _on_interrupted(props, item, message):
    props.job_state = "interrupted"
    props.job_phase = ""
    set_error(props, f"{message}; press Generate to start again")
    if item:
        item.state = "interrupted"


def _on_error(props, item, message):
    props.job_state = "error"
    props.job_phase = ""
    props.job_reconnect = 0
    set_error(props, message)
    if item:
        item.state, item.error = "error", props.error


def _on_info(props, item, info):
    """The answer of Start Backend / Check Server / Refresh Models."""
    STATE["server"] = info.get("health") or {}
    STATE["server_error"] = info.get("error", "")
    if info.get("models") is not None:
        STATE["models"] = info["models"]
    get_prefs().status = server_status_text()


HANDLERS = {name[4:]: fn for name, fn in globals().items() if name.startswith("_on_")}


def _handle(event) -> None:
    kind, job_id, payload = event
    props = bpy.context.scene.nfsd
    item = _history_item(props, job_id) if job_id else None
    fn = HANDLERS[kind]
    if kind in ("submitted", "status"):
        fn(props, item, payload, job_id=job_id)
    else:
        fn(props, item, payload)


def _last_line(err) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def server_status_text() -> str:
    """One line: booting / ready on <device> / stopped / remote, or the last error."""
    prefs = get_prefs()
    health = STATE["server"]
    if prefs.mode == "REMOTE":
        where = f"remote {prefs.url}"
    elif BACKEND.booting:
        return "Backend: booting…"
    elif BACKEND.running:
        where = "local"
    else:
        return "Backend: stopped (starts on Generate)"
    if STATE["server_error"]:
        return f"Backend ({where}): {STATE['server_error']}"
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
    meta = {
        "prompt": item.prompt, "negative_prompt": item.negative_prompt, "seed": item.seed,
        "method": item.method.lower(), "guidance_scale": item.guidance_scale, "steps": item.steps,
        "preset": item.preset, "poly_budget": item.poly_budget, "texture_size": int(item.texture_size or 0),
        "prior": item.prior, "model": item.model, "job_id": item.job_id,
    }
    return importer.import_glb(context, bpy.path.abspath(item.glb_path), item.prompt, item.job_id, meta)


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
                set_error(bpy.context.scene.nfsd, f"{type(err).__name__}: {err}", traceback.format_exc())
    _redraw()
    if busy() or _info_busy() or not jobs.EVENTS.empty():
        return TIMER_S
    return None


@persistent
def reconcile_on_load(_dummy=None):
    """A file saved mid-job reopens with the job as it was: follow it if the server still has it, else say it
    was interrupted. Either way Generate is back."""
    old = STATE["worker"]
    if old is not None and old.is_alive():
        old.stop_event.set()  # it follows the previous file's job
    STATE["worker"] = None
    for scene in bpy.data.scenes:
        props = scene.nfsd
        pending = [it.job_id for it in props.history if it.state in ACTIVE and it.job_id]
        if props.job_state not in ACTIVE and not pending:
            continue
        props.job_phase, props.job_reconnect = "", 0
        if not pending and not props.job_id:
            _on_interrupted(props, None, "The generation did not reach the server before the file was saved")
            continue
        pending = pending or [props.job_id]
        if get_prefs().mode == "LOCAL" and not BACKEND.running:
            for job_id in pending:
                _on_interrupted(props, _history_item(props, job_id),
                                "The backend that ran this job has stopped (Blender was closed)")
            continue
        if scene == bpy.context.scene:
            start_job(bpy.context, [], resume=pending)


# --- operators ---------------------------------------------------------------------------------------------


class WhenIdle:
    """Mixin: the operator is greyed out while a generation runs, and its tooltip says why."""

    @classmethod
    def poll(cls, context):
        if busy():
            cls.poll_message_set(BUSY_MESSAGE)
            return False
        return True


class NFSD_OT_generate(WhenIdle, bpy.types.Operator):
    bl_idname = "nfsd.generate"
    bl_label = "Generate"
    bl_description = "Generate a textured mesh from the prompt (Variations > 1: one per seed, run in turn)"

    def execute(self, context):
        props = context.scene.nfsd
        if not props.prompt.strip():
            return refuse(self, props, "Type a prompt first")
        prefs = get_prefs(context)
        if prefs.mode == "LOCAL" and not BACKEND.running and not os.path.isfile(python_path(prefs)):
            if prefs.python_path:
                return refuse(self, props, f"Backend Python not found: {prefs.python_path}; pick it again")
            return refuse(self, props, "No backend found: pick its Python, or copy the install command")
        requests = [build_request(props, prefs, (props.seed + i) % (contract.MAX_SEED + 1))
                    for i in range(props.variations)]
        start_job(context, requests)
        return {"FINISHED"}


def refuse(operator, props, message) -> set:
    """An operator's early exit: the reason in the panel and the status bar."""
    props.error = message
    operator.report({"ERROR"}, message)
    return {"CANCELLED"}


class NFSD_OT_cancel(bpy.types.Operator):
    bl_idname = "nfsd.cancel"
    bl_label = "Cancel"
    bl_description = "Cancel the running generation (and its queued variations)"

    @classmethod
    def poll(cls, context):
        return busy()

    def execute(self, context):
        STATE["worker"].cancel_event.set()
        context.scene.nfsd.job_phase = "cancelling"
        self.report({"INFO"}, "Cancelling…")
        return {"FINISHED"}


class NFSD_OT_random_seed(bpy.types.Operator):
    bl_idname = "nfsd.random_seed"
    bl_label = "Random Seed"
    bl_description = "Pick a random seed"

    def execute(self, context):
        context.scene.nfsd.seed = random.randint(0, contract.MAX_SEED)
        return {"FINISHED"}


def _server_info_worker(settings, start, events=jobs.EVENTS):
    """Health and models of the server (starting the local one if ``start``), as one ``info`` event."""
    info = {"health": None, "models": None, "error": ""}
    try:
        if settings.mode == "LOCAL" and not BACKEND.running and not start:
            info["error"] = "not running (starts on Generate)"
        else:
            client = jobs.make_client(settings)
            info["health"] = client.health()
            try:
                info["models"] = client.models()
            except BackendError:
                info["models"] = None  # an older server: the picker offers the defaults
    except BackendError as err:
        info["error"] = str(err)
    events.put(("info", None, info))


def _start_info(context, start):
    if _info_busy():
        return
    thread = threading.Thread(target=_server_info_worker, args=(settings_from_prefs(context), start), daemon=True)
    STATE["info"] = thread  # before start(): the timer must see it busy even if it answers at once
    thread.start()
    _ensure_timer()


class NFSD_OT_start_backend(bpy.types.Operator):
    bl_idname = "nfsd.start_backend"
    bl_label = "Start Backend"
    bl_description = "Start the local backend now (Generate also starts it) and list its models"

    def execute(self, context):
        _start_info(context, True)
        get_prefs(context).status = "Backend: booting…"
        return {"FINISHED"}


class NFSD_OT_stop_backend(bpy.types.Operator):
    bl_idname = "nfsd.stop_backend"
    bl_label = "Stop Backend"

    def execute(self, context):
        if busy():
            STATE["worker"].cancel_event.set()
        BACKEND.stop()
        STATE["server"] = {}
        get_prefs(context).status = "Backend: stopped"
        return {"FINISHED"}


class NFSD_OT_check_health(bpy.types.Operator):
    bl_idname = "nfsd.check_health"
    bl_label = "Check Server"
    bl_description = "Ask the server what it runs on and which models it has"

    def execute(self, context):
        _start_info(context, False)
        return {"FINISHED"}


class NFSD_OT_refresh_models(bpy.types.Operator):
    bl_idname = "nfsd.refresh_models"
    bl_label = "Refresh Models"
    bl_description = "List the models the server can use (starts the local backend)"

    def execute(self, context):
        _start_info(context, True)
        return {"FINISHED"}


class NFSD_OT_set_model(bpy.types.Operator):
    bl_idname = "nfsd.set_model"
    bl_label = "Use Model"
    bl_description = "Generate with this model"
    prior: StringProperty()
    model: StringProperty()

    def execute(self, context):
        props = context.scene.nfsd
        props.prior, props.model = self.prior, self.model
        return {"FINISHED"}


class NFSD_OT_pick_python(bpy.types.Operator):
    bl_idname = "nfsd.pick_python"
    bl_label = "Pick Backend Python"
    bl_description = "Choose the Python of the environment where the nfsd backend is installed"
    filepath: StringProperty(subtype="FILE_PATH")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        path = bpy.path.abspath(self.filepath)
        problem = check_backend_python(path)
        if problem:
            context.scene.nfsd.error = problem
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        get_prefs(context).python_path = path
        context.scene.nfsd.error = ""
        return {"FINISHED"}


def check_backend_python(path) -> str:
    """'' if ``path`` is a Python that can import nfsd_server, else one line saying what is wrong."""
    if not os.path.isfile(path):
        return f"Not a file: {path}"
    try:
        res = subprocess.run(
            [path, "-c", "import importlib.util as u; print(bool(u.find_spec('nfsd_server')))"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"Cannot run {path}: {err}"
    if res.stdout.strip() != "True":
        return f"{os.path.basename(path)} has no nfsd backend installed; copy the install command"
    return ""


class NFSD_OT_copy_install_command(bpy.types.Operator):
    bl_idname = "nfsd.copy_install_command"
    bl_label = "Copy Install Command"
    bl_description = "Copy the shell command that installs the backend in ~/nfsd-backend (see the README)"

    def execute(self, context):
        context.window_manager.clipboard = backend.INSTALL_COMMAND
        self.report({"INFO"}, "Install command copied; run it in the nfsd-blender source folder, then press Generate")
        return {"FINISHED"}


class NFSD_OT_copy_error(bpy.types.Operator):
    bl_idname = "nfsd.copy_error"
    bl_label = "Copy Details"
    bl_description = "Copy the full error text (for a bug report)"

    def execute(self, context):
        props = context.scene.nfsd
        context.window_manager.clipboard = props.error_details or props.error
        return {"FINISHED"}


class NFSD_OT_open_output(bpy.types.Operator):
    bl_idname = "nfsd.open_output"
    bl_label = "Open Folder"
    bl_description = "Open the folder where results are downloaded"

    def execute(self, context):
        path = os.path.join(output_dir(context), "blender")
        os.makedirs(path, exist_ok=True)
        bpy.ops.wm.path_open(filepath=path)
        return {"FINISHED"}


def _selected_item(context, operator):
    props = context.scene.nfsd
    if not (0 <= props.history_index < len(props.history)):
        operator.report({"WARNING"}, "Select a History entry first")
        return None
    return props.history[props.history_index]


class NFSD_OT_history_reimport(bpy.types.Operator):
    bl_idname = "nfsd.history_reimport"
    bl_label = "Re-import"

    def execute(self, context):
        item = _selected_item(context, self)
        if item is None:
            return {"CANCELLED"}
        if not item.glb_path or not os.path.isfile(bpy.path.abspath(item.glb_path)):
            self.report({"ERROR"}, "No downloaded result for this entry")
            return {"CANCELLED"}
        try:
            import_item(context, item)
        except Exception as err:  # noqa: BLE001  (one line, not the importer's traceback)
            set_error(context.scene.nfsd, f"Import failed: {_last_line(err)}", traceback.format_exc())
            self.report({"ERROR"}, context.scene.nfsd.error)
            return {"CANCELLED"}
        return {"FINISHED"}


class NFSD_OT_history_rerun(WhenIdle, bpy.types.Operator):
    bl_idname = "nfsd.history_rerun"
    bl_label = "Re-run"
    new_seed: BoolProperty(default=False)

    def execute(self, context):
        item = _selected_item(context, self)
        if item is None:
            return {"CANCELLED"}
        seed = random.randint(0, contract.MAX_SEED) if self.new_seed else None
        start_job(context, [build_request(item, get_prefs(context), seed)])
        return {"FINISHED"}


class NFSD_OT_history_delete(WhenIdle, bpy.types.Operator):
    bl_idname = "nfsd.history_delete"
    bl_label = "Delete Entry"
    bl_description = "Remove the selected entry from History (the imported object stays)"

    def execute(self, context):
        props = context.scene.nfsd
        if _selected_item(context, self) is None:
            return {"CANCELLED"}
        props.history.remove(props.history_index)
        props.history_index = min(props.history_index, len(props.history) - 1)
        return {"FINISHED"}


class NFSD_OT_history_clear(WhenIdle, bpy.types.Operator):
    bl_idname = "nfsd.history_clear"
    bl_label = "Clear History"
    bl_description = "Remove every History entry (imported objects stay)"

    def execute(self, context):
        context.scene.nfsd.history.clear()
        context.scene.nfsd.history_index = -1
        return {"FINISHED"}


classes = (
    NFSD_OT_generate, NFSD_OT_cancel, NFSD_OT_random_seed, NFSD_OT_start_backend, NFSD_OT_stop_backend,
    NFSD_OT_check_health, NFSD_OT_refresh_models, NFSD_OT_set_model, NFSD_OT_pick_python,
    NFSD_OT_copy_install_command, NFSD_OT_copy_error, NFSD_OT_open_output, NFSD_OT_history_reimport,
    NFSD_OT_history_rerun, NFSD_OT_history_delete, NFSD_OT_history_clear,
)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.app.handlers.load_post.append(reconcile_on_load)


def unregister():
    if reconcile_on_load in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(reconcile_on_load)
    if bpy.app.timers.is_registered(poll_timer):
        bpy.app.timers.unregister(poll_timer)
    w = STATE["worker"]
    if w is not None:
        w.stop_event.set()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)

"""The operators: short (poll, gather inputs, hand the work to ``session``, report); a fixed table, registered in
a loop. Nothing here reads the network's answers: ``session`` applies them on the main thread."""

import os
import random
import subprocess

import bpy
from bpy.props import BoolProperty, StringProperty

from . import contract, placement, session, state
from .jobs import glb_problem, not_downloaded
from .backend import BACKEND
from .preferences import get_prefs, install_log, output_dir, python_path
from .properties import NO_INIT_MESH, build_request

BUSY_MESSAGE = "Wait for the running generation, or cancel it"


class WhenIdle:
    """Mixin: the operator is greyed out while a generation runs, and its tooltip says why."""

    @classmethod
    def poll(cls, context):
        if state.busy():
            cls.poll_message_set(BUSY_MESSAGE)
            return False
        return True


class NFSD_OT_generate(WhenIdle, bpy.types.Operator):
    bl_idname = "nfsd.generate"
    bl_label = "Generate"
    bl_description = "Generate a textured mesh from the prompt (Variations > 1: one per seed, run in turn)"

    def execute(self, context):
        props = context.scene.nfsd
        problem = request_problem(context, props)
        if problem:
            return refuse(self, props, problem)
        requests = [build_request(props, get_prefs(context), (props.seed + i) % (contract.MAX_SEED + 1))
                    for i in range(props.variations)]
        session.start_job(context, requests)
        return {"FINISHED"}


def request_problem(context, props, form_model: bool = True) -> str:
    """'' when the form can be submitted, else why not, in one sentence (Generate, From Selection and Edit ask;
    ``form_model`` False: the job runs another model than the form's, as an edit runs its source's)."""
    if not props.prompt.strip():
        return "Type a prompt first"
    if len(props.prompt) > contract.MAX_PROMPT_CHARS:
        return f"The prompt is {len(props.prompt)} characters long; shorten it to {contract.MAX_PROMPT_CHARS} or fewer"
    prefs = get_prefs(context)
    if prefs.mode == "LOCAL" and not BACKEND.running and not os.path.isfile(python_path(prefs)):
        if prefs.python_path:
            return f"Backend Python not found: {prefs.python_path}; pick it again"
        return "No backend found: press Install Backend, or pick its Python"
    prior, model, entry = session.job_model(context, props)
    if form_model and entry is not None and not entry.get("cached", True):
        return not_downloaded(entry)
    return ""


def refuse(operator, props, message) -> set:
    """An operator's early exit: the reason in the panel and the status bar."""
    state.set_error(props, message)
    operator.report({"ERROR"}, message)
    return {"CANCELLED"}


class NFSD_OT_download_model(bpy.types.Operator):
    bl_idname = "nfsd.download_model"
    bl_label = "Download Model"
    bl_description = "Download the job's model on the backend (only the files it loads); progress shows here"

    @classmethod
    def poll(cls, context):
        if state.downloading():
            cls.poll_message_set("A download is running")
            return False
        return True

    def execute(self, context):
        prior, model, entry = session.job_model(context, context.scene.nfsd)
        session.start_download(context, model)
        self.report({"INFO"}, f"Downloading {model}…")
        return {"FINISHED"}


class NFSD_OT_cancel_download(bpy.types.Operator):
    bl_idname = "nfsd.cancel_download"
    bl_label = "Cancel Download"
    bl_description = "Stop the download; what finished stays, so Download later goes on from there"

    @classmethod
    def poll(cls, context):
        return state.downloading()

    def execute(self, context):
        session.cancel_download()
        return {"FINISHED"}


class NFSD_OT_cancel(bpy.types.Operator):
    bl_idname = "nfsd.cancel"
    bl_label = "Cancel"
    bl_description = "Cancel the running generation (and its queued variations)"

    @classmethod
    def poll(cls, context):
        return state.busy()

    def execute(self, context):
        session.cancel(context.scene.nfsd)
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
    bl_description = "Start the local backend now (Generate also starts it) and list its models"

    def execute(self, context):
        session.start_info(context, True)
        get_prefs(context).status = "Backend: booting…"
        return {"FINISHED"}


class NFSD_OT_stop_backend(bpy.types.Operator):
    bl_idname = "nfsd.stop_backend"
    bl_label = "Stop Backend"

    def execute(self, context):
        session.stop_backend()
        get_prefs(context).status = "Backend: stopped"
        return {"FINISHED"}


class NFSD_OT_check_health(bpy.types.Operator):
    bl_idname = "nfsd.check_health"
    bl_label = "Check Server"
    bl_description = "Ask the server what it runs on and which models it has"

    def execute(self, context):
        session.start_info(context, False)
        return {"FINISHED"}


class NFSD_OT_refresh_models(bpy.types.Operator):
    bl_idname = "nfsd.refresh_models"
    bl_label = "Refresh Models"
    bl_description = "List the models the server can use (starts the local backend)"

    def execute(self, context):
        session.start_info(context, True)
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
        if not state.busy():  # the last refusal or failure was about the model before
            props.error = props.error_details = ""
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
            return refuse(self, context.scene.nfsd, problem)
        get_prefs(context).python_path = path
        context.scene.nfsd.error = context.scene.nfsd.error_details = ""
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
        return f"{os.path.basename(path)} has no nfsd backend installed; press Install Backend"
    return ""


class NFSD_OT_install_backend(WhenIdle, bpy.types.Operator):
    bl_idname = "nfsd.install_backend"
    bl_label = "Install Backend"
    bl_description = ("Make a Python environment with the backend from this add-on and torch for this machine "
                      "(downloads a few hundred MB to several GB); a failed install keeps the previous backend")

    @classmethod
    def poll(cls, context):
        if state.install_running() is not None:
            cls.poll_message_set("The backend is being installed")
            return False
        return super().poll(context)

    def execute(self, context):
        problem = session.start_install(context)
        if problem:
            return refuse(self, context.scene.nfsd, problem)
        self.report({"INFO"}, "Installing the backend; progress in the add-on preferences")
        return {"FINISHED"}


class NFSD_OT_cancel_install(bpy.types.Operator):
    bl_idname = "nfsd.cancel_install"
    bl_label = "Cancel Install"
    bl_description = "Stop the install; the previous backend stays as it was"

    @classmethod
    def poll(cls, context):
        return state.install_running() is not None

    def execute(self, context):
        state.current.install.cancel_event.set()
        return {"FINISHED"}


class NFSD_OT_open_install_log(bpy.types.Operator):
    bl_idname = "nfsd.open_install_log"
    bl_label = "Open Install Log"
    bl_description = "Open the log of Install Backend (every command and its output)"

    def execute(self, context):
        bpy.ops.wm.path_open(filepath=install_log(context))
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
        downloaded = item.glb_path and os.path.isfile(bpy.path.abspath(item.glb_path))
        if item.state == "done" and item.job_id and not (downloaded and _whole_glb(item.glb_path)):
            if state.busy():
                self.report({"ERROR"}, BUSY_MESSAGE)
                return {"CANCELLED"}
            session.fetch_again(context, item)  # missing or broken: the server still has the result
            self.report({"INFO"}, "Downloading the result again…")
            return {"FINISHED"}
        if not downloaded:
            self.report({"ERROR"}, "No downloaded result for this entry")
            return {"CANCELLED"}
        try:
            placement.place(placement.import_item(context, item), item)
        except Exception as err:  # noqa: BLE001  (one line, not the importer's traceback)
            placement.import_failed(context.scene.nfsd, err)
            self.report({"ERROR"}, context.scene.nfsd.error)
            return {"CANCELLED"}
        return {"FINISHED"}


def _whole_glb(path) -> bool:
    with open(bpy.path.abspath(path), "rb") as fh:
        return not glb_problem(fh.read())


class NFSD_OT_history_rerun(WhenIdle, bpy.types.Operator):
    bl_idname = "nfsd.history_rerun"
    bl_label = "Re-run"
    new_seed: BoolProperty(default=False)

    def execute(self, context):
        item = _selected_item(context, self)
        if item is None:
            return {"CANCELLED"}
        seed = random.randint(0, contract.MAX_SEED) if self.new_seed else None
        session.start_job(context, [build_request(item, get_prefs(context), seed, **NO_INIT_MESH)])
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
    NFSD_OT_generate, NFSD_OT_download_model, NFSD_OT_cancel_download, NFSD_OT_cancel, NFSD_OT_random_seed, NFSD_OT_start_backend, NFSD_OT_stop_backend,
    NFSD_OT_check_health, NFSD_OT_refresh_models, NFSD_OT_set_model, NFSD_OT_pick_python,
    NFSD_OT_install_backend, NFSD_OT_cancel_install, NFSD_OT_open_install_log, NFSD_OT_copy_error, NFSD_OT_open_output, NFSD_OT_history_reimport,
    NFSD_OT_history_rerun, NFSD_OT_history_delete, NFSD_OT_history_clear,
)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)

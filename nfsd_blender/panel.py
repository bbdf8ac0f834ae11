"""The View3D sidebar (tab "NFSD"): one small draw function per section, so sections can be added or moved."""

import os
import time

import bpy

from . import contract, jobs, progress, session, state
from .backend import BACKEND
from .preferences import get_prefs, python_path
from .properties import build_request
from .handlers import PREVIEW_IMAGE, server_status_text
from .state import busy

ANALYTIC = {"id": "analytic", "label": "Analytic (offline test shapes)", "prior": "analytic", "model": None,
            "cached": True}
# What every backend holds before its model list is known: the analytic prior and the bundled models.
OFFLINE_MODELS = [ANALYTIC, *({"id": name, "label": label, "prior": "stable-diffusion", "model": name, "cached": True}
                              for name, label in contract.BUNDLED_MODEL_LABELS.items())]


def model_label(entry) -> str:
    """The Model menu's line: downloaded (its size), downloading (percent), or what a download weighs."""
    running = state.download_of(entry.get("model"))
    if running and running.get("state") in ("planning", "running") and not entry.get("cached"):
        return f"{entry['label']} ({progress.download(running)[0]})"
    size = progress.format_size(entry.get("size_bytes") if entry.get("cached") else entry.get("download_bytes"))
    if entry.get("cached"):
        return f"{entry['label']}" + (f" ({size})" if size else "")
    return f"{entry['label']} (download {size or 'needed'})"


def current_model(props):
    """The /v1/models entry the form points at, or None for 'the preferences' default'."""
    if not props.prior and not props.model:
        return None
    for entry in state.current.models or OFFLINE_MODELS:
        if entry.get("prior") == props.prior and (entry.get("model") or "") == props.model:
            return entry
    return {"label": props.model or props.prior, "prior": props.prior, "model": props.model, "cached": True}


class NFSD_MT_models(bpy.types.Menu):
    bl_idname = "NFSD_MT_models"
    bl_label = "Model"

    def draw(self, context):
        layout = self.layout
        op = layout.operator("nfsd.set_model", text="Preferences' default")
        op.prior, op.model = "", ""
        for entry in state.current.models or OFFLINE_MODELS:
            op = layout.operator("nfsd.set_model", text=model_label(entry),
                                 icon="CHECKMARK" if entry.get("cached") else "IMPORT")
            op.prior, op.model = entry.get("prior") or "", entry.get("model") or ""
        layout.separator()
        layout.operator("nfsd.refresh_models", icon="FILE_REFRESH")


class NFSD_UL_history(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        thumb = _thumbnail(item.preview_path)
        if thumb:
            row.label(text=item.prompt or "(no prompt)", icon_value=thumb)
        else:
            row.label(text=item.prompt or "(no prompt)", icon="MESH_ICOSPHERE")
        row.label(text=f"seed {item.seed}")
        row.label(text=item.state, icon="ERROR" if item.state in ("failed", "error", "interrupted") else "NONE")


def _thumbnail(path) -> int:
    """The icon id of a history entry's last preview (0 when there is none)."""
    pcoll = state.current.thumbs
    if pcoll is None or not path:
        return 0
    path = bpy.path.abspath(path)
    if path not in pcoll:
        if not os.path.isfile(path):
            return 0
        pcoll.load(path, path, "IMAGE")
    return pcoll[path].icon_id


def draw_backend(layout, context):
    """Status line (booting / ready on CUDA / stopped / remote), the output folder, and the first-run help."""
    prefs = get_prefs(context)
    row = layout.row(align=True)
    row.label(text=server_status_text(), icon="NETWORK_DRIVE" if prefs.mode == "REMOTE" else "CONSOLE")
    row.operator("nfsd.check_health", text="", icon="FILE_REFRESH")
    row.operator("nfsd.open_output", text="", icon="FILE_FOLDER")
    if prefs.mode == "LOCAL" and not BACKEND.running and not python_path(prefs):
        box = layout.box()
        box.label(text="No nfsd backend found on this computer", icon="INFO")
        row = box.row(align=True)
        row.operator("nfsd.pick_python", text="Pick its Python…", icon="FILEBROWSER")
        row.operator("nfsd.install_backend", icon="IMPORT")
        running = state.install_running()
        if running is not None:
            box.label(text=f"{running.progress_text} ({running.fraction:.0%}; details in the add-on preferences)")


def draw_model(layout, props):
    entry = current_model(props)
    row = layout.row(align=True)
    row.label(text="Model")
    row.menu("NFSD_MT_models", text=model_label(entry) if entry else "Preferences' default")


def draw_form(layout, props):
    col = layout.column()
    col.enabled = not busy()  # editing during a job would change nothing: say so by greying out
    col.prop(props, "prompt")
    col.prop(props, "negative_prompt")
    draw_model(col, props)
    col.prop(props, "method", expand=True)
    col.prop(props, "guidance_scale")
    col.prop(props, "janus_guard")
    row = col.row(align=True)
    row.prop(props, "seed")
    row.operator("nfsd.random_seed", text="", icon="FILE_REFRESH")
    col.prop(props, "variations")
    col.prop(props, "preset")
    col.prop(props, "steps")
    col.prop(props, "poly_budget")
    col.prop(props, "texture_size")
    col.prop(props, "remesh")


def model_notice(context, props) -> str:
    """One line above Generate when the job's model is not on the server (with what it weighs), or when nobody
    has asked the server yet; '' when the model is there."""
    prior, model, entry = session.job_model(context, props)
    if entry is None:
        return f"Refresh Models to see whether {model} is downloaded" if prior == "stable-diffusion" else ""
    if entry.get("cached", True):
        return ""
    size = progress.format_size(entry.get("download_bytes"))
    return f"{entry['label']} is not downloaded" + (f" ({size})" if size else "")


def draw_model_notice(layout, context, props):
    if state.downloading() or any(d.get("state") in ("planning", "running") for d in state.current.downloads):
        running = next((d for d in state.current.downloads if d.get("state") in ("planning", "running")), None)
        if running is not None:
            text, frac = progress.download(running)
            text = f"{running['model']}: {text}"
            if hasattr(layout, "progress"):
                layout.progress(factor=frac, text=text)
            else:
                layout.label(text=text)
        if state.downloading():
            layout.operator("nfsd.cancel_download", icon="CANCEL")
        return
    notice = model_notice(context, props)
    if not notice:
        return
    layout.label(text=notice, icon="IMPORT")
    if notice.startswith("Refresh Models"):
        layout.operator("nfsd.refresh_models", icon="FILE_REFRESH")
    else:
        layout.operator("nfsd.download_model", icon="IMPORT")


def taesd_notice(context, props) -> str:
    """One line when the job the form would submit fetches TAESD first (the server said it has none), else ''."""
    request = build_request(props, get_prefs(context))
    entry = jobs.find_model(state.current.models, request["prior"], request["model"] or "")
    if not jobs.downloads_taesd(entry, request, request["prior"]):
        return ""
    return f"First job downloads TAESD ({progress.format_size(contract.TAESD_DOWNLOAD_BYTES)})"


def progress_text(props):
    started = state.current.export_started
    elapsed = time.monotonic() - started if started is not None and props.job_state == "exporting" else None
    download = contract.TAESD_DOWNLOAD_BYTES if props.job_download_taesd else 0  # the model itself: Download first
    return progress.phase(
        props.job_state, props.job_step, props.job_total, props.job_eta if props.job_eta >= 0 else None,
        props.job_queue_position, props.job_phase, download, elapsed, props.job_reconnect,
        props.job_index, props.job_count,
    )


def draw_progress(layout, props):
    text, frac = progress_text(props)
    if hasattr(layout, "progress"):
        layout.progress(factor=frac, text=text)
    else:
        layout.label(text=text)
    img = bpy.data.images.get(PREVIEW_IMAGE)
    if img is not None and getattr(img, "preview", None) is not None:
        layout.template_icon(icon_value=img.preview.icon_id, scale=8.0)


def draw_actions(layout, context, props):
    if busy():
        draw_progress(layout, props)
        layout.operator("nfsd.cancel", icon="CANCEL")
        return
    draw_model_notice(layout, context, props)
    notice = taesd_notice(context, props)
    if notice:
        layout.label(text=notice, icon="IMPORT")
    label = "Generate" if props.variations == 1 else f"Generate {props.variations} Variations"
    layout.operator("nfsd.generate", text=label, icon="PLAY")


def draw_error(layout, props):
    if not props.error:
        return
    box = layout.box()
    for i, line in enumerate(_wrap(props.error)):
        box.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
    if props.error_details and props.error_details != props.error:
        box.operator("nfsd.copy_error", icon="COPYDOWN")


class SidebarPanel:
    """Mixin: a panel in the 3D view's N-panel tab "NFSD" (sub-panels add ``bl_parent_id = "NFSD_PT_main"``)."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "NFSD"


class NFSD_PT_main(SidebarPanel, bpy.types.Panel):
    bl_idname = "NFSD_PT_main"
    bl_label = "NFSD Text to 3D"

    def draw(self, context):
        layout = self.layout
        props = context.scene.nfsd
        draw_backend(layout, context)
        draw_form(layout, props)
        draw_actions(layout, context, props)
        draw_error(layout, props)


class NFSD_PT_history(SidebarPanel, bpy.types.Panel):
    bl_idname = "NFSD_PT_history"
    bl_label = "History"
    bl_parent_id = "NFSD_PT_main"

    def draw(self, context):
        layout = self.layout
        props = context.scene.nfsd
        row = layout.row()
        row.template_list("NFSD_UL_history", "", props, "history", props, "history_index", rows=3)
        side = row.column(align=True)
        side.operator("nfsd.history_delete", text="", icon="REMOVE")
        side.operator("nfsd.history_clear", text="", icon="TRASH")
        row = layout.row(align=True)
        row.operator("nfsd.history_reimport", text="Re-import")
        row.operator("nfsd.history_rerun", text="Re-run").new_seed = False
        row.operator("nfsd.history_rerun", text="New Seed").new_seed = True
        row.operator("nfsd.edit", text="Edit").from_history = True
        if 0 <= props.history_index < len(props.history):
            item = props.history[props.history_index]
            for i, line in enumerate(_wrap(item.error)):
                layout.label(text=line, icon="ERROR" if i == 0 else "BLANK1")


def _wrap(text, width=48):
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + len(w) + 1 > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    if cur:
        lines.append(cur)
    return lines


classes = (NFSD_MT_models, NFSD_UL_history, NFSD_PT_main, NFSD_PT_history)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)

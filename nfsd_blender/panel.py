"""The View3D sidebar panel (tab "NFSD")."""

import bpy

from .operators import PREVIEW_IMAGE

ACTIVE = ("starting", "queued", "running", "exporting")


class NFSD_UL_history(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.label(text=item.prompt or "(no prompt)")
        row.label(text=f"seed {item.seed}")
        row.label(text=item.state)


class NFSD_PT_main(bpy.types.Panel):
    bl_idname = "NFSD_PT_main"
    bl_label = "NFSD Text to 3D"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "NFSD"

    def draw(self, context):
        layout = self.layout
        props = context.scene.nfsd
        col = layout.column()
        col.prop(props, "prompt")
        col.prop(props, "negative_prompt")
        col.prop(props, "method", expand=True)
        col.prop(props, "guidance_scale")
        row = col.row(align=True)
        row.prop(props, "seed")
        row.operator("nfsd.random_seed", text="", icon="FILE_REFRESH")
        col.prop(props, "preset")
        col.prop(props, "steps")
        col.prop(props, "poly_budget")
        col.prop(props, "texture_size")
        running = props.job_state in ACTIVE
        if running:
            frac = props.job_step / props.job_total if props.job_total else 0.0
            eta = f", ETA {props.job_eta:.0f} s" if props.job_eta >= 0 else ""
            text = f"{props.job_state} {props.job_step}/{props.job_total}{eta}"
            if hasattr(layout, "progress"):
                layout.progress(factor=frac, text=text)
            else:
                layout.label(text=text)
            img = bpy.data.images.get(PREVIEW_IMAGE)
            if img is not None and getattr(img, "preview", None) is not None:
                layout.template_icon(icon_value=img.preview.icon_id, scale=8.0)
            layout.operator("nfsd.cancel", icon="CANCEL")
        else:
            layout.operator("nfsd.generate", icon="PLAY")
        if props.error:
            box = layout.box()
            for line in _wrap(props.error):
                box.label(text=line, icon="ERROR" if line is not None else "NONE")
        layout.label(text="History")
        layout.template_list("NFSD_UL_history", "", props, "history", props, "history_index", rows=3)
        row = layout.row(align=True)
        row.operator("nfsd.history_reimport", text="Re-import")
        row.operator("nfsd.history_rerun", text="Re-run").new_seed = False
        row.operator("nfsd.history_rerun", text="New Seed").new_seed = True


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


classes = (NFSD_UL_history, NFSD_PT_main)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister():
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)

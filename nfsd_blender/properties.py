"""Scene properties: the generation form, the running job, and the history."""

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from . import contract

METHOD_LABELS = {"nfsd": ("NFSD", "Noise-Free Score Distillation"), "sds": ("SDS", "Score Distillation Sampling")}


def _method_update(self, _context):
    self.guidance_scale = contract.DEFAULT_GUIDANCE_SCALE[self.method.lower()]


class NFSD_HistoryItem(bpy.types.PropertyGroup):
    job_id: StringProperty()
    prompt: StringProperty()
    negative_prompt: StringProperty()
    method: StringProperty()
    guidance_scale: FloatProperty()
    seed: IntProperty()
    steps: IntProperty()
    preset: StringProperty()
    poly_budget: IntProperty()
    texture_size: StringProperty()
    prior: StringProperty()
    model: StringProperty()
    state: StringProperty()
    error: StringProperty()
    glb_path: StringProperty(subtype="FILE_PATH")
    preview_path: StringProperty(subtype="FILE_PATH")


class NFSD_SceneProps(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to generate")
    negative_prompt: StringProperty(name="Negative", default=contract.NFSD_NEGATIVE_PROMPT)
    method: EnumProperty(
        name="Method",
        items=[(METHOD_LABELS[m][0], METHOD_LABELS[m][0], METHOD_LABELS[m][1]) for m in contract.METHODS],
        default=METHOD_LABELS["nfsd"][0],
        update=_method_update,
    )
    guidance_scale: FloatProperty(
        name="Guidance", default=contract.DEFAULT_GUIDANCE_SCALE["nfsd"], min=0.1, max=contract.MAX_GUIDANCE_SCALE
    )
    seed: IntProperty(name="Seed", default=0, min=0, max=contract.MAX_SEED)
    steps: IntProperty(name="Steps", description="0 = the preset's", default=0, min=0, max=contract.MAX_STEPS)
    preset: EnumProperty(
        name="Preset",
        items=[(name, name.title(), "") for name in contract.PRESETS],
        default=contract.DEFAULT_PRESET,
    )
    poly_budget: IntProperty(
        name="Poly Budget", default=contract.DEFAULT_POLY_BUDGET,
        min=contract.MIN_POLY_BUDGET, max=contract.MAX_POLY_BUDGET,
    )
    texture_size: EnumProperty(
        name="Texture", items=[(str(size), str(size), "") for size in contract.TEXTURE_SIZES],
        default=str(contract.DEFAULT_TEXTURE_SIZE),
    )
    variations: IntProperty(
        name="Variations", description="How many seeds to make (seed, seed+1, …); the server runs them in turn",
        default=1, min=1, max=8,
    )
    # the model picker: '' = the preferences' prior and model
    prior: StringProperty(name="Prior")
    model: StringProperty(name="Model")
    # the running job (filled by the poller)
    job_id: StringProperty()
    job_state: StringProperty()
    job_phase: StringProperty(description="What the add-on itself is doing: starting backend, importing, …")
    job_step: IntProperty()
    job_total: IntProperty()
    job_eta: FloatProperty(default=-1.0)
    job_queue_position: IntProperty(default=-1)
    job_reconnect: IntProperty(description="Retry count while the server is unreachable; 0 = connected")
    job_download_gb: FloatProperty(description="Size of the model download the job waits for; 0 = cached")
    job_download_taesd: BoolProperty(description="The job also downloads TAESD first (the server has no copy)")
    error: StringProperty()
    error_details: StringProperty(description="The full text behind the one-line error, for Copy Details")
    history: CollectionProperty(type=NFSD_HistoryItem)
    history_index: IntProperty()


classes = (NFSD_HistoryItem, NFSD_SceneProps)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.nfsd = PointerProperty(type=NFSD_SceneProps)


def unregister():
    del bpy.types.Scene.nfsd
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)

"""Scene properties: the generation form, the running job, and the history."""

import bpy
from bpy.props import (
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

DEFAULT_NEGATIVE = (
    "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, gloomy"
)
GUIDANCE_DEFAULT = {"NFSD": 7.5, "SDS": 100.0}


def _method_update(self, _context):
    self.guidance_scale = GUIDANCE_DEFAULT[self.method]


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
    state: StringProperty()
    glb_path: StringProperty(subtype="FILE_PATH")


class NFSD_SceneProps(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to generate")
    negative_prompt: StringProperty(name="Negative", default=DEFAULT_NEGATIVE)
    method: EnumProperty(
        name="Method",
        items=[("NFSD", "NFSD", "Noise-Free Score Distillation"), ("SDS", "SDS", "Score Distillation Sampling")],
        default="NFSD",
        update=_method_update,
    )
    guidance_scale: FloatProperty(name="Guidance", default=7.5, min=0.1, max=500.0)
    seed: IntProperty(name="Seed", default=0, min=0)
    steps: IntProperty(name="Steps", description="0 = the preset's", default=0, min=0, max=100000)
    preset: EnumProperty(
        name="Preset",
        items=[("draft", "Draft", ""), ("standard", "Standard", ""), ("high", "High", "")],
        default="standard",
    )
    poly_budget: IntProperty(name="Poly Budget", default=20000, min=100, max=500000)
    texture_size: EnumProperty(
        name="Texture", items=[("512", "512", ""), ("1024", "1024", ""), ("2048", "2048", "")], default="1024"
    )
    # the running job (filled by the poller)
    job_id: StringProperty()
    job_state: StringProperty()
    job_step: IntProperty()
    job_total: IntProperty()
    job_eta: FloatProperty(default=-1.0)
    error: StringProperty()
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

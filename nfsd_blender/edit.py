"""Edit a finished asset instead of generating anew: the Prompt above says what it should become ("a blue
ball"); the server starts from the source job's trained field (its checkpoint), and the result stands beside
the source object, which stays as it was. From the selected generated object (its ``nfsd_job_id``) or from a
History entry."""

import bpy
from bpy.props import BoolProperty, PointerProperty

from . import jobs, operators, panel, session, state
from .events import Placement
from .importer import PREFIX
from .preferences import get_prefs, settings_from_prefs
from .properties import build_request, form_property


class NFSD_EditProps(bpy.types.PropertyGroup):
    strength: form_property("edit_strength")
    keep_shape: form_property("keep_shape")


class Source:
    """What an edit starts from: the job's id and how it was made (the server inherits the rest), and the object
    that shows it ('' when there is none in the scene)."""

    def __init__(self, job_id: str, prompt: str, prior: str, model: str, textured_mesh: bool, object_name: str):
        self.job_id, self.prompt, self.prior, self.model = job_id, prompt, prior, model
        self.textured_mesh, self.object_name = textured_mesh, object_name


def object_source(obj) -> Source | None:
    """The generated object's job, from the properties its import wrote; None for any other object."""
    if obj is None or not obj.get(PREFIX + "job_id"):
        return None
    return Source(str(obj[PREFIX + "job_id"]), str(obj.get(PREFIX + "prompt", "")), str(obj.get(PREFIX + "prior", "")),
                  str(obj.get(PREFIX + "model", "")), bool(obj.get(PREFIX + "init_mesh")), obj.name)


def item_source(item) -> Source:
    """A History entry's job; the first object in the scene that shows it, if any."""
    shown = next((obj.name for obj in bpy.data.objects if obj.get(PREFIX + "job_id") == item.job_id), "")
    return Source(item.job_id, item.prompt, item.prior, item.model, bool(item.init_mesh), shown)


def refusal(source: Source | None, item_state: str, prompt: str) -> str:
    """'' when ``source`` can be edited toward ``prompt``, else what to do instead."""
    if source is None:
        return "Select an object made by NFSD, or a History entry, to edit"
    if item_state and item_state != "done":
        return "Only a finished generation can be edited"
    if source.textured_mesh:
        return "This result was made from a selected mesh: use From Selection again with the new prompt"
    if not prompt.strip():
        return "Type what it should become in Prompt, e.g. 'a blue ball'"
    if prompt.strip() == source.prompt.strip():
        return f"The prompt is the source's own ({source.prompt!r}): type what it should become"
    return ""


def edit_request(context, source: Source) -> dict:
    """The POST /v1/jobs body of an edit: the form's prompt and settings, the source's model, the edit's own."""
    props, chosen = context.scene.nfsd, context.scene.nfsd_edit
    return build_request(props, get_prefs(context), edit_of=source.job_id, edit_strength=chosen.strength,
                         keep_shape=chosen.keep_shape, prior=source.prior or None, model=source.model or None)


class NFSD_OT_edit(operators.WhenIdle, bpy.types.Operator):
    bl_idname = "nfsd.edit"
    bl_label = "Edit"
    bl_description = ("Change the finished asset toward the Prompt (e.g. 'a blue ball'), starting from it instead of "
                      "from nothing; the result stands beside it")

    from_history: BoolProperty(default=False, options={"SKIP_SAVE"})

    def execute(self, context):
        props = context.scene.nfsd
        item_state = ""
        if self.from_history:
            if not 0 <= props.history_index < len(props.history):
                return operators.refuse(self, props, "Select a History entry first")
            item = props.history[props.history_index]
            source, item_state = item_source(item), item.state
        else:
            source = object_source(context.active_object)
        problem = refusal(source, item_state, props.prompt) or operators.request_problem(context, props, False)
        if problem:
            return operators.refuse(self, props, problem)
        request = edit_request(context, source)
        worker = jobs.JobWorker(settings_from_prefs(context), [request], placement=Placement(beside=source.object_name))
        session.start_job(context, [request], worker=worker)
        return {"FINISHED"}


class NFSD_PT_edit(panel.SidebarPanel, bpy.types.Panel):
    """A sub-panel of the main one, shown while the active object is a generated one."""

    bl_idname = "NFSD_PT_edit"
    bl_label = "Edit Selected"
    bl_parent_id = "NFSD_PT_main"

    @classmethod
    def poll(cls, context):
        return object_source(context.active_object) is not None

    def draw(self, context):
        source = object_source(context.active_object)
        chosen = context.scene.nfsd_edit
        layout = self.layout
        layout.enabled = not state.busy()
        layout.label(text=f"{source.object_name}: {source.prompt}", icon="OBJECT_DATA")
        layout.label(text="Type what it should become in Prompt above")
        layout.prop(chosen, "keep_shape")
        if not chosen.keep_shape:
            layout.prop(chosen, "strength", slider=True)
        layout.operator(NFSD_OT_edit.bl_idname, icon="MODIFIER")


classes = (NFSD_EditProps, NFSD_OT_edit, NFSD_PT_edit)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.nfsd_edit = PointerProperty(type=NFSD_EditProps)


def unregister():
    del bpy.types.Scene.nfsd_edit
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)

"""Start from the selected object: send its evaluated mesh in world space, and put the result on its
transform, next to it, with the original hidden.

Shape mode: the mesh guides the geometry (strength 0–1). Texture mode: the mesh's own vertices and faces are
kept and only its texture is generated (on its UVs, or xatlas's when it has none).
"""

import bpy
from bpy.props import EnumProperty, PointerProperty

from . import contract, jobs, operators, panel, session, state
from .client import BackendError
from .events import Error, Placement
from .preferences import get_prefs, settings_from_prefs
from .properties import build_request, form_property

MODES = (
    ("SHAPE", "Shape", "The selected mesh guides the shape; the prompt refines it and adds detail"),
    ("TEXTURE", "Texture", "Keep the selected mesh exactly; generate only its texture"),
)


class NFSD_SelectionProps(bpy.types.PropertyGroup):
    mode: EnumProperty(name="Mode", items=MODES, default="SHAPE")
    strength: form_property("shape_strength", name="Strength",
                            description="How closely the result keeps the selected mesh's shape (0: only the prompt)")


def world_mesh_obj(context, obj) -> bytes:
    """The object with its modifiers applied, in world coordinates (+Z up), as OBJ text with its active UVs."""
    evaluated = obj.evaluated_get(context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        matrix = obj.matrix_world
        lines = ["# NFSD selection, world space"]
        lines += ["v {:.9g} {:.9g} {:.9g}".format(*(matrix @ vertex.co)) for vertex in mesh.vertices]
        uv_layer = mesh.uv_layers.active
        if uv_layer is not None:
            lines += ["vt {:.9g} {:.9g}".format(*uv_layer.data[i].uv) for i in range(len(mesh.loops))]
            for triangle in mesh.loop_triangles:
                corners = zip(triangle.vertices, triangle.loops)
                lines.append("f " + " ".join(f"{v + 1}/{loop + 1}" for v, loop in corners))
        else:
            lines += ["f {} {} {}".format(*(v + 1 for v in triangle.vertices)) for triangle in mesh.loop_triangles]
        return ("\n".join(lines) + "\n").encode("ascii")
    finally:
        evaluated.to_mesh_clear()


class SelectionJobWorker(jobs.JobWorker):
    """Uploads the mesh first, then runs the job as usual; its result goes onto the source (placement.py)."""

    def __init__(self, settings, request, mesh_obj: bytes, source_name: str):
        super().__init__(settings, [request], placement=Placement(on=source_name))
        self.mesh_obj = mesh_obj

    def run(self) -> None:
        try:
            client = jobs.make_client(self.settings, self.events)
            self.requests[0]["init_mesh"] = client.upload_mesh(self.mesh_obj, "obj")
        except BackendError as err:
            self.events.put(Error(None, str(err)))
            return
        super().run()


def active_mesh(context):
    """The active object if it is a mesh, else None."""
    obj = context.active_object
    return obj if obj is not None and obj.type == "MESH" else None


class NFSD_OT_generate_from_selection(bpy.types.Operator):
    bl_idname = "nfsd.generate_from_selection"
    bl_label = "Generate from Selection"
    bl_description = "Generate from the prompt, starting from the selected mesh (its shape, or its texture only)"

    @classmethod
    def poll(cls, context):
        return active_mesh(context) is not None and not state.busy()

    def execute(self, context):
        props, chosen = context.scene.nfsd, context.scene.nfsd_selection
        problem = operators.request_problem(context, props)
        if problem:
            return operators.refuse(self, props, problem)
        obj = context.active_object
        data = world_mesh_obj(context, obj)
        if len(data) > contract.MAX_INIT_MESH_BYTES:
            limit = contract.MAX_INIT_MESH_BYTES // 2**20
            return operators.refuse(self, props, f"{obj.name} is too large to send (over {limit} MiB); decimate it")
        request = build_request(
            props, get_prefs(context), shape_strength=chosen.strength, keep_geometry=chosen.mode == "TEXTURE"
        )
        worker = SelectionJobWorker(settings_from_prefs(context), request, data, obj.name)
        session.start_job(context, [request], worker=worker)
        return {"FINISHED"}


class NFSD_PT_selection(panel.SidebarPanel, bpy.types.Panel):
    """A sub-panel of the main one, shown while a mesh is the active object."""

    bl_idname = "NFSD_PT_selection"
    bl_label = "From Selection"
    bl_parent_id = "NFSD_PT_main"

    @classmethod
    def poll(cls, context):
        return active_mesh(context) is not None

    def draw(self, context):
        obj = context.active_object
        chosen = context.scene.nfsd_selection
        layout = self.layout
        layout.enabled = not state.busy()
        layout.label(text=obj.name if obj is not None else "(no mesh selected)", icon="MESH_DATA")
        layout.row().prop(chosen, "mode", expand=True)
        if chosen.mode == "SHAPE":
            layout.prop(chosen, "strength", slider=True)
        layout.operator(NFSD_OT_generate_from_selection.bl_idname, icon="PLAY")


classes = (NFSD_SelectionProps, NFSD_OT_generate_from_selection, NFSD_PT_selection)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.nfsd_selection = PointerProperty(type=NFSD_SelectionProps)


def unregister():
    del bpy.types.Scene.nfsd_selection
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)

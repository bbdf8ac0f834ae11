"""Scene properties: the generation form, the running job and the history; and how a job's fields move between
them and a request. The history's job fields and every copy of them come from ``contract.FIELDS``."""

import dataclasses

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

from . import contract, jobs, remesh

METHOD_LABELS = {"nfsd": ("NFSD", "Noise-Free Score Distillation"), "sds": ("SDS", "Score Distillation Sampling")}
PROPERTY_TYPES = {str: StringProperty, int: IntProperty, float: FloatProperty, bool: BoolProperty}

# The fields that mean something only with an init mesh, at their request defaults (no mesh): left out of an
# entry's metadata when it had none, and what Re-run sends. Re-run repeats the text job: the uploaded mesh may
# be gone from the server, and the result would not be placed on the object the mesh came from.
NO_INIT_MESH = {
    spec_field.name: contract.request_default(spec_field)
    for spec_field in contract.FIELDS
    if spec_field.name == "init_mesh" or contract.info(spec_field).init_mesh_only
}


def _method_update(self, _context):
    self.guidance_scale = contract.DEFAULT_GUIDANCE_SCALE[self.method.lower()]


def _job_property(spec_field):
    """A history item's property for one job field: its value type, label and help from the contract."""
    field_info = contract.info(spec_field)
    return PROPERTY_TYPES[contract.value_type(spec_field)](name=field_info.label, description=field_info.help)


# Built with type() so that the annotations bpy registers can be computed from the field list.
NFSD_HistoryItem = type("NFSD_HistoryItem", (bpy.types.PropertyGroup,), {
    "__doc__": "One generation: its job's fields (as the server runs them, once it has said) and its outcome.",
    "__annotations__": {
        **{spec_field.name: _job_property(spec_field) for spec_field in contract.FIELDS},
        "job_id": StringProperty(),
        "state": StringProperty(),
        "error": StringProperty(),
        "glb_path": StringProperty(subtype="FILE_PATH"),
        "preview_path": StringProperty(subtype="FILE_PATH"),
        # where the result goes (placement.py): onto place_on, beside place_beside, else at the cursor beside
        # the batch's first variation
        "place_on": StringProperty(),
        "place_beside": StringProperty(),
        "variation": IntProperty(min=0),
    },
})


def fill_item(item, values: dict) -> None:
    """Copy every job field of ``values`` (a request, or a status's resolved ``request``) onto a history item;
    None (a default the server resolves) becomes the property's zero value."""
    for spec_field in contract.FIELDS:
        value = values[spec_field.name]
        setattr(item, spec_field.name, contract.value_type(spec_field)() if value is None else value)


def item_metadata(item) -> dict:
    """The job's fields as a history item holds them, plus its job id: the imported object's properties (like the
    GLB's own metadata, the init-mesh fields only when there was a mesh, the edit's only for an edit)."""
    values = {name: getattr(item, name) for name in contract.FIELD_NAMES
              if contract.field_applies(name, init_mesh=item.init_mesh, edit_of=item.edit_of)}
    return values | {"job_id": item.job_id}


def build_request(source, prefs, seed=None, **extra) -> dict:
    """The POST /v1/jobs body from the form or a history item: every job field ``source`` has (the others at
    their defaults), the prior and model from the preferences where ``source`` names none, precision and RGB
    encoder from the preferences; ``seed`` and any other field (``extra``) overridable."""
    fields = {name: getattr(source, name) for name in contract.FIELD_NAMES if hasattr(source, name)}
    prompt = fields.pop("prompt")
    prior = fields.get("prior") or prefs.default_prior
    fields.update(prior=prior, model=fields.get("model") or prefs.model, dtype=prefs.dtype,
                  encoder=jobs.request_encoder(prior, prefs.encoder))
    if seed is not None:
        fields["seed"] = seed
    return contract.job_request(prompt, **fields | extra)


def form_property(field: str, **ui):
    """The form's property for job field ``field``: its label, help, limits and default from the contract;
    ``ui`` is what only the form says (enum items, an update callback, a default it shows, its 0 for "the
    default" where the contract allows no 0)."""
    spec_field = contract.field_named(field)
    field_info, kind = contract.info(spec_field), contract.value_type(spec_field)
    # The contract's help speaks HTTP ("null → the server's choice"); the form has no null.
    options = {"name": field_info.label, "description": field_info.help.split("; null → ")[0]}
    if spec_field.default not in (dataclasses.MISSING, None):
        options["default"] = spec_field.default
    if kind in (int, float) and "items" not in ui:
        for key, limit in (("min", field_info.minimum), ("max", field_info.maximum)):
            if limit is not None:
                options[key] = kind(limit)
    options.update(ui)
    return (EnumProperty if "items" in options else PROPERTY_TYPES[kind])(**options)


# What only the form says about a job field beside the contract: enum labels, an update callback, the default it
# shows, its 0 for "the default" where the contract allows no 0. Every other form field is the contract's alone.
FORM_UI = {
    "method": {"items": [(METHOD_LABELS[m][0], METHOD_LABELS[m][0], METHOD_LABELS[m][1]) for m in contract.METHODS],
               "default": METHOD_LABELS["nfsd"][0], "update": _method_update},
    # 0 (the contract's exclusive minimum) is "the method's default" in a request
    "guidance_scale": {"default": contract.DEFAULT_GUIDANCE_SCALE["nfsd"],
                       "description": contract.info("guidance_scale").help.replace("null → ", "0 → ")},
    "seed": {"default": 0},
    "steps": {"default": 0, "min": 0, "description": "0 = the preset's"},
    "preset": {"items": [(name, name.title(), "") for name in contract.PRESETS], "default": contract.DEFAULT_PRESET},
    "texture_size": {"items": [(str(size), str(size), "") for size in contract.TEXTURE_SIZES],
                     "default": str(contract.DEFAULT_TEXTURE_SIZE)},
}
# The job fields the form holds: a text job's, less the model picker's and the preferences' (From Selection and
# Edit hold their own).
FORM_FIELDS = tuple(name for name in contract.FIELD_NAMES if name not in ("prior", "model", "dtype", "encoder")
                    and contract.field_applies(name, init_mesh=None, edit_of=None))


class NFSD_SceneProps(bpy.types.PropertyGroup):
    # the job fields of FORM_FIELDS: added below from the contract's field list
    # Topology after import (nfsd_blender/remesh.py), within the same Poly Budget.
    remesh: EnumProperty(name="Remesh", items=remesh.MODES, default=remesh.KEEP,
                         description="Applied after import with Blender's own remeshers; the maps are re-baked")
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
    job_index: IntProperty(description="Which of the batch's variations runs now, from 0")
    job_count: IntProperty(default=1, description="How many variations the batch holds")
    job_reconnect: IntProperty(description="Retry count while the server is unreachable; 0 = connected")
    job_download_taesd: BoolProperty(description="The job also downloads TAESD first (the server has no copy)")
    error: StringProperty()
    error_details: StringProperty(description="The full text behind the one-line error, for Copy Details")
    history: CollectionProperty(type=NFSD_HistoryItem)
    history_index: IntProperty()


# bpy reads a property group's annotations when it is registered.
NFSD_SceneProps.__annotations__.update({name: form_property(name, **FORM_UI.get(name, {})) for name in FORM_FIELDS})

classes = (NFSD_HistoryItem, NFSD_SceneProps)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.nfsd = PointerProperty(type=NFSD_SceneProps)


def unregister():
    del bpy.types.Scene.nfsd
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)

"""A generation job as one typed, frozen record: its field list, defaults, limits and ``resolve_spec``.

Every layer derives from ``FIELDS`` instead of listing the fields again: the HTTP request schema
(``nfsd_server.api.schemas``), the CLI's options (``nfsd_server.generate_command``), the add-on's request body
and history (``nfsd_blender``), the GLB metadata and the resume check. A boundary (the CLI, ``POST /v1/jobs``,
the add-on) calls ``resolve_spec`` once; everything after it reads the ``JobSpec`` as it is.
"""

from __future__ import annotations

import dataclasses
import secrets
import unicodedata
from dataclasses import dataclass
from typing import Any

from .constants import (
    DEFAULT_DTYPE,
    DEFAULT_EDIT_STRENGTH,
    EDIT_STEPS_FRACTION,
    DEFAULT_ENCODER,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_POLY_BUDGET,
    DEFAULT_PRESET,
    DEFAULT_SHAPE_STRENGTH,
    DEFAULT_TEXTURE_SIZE,
    DTYPES,
    ENCODERS,
    MAX_GUIDANCE_SCALE,
    MAX_MODEL_CHARS,
    MAX_POLY_BUDGET,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    METHODS,
    MIN_POLY_BUDGET,
    NFSD_NEGATIVE_PROMPT,
    PRESET_ENCODERS,
    PRESET_STEPS,
    PRESETS,
    PRIORS,
    TEXTURE_SIZES,
)

CONCRETE_ENCODERS = tuple(name for name in ENCODERS if name != "auto")  # what a resolved job runs
# The analytic prior's one fixed encoder: its own 8× pooling + colour map, no network (records say so). Requests
# that say "vae" for it (older clients and records, from when that named "the prior's own") mean the same.
ANALYTIC_ENCODER = "pooling"


@dataclass(frozen=True)
class FieldInfo:
    """What every layer needs to know about one job field, beside its name, type and default."""

    label: str  # the add-on's and the CLI help's name for it
    help: str  # one line: what it does and what null/auto means
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False  # minimum itself is not allowed
    min_length: int | None = None
    max_length: int | None = None
    # The request may send null (or leave it out) for "the default", which ``resolve_spec`` chooses.
    nullable: bool = False
    # Decides what is built: a resume with another value is refused (steps, encoder, dtype and the export's
    # settings may change: they change a step's cost or what is exported, not what training aims at).
    decides_result: bool = True
    # Means something only with an init mesh: left out of the metadata and the resume check without one.
    init_mesh_only: bool = False
    # Means something only in an edit (``edit_of`` set): left out of the metadata without one.
    edit_only: bool = False
    # What a record or checkpoint from before the field existed ran with, where that is not today's default
    # (the Janus guard was off before it was on by default). None: the default.
    absent_means: Any = None


def _field(info: FieldInfo, default: Any = dataclasses.MISSING) -> Any:
    return dataclasses.field(default=default, metadata={"info": info})


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """A job with every default resolved: exactly what runs, what the GLB records and what a resume compares.

    Constructing one checks every field (``ValueError`` naming the field, the value and what is allowed), so
    a spec read back from a record or a checkpoint is as trustworthy as one just resolved.
    """

    prompt: str = _field(FieldInfo(
        "Prompt", "what to make, e.g. 'a red ball'; surrounding whitespace is stripped, no control characters",
        min_length=1, max_length=MAX_PROMPT_CHARS,
    ))
    negative_prompt: str = _field(FieldInfo(
        "Negative", "NFSD's negative prompt (p_neg) for t ≥ 200; may be empty", max_length=MAX_PROMPT_CHARS,
    ), NFSD_NEGATIVE_PROMPT)
    method: str = _field(FieldInfo("Method", "score distillation: nfsd or sds", choices=METHODS), "nfsd")
    guidance_scale: float = _field(FieldInfo(
        "Guidance", "classifier-free guidance scale; null → "
        + ", ".join(f"{scale:g} for {method}" for method, scale in DEFAULT_GUIDANCE_SCALE.items()),
        minimum=0, exclusive_minimum=True, maximum=MAX_GUIDANCE_SCALE, nullable=True,
    ))
    seed: int = _field(FieldInfo(
        "Seed", "the same seed and settings give the same result; null → a random seed, recorded so it can be reused",
        minimum=0, maximum=MAX_SEED, nullable=True,
    ))
    steps: int = _field(FieldInfo(
        "Steps", f"training steps; null → the preset's ({EDIT_STEPS_FRACTION:.0%} of them for an edit)", minimum=1, maximum=MAX_STEPS, nullable=True,
        decides_result=False,
    ))
    preset: str = _field(FieldInfo("Preset", "scale: draft (CPU minutes), standard, high", choices=PRESETS), DEFAULT_PRESET)
    poly_budget: int = _field(FieldInfo(
        "Poly Budget", "maximum faces of the exported mesh", minimum=MIN_POLY_BUDGET, maximum=MAX_POLY_BUDGET,
        decides_result=False,
    ), DEFAULT_POLY_BUDGET)
    texture_size: int = _field(FieldInfo(
        "Texture", "side of the baked texture in pixels", choices=TEXTURE_SIZES, decides_result=False,
    ), DEFAULT_TEXTURE_SIZE)
    prior: str = _field(FieldInfo(
        "Prior", "stable-diffusion (a real model) or analytic (the closed-form offline test prior); "
        "null → stable-diffusion when a model is named, else the server's default",
        choices=PRIORS, nullable=True,
    ))
    model: str | None = _field(FieldInfo(
        "Model", "hub id or local diffusers folder; null → the server's default (the analytic prior takes none)",
        min_length=1, max_length=MAX_MODEL_CHARS, nullable=True,
    ), None)
    dtype: str = _field(FieldInfo(
        "Precision", "UNet precision: auto (fp16 on CUDA, fp32 elsewhere), fp16, bf16 (GPUs with native bf16 "
        "only), fp32 (if the model produces NaN in half precision)", choices=DTYPES, decides_result=False,
    ), DEFAULT_DTYPE)
    encoder: str = _field(FieldInfo(
        "RGB Encoder", "what encodes RGB renders after the latent phase: auto (the preset's: "
        + ", ".join(f"{encoder} for {preset}" for preset, encoder in PRESET_ENCODERS.items())
        + "), vae (the model's own, exact) or taesd (madebyollin/taesd, much cheaper, approximate); "
        f"the analytic prior always uses its own ({ANALYTIC_ENCODER})",
        choices=ENCODERS + (ANALYTIC_ENCODER,), decides_result=False,
    ))
    init_mesh: str | None = _field(FieldInfo(
        "Init Mesh", "start from this mesh: a file (CLI) or an id from POST /v1/meshes (server); null → none",
        min_length=1, max_length=MAX_MODEL_CHARS, nullable=True,
    ), None)
    shape_strength: float = _field(FieldInfo(
        "Shape Strength", f"0..1, how closely the result keeps init_mesh's shape; null → {DEFAULT_SHAPE_STRENGTH:g}",
        minimum=0, maximum=1, nullable=True, init_mesh_only=True,
    ), DEFAULT_SHAPE_STRENGTH)
    keep_geometry: bool = _field(FieldInfo(
        "Keep Geometry", "texture init_mesh itself: its vertices and faces are kept, only colour is generated",
        init_mesh_only=True,
    ), False)
    janus_guard: bool = _field(FieldInfo(
        "Janus Guard", "against multi-faced objects (a face on the back as well as the front): each view is steered "
        "away from the opposite view's prompt; costs one more denoiser row per image at high noise. Turn it off "
        "for objects that look alike from every side",
        absent_means=False,
    ), True)
    edit_of: str | None = _field(FieldInfo(
        "Edit Of", "edit a finished asset instead of starting anew: its job id (server) or its checkpoint file "
        "(CLI); the prompt says what it should become; null → a new asset",
        min_length=1, max_length=MAX_MODEL_CHARS, nullable=True,
    ), None)
    source_prompt: str | None = _field(FieldInfo(
        "Source Prompt", "what the edited asset shows now; null → its own job's prompt",
        min_length=1, max_length=MAX_PROMPT_CHARS, nullable=True, edit_only=True,
    ), None)
    edit_strength: float = _field(FieldInfo(
        "Edit Strength", f"0..1, how far an edit may move the asset's shape from its source; null → "
        f"{DEFAULT_EDIT_STRENGTH:g}", minimum=0, maximum=1, nullable=True, edit_only=True,
    ), DEFAULT_EDIT_STRENGTH)
    keep_shape: bool = _field(FieldInfo(
        "Keep Shape", "an edit changes colour only: the source's geometry is kept exactly (a recolour)",
        edit_only=True,
    ), False)

    def __post_init__(self) -> None:
        for spec_field in FIELDS:  # an int is a fine float; store it as one, so records and echoes agree
            value = getattr(self, spec_field.name)
            if value_type(spec_field) is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, spec_field.name, float(value))
        if isinstance(self.prompt, str):
            check_visible(self.prompt, "the prompt")
        for spec_field in FIELDS:
            check_value(spec_field, getattr(self, spec_field.name))
        if self.prior == "analytic" and self.encoder == "vae":
            object.__setattr__(self, "encoder", ANALYTIC_ENCODER)
        if self.encoder not in CONCRETE_ENCODERS + (ANALYTIC_ENCODER,):
            raise ValueError(f"encoder must be one of {CONCRETE_ENCODERS}, got {self.encoder!r} (resolve_spec resolves auto)")
        if self.prior != "analytic" and self.encoder == ANALYTIC_ENCODER:
            raise ValueError(f"encoder {ANALYTIC_ENCODER} is the analytic prior's own; a Stable Diffusion model takes "
                             f"one of {CONCRETE_ENCODERS}")
        if self.prior == "analytic" and self.encoder != ANALYTIC_ENCODER:
            raise ValueError(
                f"the analytic prior has one fixed encoder, not {self.encoder!r}; use encoder auto (its own, "
                f"{ANALYTIC_ENCODER}) or a Stable Diffusion model"
            )
        if self.prior == "analytic" and self.model is not None:
            raise ValueError(f"the analytic prior takes no model, got {self.model!r}")
        if self.keep_geometry and self.init_mesh is None:
            raise ValueError("keep_geometry needs an init_mesh: the geometry to keep and texture")
        if self.edit_of is not None and self.init_mesh is not None:
            raise ValueError("an edit starts from its source asset; init_mesh cannot be given with edit_of")
        if self.edit_of is None and (self.keep_shape or self.source_prompt is not None):
            raise ValueError("keep_shape and source_prompt belong to an edit; give edit_of (the asset to edit)")
        if isinstance(self.source_prompt, str):
            check_visible(self.source_prompt, "the source prompt")

    def to_dict(self) -> dict[str, Any]:
        """Every field by name: the job record, the status echo, the checkpoint's settings."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> JobSpec:
        """A spec from ``to_dict``'s output (a record, a checkpoint); ValueError naming what is wrong."""
        check_known(values)
        try:
            return cls(**with_absent_fields(values))
        except TypeError as error:  # a missing field
            raise ValueError(f"not a complete job: {error}") from None

    def metadata(self) -> dict[str, Any]:
        """What the result records so an artist can reproduce it: every field, the init-mesh ones only when there
        was a mesh, and then its file name, not a path on the server."""
        values = {name: value for name, value in self.to_dict().items() if self.applies(name)}
        for name in ("init_mesh", "edit_of"):  # a file on the server's disk is named by its file name
            if values.get(name) is not None:
                values[name] = values[name].replace("\\", "/").rsplit("/", 1)[-1]
        return values

    def applies(self, name: str) -> bool:
        """Whether field ``name`` means something for this job (``field_applies``)."""
        return field_applies(name, init_mesh=self.init_mesh, edit_of=self.edit_of)

    def differences(self, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """(field, saved value, this value) for every field that decides the result and differs from ``saved``
        (a checkpoint's settings). The init mesh itself is not compared here: its path may differ for the same
        content, so the caller compares it by hash."""
        found = []
        for spec_field in FIELDS:
            field_info = info(spec_field)
            if not field_info.decides_result or spec_field.name == "init_mesh":
                continue
            if field_info.init_mesh_only and self.init_mesh is None:
                continue
            value = getattr(self, spec_field.name)
            saved_value = saved.get(spec_field.name, value_when_absent(spec_field))
            if saved_value != value:
                found.append((spec_field.name, saved_value, value))
        return found


def field_applies(name: str, *, init_mesh: str | None, edit_of: str | None) -> bool:
    """Whether field ``name`` means something for a job with this ``init_mesh`` and ``edit_of`` (None or '' for
    none): the init-mesh fields only with a mesh, the edit fields only in an edit."""
    field_info = info(name)
    if (field_info.init_mesh_only or name == "init_mesh") and not init_mesh:
        return False
    return not ((field_info.edit_only or name == "edit_of") and not edit_of)


def value_when_absent(spec_field: dataclasses.Field) -> Any:
    """What a checkpoint or record saved before ``spec_field`` existed ran with: ``FieldInfo.absent_means``, else
    the field's default (None for a field without one)."""
    absent = info(spec_field).absent_means
    if absent is not None:
        return absent
    return None if spec_field.default is dataclasses.MISSING else spec_field.default


def with_absent_fields(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (a record's, a checkpoint's) with each field it lacks that has an ``absent_means`` set to it."""
    absent = {spec_field.name: info(spec_field).absent_means for spec_field in FIELDS
              if spec_field.name not in values and info(spec_field).absent_means is not None}
    return absent | values


FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(JobSpec)
FIELD_NAMES: tuple[str, ...] = tuple(spec_field.name for spec_field in FIELDS)


def check_known(names: Any) -> None:
    """ValueError naming every name in ``names`` that is not a job field."""
    unknown = sorted(set(names) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"unknown job field(s) {unknown}; expected only {list(FIELD_NAMES)}")


def field_named(name: str) -> dataclasses.Field:
    """The job field called ``name``; ValueError for a name the contract does not have."""
    for spec_field in FIELDS:
        if spec_field.name == name:
            return spec_field
    raise ValueError(f"unknown job field {name!r}; expected one of {list(FIELD_NAMES)}")


def info(spec_field: dataclasses.Field | str) -> FieldInfo:
    """The ``FieldInfo`` of a field (or of a field name)."""
    return (field_named(spec_field) if isinstance(spec_field, str) else spec_field).metadata["info"]


def value_type(spec_field: dataclasses.Field) -> type:
    """The field's value type without ``| None``: str, int, float or bool."""
    return {"str": str, "int": int, "float": float, "bool": bool}[str(spec_field.type).split(" |")[0]]


def request_default(spec_field: dataclasses.Field) -> Any:
    """What a request means when it leaves the field out: None ("resolve it") for nullable fields."""
    if spec_field.name == "encoder":
        return DEFAULT_ENCODER
    if info(spec_field).nullable:
        return None
    return spec_field.default


_KIND_WORDS = {str: "text", int: "an integer", float: "a number", bool: "true or false"}


def check_value(spec_field: dataclasses.Field | str, value: Any) -> None:
    """ValueError unless ``value`` has the field's (or field name's) type and lies within its limits (None only
    where the field is optional)."""
    if isinstance(spec_field, str):
        spec_field = field_named(spec_field)
    name, field_info, kind = spec_field.name, info(spec_field), value_type(spec_field)
    if value is None:
        if "None" in str(spec_field.type):
            return
        raise ValueError(f"{name} is required")
    # bool is an int to Python, and an int is a fine float; neither is a fine str.
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"{name} must be {_KIND_WORDS[kind]}, got {value!r}")
    if field_info.choices and value not in field_info.choices:
        raise ValueError(f"{name} must be one of {field_info.choices}, got {value!r}")
    if field_info.minimum is not None or field_info.maximum is not None:
        if value != value:  # NaN passes every comparison below
            raise ValueError(f"{name} must be a number, got {value}")
        low, high = field_info.minimum, field_info.maximum
        shown = (lambda number: f"{number:g}") if kind is float else (lambda number: str(int(number)))
        too_low = low is not None and (value <= low if field_info.exclusive_minimum else value < low)
        if too_low or (high is not None and value > high):
            bounds = f"> {shown(low)} and ≤ {shown(high)}" if field_info.exclusive_minimum else f"in {shown(low)}..{shown(high)}"
            raise ValueError(f"{name} must be {bounds}, got {value}")
    if kind is str:
        if field_info.min_length and len(value) < field_info.min_length:
            raise ValueError(f"{name} is empty; {field_info.help}")
        check_text(value, name, field_info.max_length)


def check_text(value: str, name: str, max_length: int | None = MAX_PROMPT_CHARS) -> None:
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{name} is {len(value)} characters; the limit is {max_length}")
    bad = next((char for char in value if unicodedata.category(char) == "Cc"), None)
    if bad is not None:
        raise ValueError(f"{name} contains the control character {bad!r}; use plain text on one line")


def strip_spaces(value: str) -> str:
    """``value`` without surrounding whitespace, but with its control characters: ``str.strip`` also takes
    \\x1c..\\x1f and line breaks, so a prompt ending in one passed the control-character check."""
    blank = [char.isspace() and unicodedata.category(char) != "Cc" for char in value]
    start = next((index for index, is_blank in enumerate(blank) if not is_blank), len(value))
    end = len(value) - next((index for index, is_blank in enumerate(reversed(blank)) if not is_blank), len(value))
    return value[start:max(start, end)]


def check_visible(value: str, name: str) -> None:
    # Letters, numbers, punctuation or symbols: spaces and zero-width characters alone describe nothing.
    if not any(unicodedata.category(char)[0] in "LNPS" for char in value):
        raise ValueError(f'{name} is empty (no visible characters); describe the object, e.g. "a red ball"')


def resolve_spec(
    prompt: str, *, default_prior: str = "analytic", default_model: str | None = None, **request: Any
) -> JobSpec:
    """The one place defaults are chosen: a request (field → value, None or absent = the default) → ``JobSpec``.

    prior None → ``default_prior``, or stable-diffusion when a model is named. model None → ``default_model``
    for stable-diffusion (the analytic prior takes none). seed None → a random one, recorded so it can be
    reused. steps None → the preset's. encoder "auto" → the preset's, or the analytic prior's one encoder.
    Raises ValueError naming the bad field.
    """
    check_known(request)
    values = {spec_field.name: request_default(spec_field) for spec_field in FIELDS}
    values.update(request, prompt=strip_spaces(prompt) if isinstance(prompt, str) else prompt)
    for name in ("method", "preset", "encoder"):  # needed to look up the defaults below
        check_value(name, values[name])
    prior = values["prior"] or ("stable-diffusion" if values["model"] else default_prior)
    encoder = values["encoder"]
    if encoder == "auto":
        encoder = ANALYTIC_ENCODER if prior == "analytic" else PRESET_ENCODERS[values["preset"]]
    guidance_scale = values["guidance_scale"]
    return JobSpec(**values | {
        "prior": prior,
        "model": (values["model"] or default_model) if prior == "stable-diffusion" else None,
        "guidance_scale": DEFAULT_GUIDANCE_SCALE[values["method"]] if guidance_scale is None else guidance_scale,
        "seed": secrets.randbelow(MAX_SEED + 1) if values["seed"] is None else values["seed"],
        "steps": _preset_steps(values["preset"], values["edit_of"] is not None) if values["steps"] is None
        else values["steps"],
        "encoder": encoder,
        "init_mesh": None if values["init_mesh"] is None else str(values["init_mesh"]),
        "shape_strength": DEFAULT_SHAPE_STRENGTH if values["shape_strength"] is None else values["shape_strength"],
        "edit_of": None if values["edit_of"] is None else str(values["edit_of"]),
        "source_prompt": None if values["source_prompt"] is None else strip_spaces(values["source_prompt"]),
        "edit_strength": DEFAULT_EDIT_STRENGTH if values["edit_strength"] is None else values["edit_strength"],
    })


def _preset_steps(preset: str, edit: bool) -> int:
    steps = PRESET_STEPS[preset]
    return max(1, round(steps * EDIT_STEPS_FRACTION)) if edit else steps


def job_request(prompt: str, **fields: Any) -> dict[str, Any]:
    """A client's ``POST /v1/jobs`` body: every field, the ones not given at their request defaults.

    A form's conventions are read the way the server means them: an enum string in another case or a number
    as a string ("NFSD", "1024") becomes the value, and for an optional field an empty string or a 0 that the
    field does not allow (guidance 0, steps 0) means "the default" (None). Values are not range-checked: the
    server answers 422 naming the field, which the add-on shows as it is.
    """
    check_known(fields)
    body = {spec_field.name: request_default(spec_field) for spec_field in FIELDS}
    for spec_field in FIELDS:
        if spec_field.name in fields:
            body[spec_field.name] = _form_value(spec_field, fields[spec_field.name])
    body["prompt"] = strip_spaces(prompt)
    return body


def _form_value(spec_field: dataclasses.Field, value: Any) -> Any:
    field_info, kind = info(spec_field), value_type(spec_field)
    if isinstance(value, str) and kind in (int, float) and value.strip():
        value = kind(value)
    elif isinstance(value, str) and field_info.choices and value not in field_info.choices:
        value = next((choice for choice in field_info.choices if str(choice).lower() == value.lower()), value)
    elif kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif kind is bool:
        value = bool(value)
    if field_info.nullable and (value == "" or (value == 0 and not _allows(spec_field, value))):
        return None
    return value


def _allows(spec_field: dataclasses.Field, value: Any) -> bool:
    try:
        check_value(spec_field, value)
    except ValueError:
        return False
    return True

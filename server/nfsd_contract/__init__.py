"""The job contract shared by the Blender add-on and the backend (standard library only, no bpy, no torch).

``constants`` holds the values both sides must agree on; ``spec`` the job as one typed record whose field list
every layer derives from. The backend installs this package; ``scripts/build_addon.py`` vendors a copy into
the add-on zip. ``tests/test_contract.py`` scans the tree so that none of it is typed anywhere else.
"""

from .constants import *  # noqa: F403
from .spec import (
    ANALYTIC_ENCODER,
    CONCRETE_ENCODERS,
    FIELD_NAMES,
    FIELDS,
    FieldInfo,
    JobSpec,
    check_text,
    check_value,
    check_visible,
    field_applies,
    field_named,
    info,
    job_request,
    request_default,
    resolve_spec,
    strip_spaces,
    value_type,
)

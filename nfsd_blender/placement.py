"""A finished job's result in the scene: imported from its GLB and placed as its History entry says (``place_on``:
the object it was generated from; ``place_beside``: the object it is an edit of; else at the 3D cursor, variation
``variation`` beside the first).

The placement is part of the job's record, so a result that arrives after another job started, or after the file
was reopened, still lands where its own job said."""

from __future__ import annotations

import os
import traceback

import bpy
from mathutils import Matrix

from . import importer
from .properties import item_metadata
from .state import last_line, set_error

VARIATION_GAP = 1.5  # variations stand this many object sizes apart along X


def import_item(context, item):
    """Import a history entry's GLB, its job's fields as the object's properties; rotation as Euler angles,
    which the N-panel and the artist's keyframes expect (the glTF importer leaves quaternions)."""
    path = bpy.path.abspath(item.glb_path)
    result = importer.import_glb(context, path, item.prompt, item.job_id, item_metadata(item))
    result.rotation_mode = "XYZ"
    return result


def place(result, item) -> None:
    if item.place_on:
        onto_source(result, item.place_on, "texture" if item.keep_geometry else "shape")
    elif item.place_beside:
        beside_source(result, item.place_beside)
    else:
        beside_first(result, item.variation)


def beside_source(result, source_name: str) -> None:
    """An edit stands next to what it was made from (on its transform, one gap along X), which stays as it was;
    the result names it (its job's own fields name the source job)."""
    source = bpy.data.objects.get(source_name)
    result["nfsd_edited_from"] = source_name
    if source is None:  # deleted while the edit ran: at the cursor, where the import put it
        return
    result.matrix_world = source.matrix_world.copy()
    result.location.x += VARIATION_GAP * (max(source.dimensions) or 1.0)


def beside_first(result, variation: int) -> None:
    """Variation ``variation`` (0 = the first, at the cursor) moves along X, so a batch stands side by side
    instead of piled on the cursor."""
    if variation > 0:
        result.location.x += variation * VARIATION_GAP * (max(result.dimensions) or 1.0)


def onto_source(result, source_name: str, mode: str) -> None:
    """The result's geometry is in world space (it was sent so): give it the source object's transform instead,
    and hide the source (not delete it)."""
    source = bpy.data.objects.get(source_name)
    result["nfsd_source_object"] = source_name
    result["nfsd_mode"] = mode
    result.matrix_world = Matrix.Identity(4)
    if source is None:  # deleted while the job ran: leave the result where the world coordinates put it
        return
    result.data.transform(source.matrix_world.inverted())
    result.matrix_world = source.matrix_world.copy()
    source.hide_set(True)
    source.hide_render = True


def import_failed(props, err: Exception) -> None:
    """The panel's line for an import that raised: the error's last line, the traceback behind Copy Details."""
    set_error(props, f"Import failed: {last_line(err) or type(err).__name__}", traceback.format_exc())


def forget_download(item) -> None:
    """Drop a downloaded GLB that would not import, so the next Re-import fetches it from the server again."""
    path = bpy.path.abspath(item.glb_path)
    if path and os.path.isfile(path):
        os.remove(path)
    item.glb_path = ""

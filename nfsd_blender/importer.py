"""Import a finished GLB at the 3D cursor into the "NFSD" collection, all or nothing."""

import bpy

from . import remesh
from .contract import DEFAULT_POLY_BUDGET

COLLECTION = "NFSD"
PREFIX = "nfsd_"
# The exporter names its images by role (glTF image names, which Blender's importer keeps): what the artist sees.
IMAGE_ROLES = {"base_color": "albedo", "normal": "normal", "orm": "ORM"}


def _collection(scene):
    coll = bpy.data.collections.get(COLLECTION)
    if coll is None:
        coll = bpy.data.collections.new(COLLECTION)
    if coll.name not in scene.collection.children:
        scene.collection.children.link(coll)
    return coll


def asset_name(prompt: str, job_id: str) -> str:
    """'a red ball 3f2a91': readable, and unique per job so two results never collide as '.001' copies."""
    return f"{prompt.strip()[:48] or 'NFSD'} {job_id[:6]}".strip()


def _snapshot():
    return {kind: set(getattr(bpy.data, kind)) for kind in ("objects", "meshes", "materials", "images")}


def _remove_new(before) -> None:
    """Undo a half-done import: every datablock that was not there before goes."""
    for kind in ("objects", "meshes", "materials", "images"):
        coll = getattr(bpy.data, kind)
        for block in [b for b in coll if b not in before[kind]]:
            coll.remove(block)


def show_status(context, text) -> None:
    """Blender's status bar while a step blocks the UI (it does not redraw by itself meanwhile); None clears it."""
    workspace = getattr(context, "workspace", None)
    if workspace is None:  # headless
        return
    workspace.status_text_set(None if text is None else f"NFSD: {text}")
    if bpy.ops.wm.redraw_timer.poll():  # a window to draw (not from a timer, not headless)
        bpy.ops.wm.redraw_timer(type="DRAW_WIN_SWAP", iterations=1)


def import_glb(context, path, prompt, job_id, metadata, report=None):
    """Import ``path``; on any failure remove what was made (and an NFSD collection made for it) and re-raise.
    ``report(text)``: each slow phase of a remesh (default: Blender's status bar)."""
    scene = context.scene
    had_collection = bpy.data.collections.get(COLLECTION) is not None
    before = _snapshot()
    report = report or (lambda text: show_status(context, text))
    try:
        return _import(context, scene, path, prompt, job_id, metadata, before, report)
    except Exception:
        _remove_new(before)
        coll = bpy.data.collections.get(COLLECTION)
        if coll is not None and not had_collection and not coll.all_objects:
            bpy.data.collections.remove(coll)
        raise
    finally:
        show_status(context, None)


def _import(context, scene, path, prompt, job_id, metadata, before, report):
    bpy.ops.import_scene.gltf(filepath=path)
    new = [ob for ob in bpy.data.objects if ob not in before["objects"]]
    if not new:
        raise RuntimeError(f"The GLB at {path} held no objects")
    coll = _collection(scene)
    for ob in new:
        for c in list(ob.users_collection):
            c.objects.unlink(ob)
        coll.objects.link(ob)
    roots = [ob for ob in new if ob.parent is None]
    for ob in roots:
        ob.location = scene.cursor.location
    for ob in context.view_layer.objects:
        ob.select_set(False)
    main = next((ob for ob in roots if ob.type == "MESH"), roots[0])
    name = asset_name(prompt, job_id)
    main.name = name
    if main.type == "MESH":
        main.data.name = name
    _normalise_metadata(main, metadata)
    if main.type == "MESH":
        imported = main
        main = remesh.remesh(context, main, _remesh_mode(scene), _poly_budget(main, metadata), report)
        new = [main if ob is imported else ob for ob in new]
    for mat in [m for m in bpy.data.materials if m not in before["materials"]]:
        mat.name = f"{name} material"
    for img in [i for i in bpy.data.images if i not in before["images"]]:
        img.name = f"{name} {IMAGE_ROLES.get(img.name.split('.')[0], 'albedo')}"
    for ob in new:
        ob.select_set(True)
    context.view_layer.objects.active = main
    return main


def _normalise_metadata(ob, metadata) -> None:
    """One set of ``nfsd_*`` properties: the GLB's extras (the server's settings, as the job ran) win over the
    add-on's copy of the request; empty values (no model for the analytic prior) are left out."""
    from_glb = {key: ob[key] for key in list(ob.keys()) if not key.startswith(("_", PREFIX))}
    for key in from_glb:
        del ob[key]
    merged = {**metadata, **from_glb}
    for key, value in merged.items():
        if value is None or value == "" or value == "None":
            continue
        ob[PREFIX + key] = value


def _remesh_mode(scene) -> str:
    props = getattr(scene, "nfsd", None)
    return getattr(props, "remesh", remesh.KEEP)


def _poly_budget(ob, metadata) -> int:
    """The job's Poly Budget: the GLB's own record (now the object's properties) first."""
    return int(ob.get(PREFIX + "poly_budget", metadata.get("poly_budget", DEFAULT_POLY_BUDGET)))

"""Import a finished GLB at the 3D cursor into the "NFSD" collection."""

import bpy

COLLECTION = "NFSD"


def _collection(scene):
    coll = bpy.data.collections.get(COLLECTION)
    if coll is None:
        coll = bpy.data.collections.new(COLLECTION)
    if coll.name not in scene.collection.children:
        scene.collection.children.link(coll)
    return coll


def import_glb(context, path, name, metadata):
    scene = context.scene
    coll = _collection(scene)
    before = set(bpy.data.objects)
    bpy.ops.import_scene.gltf(filepath=path)
    new = [ob for ob in bpy.data.objects if ob not in before]
    if not new:
        raise RuntimeError(f"The GLB at {path} held no objects")
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
    main.name = name[:60] or "NFSD"
    for key, value in metadata.items():
        main[f"nfsd_{key}"] = value
    for ob in new:
        ob.select_set(True)
    context.view_layer.objects.active = main
    return main

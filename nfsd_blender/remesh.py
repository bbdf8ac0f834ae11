"""Topology after import, with Blender's own tools: QuadriFlow or voxel remesh, then the maps re-baked onto it.

The imported triangle mesh is kept aside as the bake source: the remeshed copy gets new UVs (Smart UV Project)
and its albedo, normal and ORM maps are baked from the source with Cycles (selected to active), into a copy of
the importer's material, so the node layout (Normal Map, ORM split) stays the one Blender's glTF importer makes.
The source is then removed. Main thread only (operators), like every importer step.
"""

import math

import bpy

KEEP, QUADS, VOXEL = "KEEP", "QUADS", "VOXEL"
MODES = (
    (KEEP, "Keep Triangles", "The exported triangle mesh as it is"),
    (QUADS, "Quads (QuadriFlow)", "Blender's QuadriFlow remesher: even, flowing quads; maps re-baked"),
    (VOXEL, "Voxel", "Blender's voxel remesher: even quads, closes holes; maps re-baked"),
)
# A quad costs two triangles: remeshed assets target half the Poly Budget in quads, the same triangle count.
TRIANGLES_PER_QUAD = 2
REMESH_TRIES = 4
ISLAND_MARGIN = 0.01  # Smart UV Project's gap between islands (fraction of the texture)
BAKE_MARGIN_PX = 64  # texels of padding Cycles extends past each island (no background at the first mips)
MERGE_DISTANCE = 2e-4  # Blender units; QuadriFlow's own zero-length test is 1e-4 per axis
CAGE_OF_SIZE = 0.02  # ray start above the new surface, relative to the object's size: covers remesh deviation


def remesh(context, obj, mode: str, poly_budget: int, report=lambda text: None):
    """The object to keep: ``obj`` itself for KEEP, else a remeshed, re-baked replacement with its name,
    transform, collections and custom properties (``obj`` and its own data are removed). ``report(text)`` is told
    each phase before it runs (they block Blender for seconds: the caller shows them)."""
    if mode == KEEP:
        return obj
    if mode not in (QUADS, VOXEL):
        raise ValueError(f"Remesh mode {mode!r} is not one of {', '.join(m[0] for m in MODES)}")
    target_quads = max(poly_budget // TRIANGLES_PER_QUAD, 1)
    low = _copy_for_remesh(context, obj)
    if mode == QUADS:
        report(f"Remeshing to {target_quads} quads with QuadriFlow…")
        _quadriflow(context, low, target_quads)
    else:
        report(f"Remeshing to {target_quads} quads (voxel)…")
        _voxel(context, low, target_quads)
    report("Unwrapping UVs…")
    _smart_uvs(context, low)
    _rebake(context, obj, low, report)
    name = obj.name
    _remove_with_data(obj)
    low.name = low.data.name = name
    return low


def _copy_for_remesh(context, obj):
    low = obj.copy()
    low.data = obj.data.copy()
    low.data.materials.clear()
    for collection in obj.users_collection:
        collection.objects.link(low)
    _make_active(context, low)
    # The importer splits vertices along UV seams; both remeshers need one connected, manifold surface, and
    # QuadriFlow also refuses edges shorter than 1e-4 per axis (decimation leaves a few).
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.mesh.select_all(action="SELECT")
    bpy.ops.mesh.remove_doubles(threshold=MERGE_DISTANCE)
    bpy.ops.mesh.dissolve_degenerate(threshold=MERGE_DISTANCE)
    bpy.ops.object.mode_set(mode="OBJECT")
    return low


def _quadriflow(context, low, target_quads: int) -> None:
    def run(request: int) -> None:
        result = bpy.ops.object.quadriflow_remesh(
            mode="FACES", target_faces=request, use_mesh_symmetry=False, use_preserve_sharp=False,
            use_preserve_boundary=False, smooth_normals=True,
        )
        if result != {"FINISHED"}:
            raise RuntimeError("QuadriFlow could not remesh this object; try Remesh: Voxel, which accepts any surface")

    _within_budget(context, low, target_quads, run)


def _voxel(context, low, target_quads: int) -> None:
    """Voxel size from the budget: a voxel face of surface becomes one quad, so side = sqrt(area / quads)."""
    area = sum(polygon.area for polygon in low.data.polygons) * max(low.scale) ** 2

    def run(request: int) -> None:
        low.data.remesh_voxel_size = math.sqrt(area / request) / max(low.scale)
        bpy.ops.object.voxel_remesh()

    _within_budget(context, low, target_quads, run)


def _within_budget(context, low, target_quads: int, run) -> None:
    """``run(requested quads)`` on ``low`` until it lands within ``target_quads``: both remeshers only get near
    the count asked for, so an overshoot is retried from the original with a proportionally lower request."""
    original = low.data.copy()
    request = target_quads
    for _ in range(REMESH_TRIES):
        _make_active(context, low)
        run(request)
        faces = len(low.data.polygons)
        if 0 < faces <= target_quads:
            break
        request = max(int(request * target_quads / max(faces, 1) * 0.98), 1)
        remeshed, low.data = low.data, original.copy()
        bpy.data.meshes.remove(remeshed)
    bpy.data.meshes.remove(original)
    if not 0 < len(low.data.polygons) <= target_quads:
        raise RuntimeError(
            f"Remeshing kept {len(low.data.polygons)} faces for a budget of {target_quads} quads after "
            f"{REMESH_TRIES} tries; choose Remesh: Keep Triangles or another Poly Budget"
        )


def _smart_uvs(context, low) -> None:
    _make_active(context, low)
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.mesh.select_all(action="SELECT")
    bpy.ops.uv.smart_project(island_margin=ISLAND_MARGIN)
    bpy.ops.object.mode_set(mode="OBJECT")
    bpy.ops.object.shade_smooth()


def _rebake(context, source, low, report=lambda text: None) -> None:
    """Bake each of the source material's images onto ``low`` into a new image of the same role, size and colour
    space, in a copy of the source's material."""
    material = source.material_slots[0].material
    baked_material = material.copy()
    low.data.materials.append(baked_material)
    new_images = {}
    for node in baked_material.node_tree.nodes:
        if node.type == "TEX_IMAGE" and node.image is not None:
            if node.image not in new_images:
                new_images[node.image] = _new_image_like(node.image)
            node.image = new_images[node.image]
    scene = context.scene
    engine = scene.render.engine
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 1
    bake = scene.render.bake
    bake.use_selected_to_active = True
    bake.cage_extrusion = CAGE_OF_SIZE * max(low.dimensions)
    bake.max_ray_distance = 2 * bake.cage_extrusion
    bake.margin = BAKE_MARGIN_PX
    bake.margin_type = "EXTEND"
    baked = set()
    for node in material.node_tree.nodes:
        # The ORM image is on two nodes (roughness/metallic and occlusion): bake it once.
        if node.type == "TEX_IMAGE" and node.image in new_images and node.image not in baked:
            report(f"Baking map {len(baked) + 1} of {len(new_images)}…")
            _bake_one(context, source, low, material, baked_material, node, new_images[node.image])
            baked.add(node.image)
    scene.render.engine = engine
    for image in new_images.values():
        image.pack()


def _bake_one(context, source, low, material, baked_material, source_node, target) -> None:
    """Bake into ``target`` through a material holding nothing but it: were ``low`` to wear ``baked_material``,
    which shows ``target``, Cycles would read the image it writes ("Circular dependency for image")."""
    holder = bpy.data.materials.new("NFSD bake target")
    if holder.node_tree is None:
        holder.use_nodes = True
    target_node = holder.node_tree.nodes.new("ShaderNodeTexImage")
    target_node.image = target
    holder.node_tree.nodes.active = target_node
    low.data.materials[0] = holder
    source.select_set(True)
    low.select_set(True)
    context.view_layer.objects.active = low
    try:
        if _is_normal_map(source_node):
            bpy.ops.object.bake(type="NORMAL", normal_space="TANGENT")
        else:
            with _emitting(material, source_node):
                bpy.ops.object.bake(type="EMIT")
    finally:
        low.data.materials[0] = baked_material
        bpy.data.materials.remove(holder)


def _is_normal_map(node) -> bool:
    return any(link.to_node.type == "NORMAL_MAP" for link in node.outputs["Color"].links)


class _emitting:
    """The source material shows one image as pure emission for the bake, and is put back afterwards."""

    def __init__(self, material, image_node):
        self.tree, self.image_node = material.node_tree, image_node

    def __enter__(self):
        self.output = next(n for n in self.tree.nodes if n.type == "OUTPUT_MATERIAL" and n.is_active_output)
        surface = self.output.inputs["Surface"]
        self.previous = surface.links[0].from_socket if surface.is_linked else None
        self.emission = self.tree.nodes.new("ShaderNodeEmission")
        self.tree.links.new(self.image_node.outputs["Color"], self.emission.inputs["Color"])
        self.tree.links.new(self.emission.outputs["Emission"], surface)

    def __exit__(self, *_exc):
        self.tree.nodes.remove(self.emission)
        if self.previous is not None:
            self.tree.links.new(self.previous, self.output.inputs["Surface"])


def _new_image_like(image):
    new = bpy.data.images.new(image.name, *image.size, alpha=False)
    new.colorspace_settings.name = image.colorspace_settings.name
    return new


def _make_active(context, obj) -> None:
    for other in context.view_layer.objects:
        other.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj


def _remove_with_data(obj) -> None:
    mesh = obj.data
    materials = [slot.material for slot in obj.material_slots if slot.material]
    images = {node.image for m in materials for node in m.node_tree.nodes if node.type == "TEX_IMAGE" and node.image}
    bpy.data.objects.remove(obj)
    if mesh.users == 0:
        bpy.data.meshes.remove(mesh)
    for material in materials:
        if material.users == 0:
            bpy.data.materials.remove(material)
    # Not by ``image.users``: Blender 4.2 still counts a user for a removed material's images.
    in_use = {node.image for m in bpy.data.materials if m.node_tree for node in m.node_tree.nodes
              if node.type == "TEX_IMAGE"}
    for image in images - in_use:
        bpy.data.images.remove(image)

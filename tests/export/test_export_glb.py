"""export_glb on analytic fields: geometry, UVs, baked texture, glTF frame, metadata, and Blender import."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import trimesh
from export_fields import SphereField, TorusField

from nfsd_server.export import ExportSettings, export_glb

SPHERE_SETTINGS = ExportSettings(grid_resolution=128, poly_budget=3000, texture_size=512, height=2.0)
TORUS_SETTINGS = ExportSettings(grid_resolution=112, poly_budget=4000, texture_size=512, height=1.0)
METADATA = {"prompt": "a red ball", "seed": 7, "settings": {"steps": 1200, "method": "nfsd"}}


def load_mesh(path) -> trimesh.Trimesh:
    scene = trimesh.load(path, process=False)
    assert len(scene.geometry) == 1, f"expected one mesh in the GLB, found {len(scene.geometry)}"
    return next(iter(scene.geometry.values()))


def read_gltf_json(path) -> dict:
    """The JSON chunk of a GLB (header 12 bytes, then chunk length, chunk type, chunk data)."""
    data = path.read_bytes()
    length, kind = struct.unpack_from("<II", data, 12)
    assert kind == 0x4E4F534A  # "JSON"
    return json.loads(data[20 : 20 + length])


def signed_volume(mesh: trimesh.Trimesh) -> float:
    a, b, c = (mesh.vertices[mesh.faces[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def texture_of(mesh: trimesh.Trimesh) -> np.ndarray:
    """(S, S, 3) float in [0, 1]."""
    return np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), dtype=np.float64) / 255.0


def sample(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest texel of ``image`` at ``uv`` (N, 2) in trimesh's convention (v up)."""
    size = image.shape[0]
    col = np.clip((uv[:, 0] * size).astype(int), 0, size - 1)
    row = np.clip(((1.0 - uv[:, 1]) * size).astype(int), 0, size - 1)
    return image[row, col]


def mip(image: np.ndarray, factor: int) -> np.ndarray:
    size = image.shape[0] // factor
    return image.reshape(size, factor, size, factor, 3).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def sphere(tmp_path_factory):
    path = tmp_path_factory.mktemp("sphere") / "ball.glb"
    report = export_glb(SphereField(), path, SPHERE_SETTINGS, METADATA)
    return report, load_mesh(path)


@pytest.fixture(scope="module")
def torus(tmp_path_factory):
    path = tmp_path_factory.mktemp("torus") / "ring.glb"
    report = export_glb(TorusField(), path, TORUS_SETTINGS)
    return report, load_mesh(path)


def test_sphere_volume_and_area_match_the_analytic_ball_scaled_to_the_requested_height(sphere):
    _, mesh = sphere
    scale = SPHERE_SETTINGS.height / (2 * SphereField().radius)
    assert signed_volume(mesh) == pytest.approx(SphereField().volume() * scale**3, rel=0.03)
    assert mesh.area == pytest.approx(SphereField().area() * scale**2, rel=0.03)


def test_torus_volume_and_area_match_and_the_floater_is_dropped(torus):
    report, mesh = torus
    field = TorusField()
    scale = TORUS_SETTINGS.height / (2 * field.tube)
    assert signed_volume(mesh) == pytest.approx(field.volume() * scale**3, rel=0.03)
    assert mesh.area == pytest.approx(field.area() * scale**2, rel=0.03)
    # The floater sits at world (0.8, 0.8, 0.8); kept, it would widen the box past the torus's 2 * 0.7.
    extent = mesh.bounds[1] - mesh.bounds[0]
    assert extent == pytest.approx([1.4 * scale, 1.0, 1.4 * scale], rel=0.02)
    welded = mesh.copy()
    welded.merge_vertices(merge_tex=True, merge_norm=True)
    assert len(welded.split(only_watertight=False)) == 1


def test_face_count_is_within_budget_and_reported(sphere, torus):
    for (report, mesh), settings in ((sphere, SPHERE_SETTINGS), (torus, TORUS_SETTINGS)):
        assert len(mesh.faces) == report.n_faces <= settings.poly_budget
        assert report.n_faces > settings.poly_budget * 0.9  # decimated to the budget, not far below it
        assert len(mesh.vertices) == report.n_vertices


def test_report_times_every_stage_in_pipeline_order(sphere):
    report, _ = sphere
    assert list(report.timings) == [
        "grid_sampling", "marching_cubes", "cleanup", "decimation", "uv_unwrap", "bake", "normal_map", "occlusion",
        "dilation", "glb_write",
    ]  # fmt: skip
    assert all(seconds >= 0 for seconds in report.timings.values())


def test_faces_point_outward(sphere):
    _, mesh = sphere
    centre = (mesh.bounds[0] + mesh.bounds[1]) / 2
    outward = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center - centre)
    assert (outward > 0).all()
    assert signed_volume(mesh) > 0


def test_every_vertex_has_uvs_inside_the_texture(sphere, torus):
    for _, mesh in (sphere, torus):
        uv = mesh.visual.uv
        assert uv.shape == (len(mesh.vertices), 2)
        assert np.isfinite(uv).all() and (uv >= 0).all() and (uv <= 1).all()


def test_object_stands_on_the_origin_plus_y_up_with_the_requested_height(sphere):
    _, mesh = sphere
    low, high = mesh.bounds
    assert low[1] == pytest.approx(0.0, abs=1e-6)
    assert high[1] - low[1] == pytest.approx(SPHERE_SETTINGS.height, rel=1e-6)
    assert (low[[0, 2]] + high[[0, 2]]) / 2 == pytest.approx([0.0, 0.0], abs=1e-6)


def test_baked_colours_follow_the_field_through_the_gltf_frame(sphere):
    """Red grows with world x (glTF x), blue with world z (glTF +y): checks UVs, bake and the axis swap."""
    _, mesh = sphere
    radius = SphereField().radius
    scale = SPHERE_SETTINGS.height / (2 * radius)
    centres = mesh.triangles_center
    world_x, world_z = centres[:, 0] / scale, centres[:, 1] / scale - radius
    expected = np.stack([(world_x + 1) / 2, np.full_like(world_x, 0.3), (world_z + 1) / 2], axis=1)
    face_uv = mesh.visual.uv[mesh.faces].mean(axis=1)
    baked = sample(texture_of(mesh), face_uv)
    assert np.abs(baked - expected).max() < 0.03
    assert baked.mean(axis=0) == pytest.approx(expected.mean(axis=0), abs=0.005)


def test_no_background_colour_anywhere_in_the_texture_or_its_mips(sphere, torus):
    """Green is 0.3 everywhere on the sphere and the torus colour is constant, so any other value is bleed."""
    _, sphere_mesh = sphere
    _, torus_mesh = torus
    for factor in (1, 2, 4):
        assert np.abs(mip(texture_of(sphere_mesh), factor)[..., 1] - 0.3).max() < 1.5 / 255
        assert np.abs(mip(texture_of(torus_mesh), factor) - TorusField.colour).max() < 1.5 / 255


def test_seams_sample_the_field_colour_at_coarser_mips(sphere):
    _, mesh = sphere
    radius = SphereField().radius
    scale = SPHERE_SETTINGS.height / (2 * radius)
    face_uv = mesh.visual.uv[mesh.faces].mean(axis=1)
    expected_red = (mesh.triangles_center[:, 0] / scale + 1) / 2
    for factor, tolerance in ((2, 0.06), (4, 0.12)):
        red = sample(mip(texture_of(mesh), factor), face_uv)[:, 0]
        # Neighbouring charts may share a coarse texel (a true mip limit); a black background would be off by ~0.5.
        assert np.abs(red - expected_red).max() < tolerance


def test_material_is_rough_non_metallic_with_its_maps(sphere):
    _, mesh = sphere
    material = mesh.visual.material
    assert material.baseColorTexture.size == (512, 512)
    assert material.metallicFactor == 0.0
    assert material.roughnessFactor == pytest.approx(0.8)
    assert material.normalTexture.size == material.occlusionTexture.size == (256, 256)  # half the side


def test_metadata_is_written_as_gltf_extras(sphere):
    report, _ = sphere
    gltf = read_gltf_json(report.path)
    assert "extras" not in gltf["scenes"][0]  # Blender would copy scene extras onto the user's scene
    mesh_nodes = [node for node in gltf["nodes"] if "mesh" in node]
    assert [node["extras"] for node in mesh_nodes] == [METADATA]


def test_blender_imports_one_textured_mesh_z_up_at_height_with_metadata(torus):
    """Headless Blender: one mesh object, one material with an image texture, metadata as custom properties."""
    bpy = pytest.importorskip("bpy")
    report, _ = torus
    path = report.path.with_name("ring_meta.glb")
    export_glb(TorusField(), path, TORUS_SETTINGS, METADATA)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(path))
    meshes = [obj for obj in bpy.context.scene.objects if obj.type == "MESH"]
    assert len(meshes) == 1
    obj = meshes[0]
    materials = [slot.material for slot in obj.material_slots]
    assert len(materials) == 1
    assert_principled_material_with_linked_maps(materials[0])
    # The torus is flat (0.4 tall, 1.4 wide): +Z up means Z is the short axis, scaled to the requested height.
    width = 1.4 * TORUS_SETTINGS.height / 0.4
    assert tuple(obj.dimensions) == pytest.approx((width, width, TORUS_SETTINGS.height), rel=0.02)
    corners = np.array([obj.matrix_world @ vertex.co for vertex in obj.data.vertices])
    assert corners[:, 2].min() == pytest.approx(0.0, abs=1e-5)
    assert obj["prompt"] == METADATA["prompt"]
    assert obj["seed"] == METADATA["seed"]
    assert obj["settings"]["steps"] == METADATA["settings"]["steps"]
    assert "prompt" not in bpy.context.scene


def assert_principled_material_with_linked_maps(material) -> None:
    """Blender's glTF importer: Principled BSDF fed by base colour (sRGB), a Normal Map node (Non-Color), and the
    ORM split by a Separate Color node, G → roughness and B → metallic, each times its factor; base colour 512²,
    the normal and ORM maps half that."""
    nodes = material.node_tree.nodes
    (bsdf,) = [node for node in nodes if node.type == "BSDF_PRINCIPLED"]

    def source(socket):
        assert socket.is_linked, f"{socket.name} is not linked"
        return socket.links[0].from_node

    base = source(bsdf.inputs["Base Color"])
    assert base.type == "TEX_IMAGE" and base.image.colorspace_settings.name == "sRGB"
    normal_map = source(bsdf.inputs["Normal"])
    assert normal_map.type == "NORMAL_MAP" and normal_map.space == "TANGENT"
    normal_image = source(normal_map.inputs["Color"])
    assert normal_image.image.colorspace_settings.name == "Non-Color"
    for socket, channel, factor in (("Roughness", "Green", 0.8), ("Metallic", "Blue", 0.0)):
        multiply = source(bsdf.inputs[socket])
        assert multiply.type == "MATH" and multiply.operation == "MULTIPLY"
        assert multiply.inputs[1].default_value == pytest.approx(factor)
        split = source(multiply.inputs[0])
        assert split.type == "SEPARATE_COLOR" and multiply.inputs[0].links[0].from_socket.name == channel
        orm = source(split.inputs["Color"])
        assert orm.image.colorspace_settings.name == "Non-Color"
    assert tuple(base.image.size) == (512, 512)
    assert tuple(normal_image.image.size) == tuple(orm.image.size) == (256, 256)


def test_blender_mikktspace_tangents_match_the_ones_the_map_was_baked_in(sphere):
    """Blender ignores the file's tangents and computes MikkTSpace ones from the UVs and normals; the normal map
    only decodes right if they are ours. Compared per corner: direction within 1° (99th percentile), same sign."""
    bpy = pytest.importorskip("bpy")
    report, _ = sphere
    gltf, binary = read_glb(report.path)
    attributes = gltf["meshes"][0]["primitives"][0]["attributes"]
    ours = read_accessor(gltf, binary, attributes["TANGENT"])
    positions = read_accessor(gltf, binary, attributes["POSITION"])
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(report.path))
    (obj,) = [obj for obj in bpy.context.scene.objects if obj.type == "MESH"]
    mesh = obj.data
    mesh.calc_tangents()
    corner_vertex = np.array([loop.vertex_index for loop in mesh.loops])
    blender_tangent = np.array([loop.tangent[:] for loop in mesh.loops])
    blender_sign = np.array([loop.bitangent_sign for loop in mesh.loops])
    blender_positions = np.array([vertex.co[:] for vertex in mesh.vertices])
    # The importer keeps glTF's vertex order and maps (x, y, z) → (x, -z, y); check, then compare in glTF's frame.
    to_blender = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    assert blender_positions == pytest.approx(positions @ to_blender.T, abs=1e-5)
    ours_per_corner = ours[corner_vertex]
    angle = angle_degrees(blender_tangent, ours_per_corner[:, :3] @ to_blender.T)
    print(f"MikkTSpace vs ours: {np.percentile(angle, 50):.3f}° median, {np.percentile(angle, 99):.3f}° p99")
    assert np.percentile(angle, 99) < 1.0
    assert (blender_sign == ours_per_corner[:, 3]).mean() > 0.999


class CompassField(SphereField):
    """The ball, coloured by world position: (r, g, b) = ((x, y, z) + 1) / 2, so any mirrored axis shows."""

    def albedo(self, points):
        return ((points + 1) / 2).clamp(0, 1)


def test_blender_sees_the_world_frame_and_the_texture_unflipped(tmp_path):
    """In Blender, each face's texel colour encodes the world point it came from: checks axes, no mirror, and
    the image's row order as Blender's importer reads it (trimesh's own round trip cannot see a v flip)."""
    bpy = pytest.importorskip("bpy")
    field = CompassField(radius=0.5)
    settings = ExportSettings(grid_resolution=64, poly_budget=1500, texture_size=512, height=1.0)
    path = tmp_path / "compass.glb"
    export_glb(field, path, settings)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(path))
    (obj,) = [obj for obj in bpy.context.scene.objects if obj.type == "MESH"]
    (bsdf,) = [node for node in obj.material_slots[0].material.node_tree.nodes if node.type == "BSDF_PRINCIPLED"]
    image = bsdf.inputs["Base Color"].links[0].from_node.image
    width, height = image.size
    pixels = np.array(image.pixels[:], dtype=np.float64).reshape(height, width, 4)  # row 0 = bottom, v up
    mesh = obj.data
    positions = np.array([obj.matrix_world @ vertex.co for vertex in mesh.vertices])
    uv = np.array([loop.uv[:] for loop in mesh.uv_layers.active.data])
    face_loops = [list(polygon.loop_indices) for polygon in mesh.polygons]
    face_uv = np.array([uv[loops].mean(axis=0) for loops in face_loops])
    face_centre = np.array([positions[list(polygon.vertices)].mean(axis=0) for polygon in mesh.polygons])
    # Blender (x, y, z) → world: undo the scale to 1 unit tall and the lift that stands the ball on z = 0.
    world = face_centre * (2 * field.radius / settings.height) - [0.0, 0.0, field.radius]
    rows = np.clip((face_uv[:, 1] * height).astype(int), 0, height - 1)
    cols = np.clip((face_uv[:, 0] * width).astype(int), 0, width - 1)
    baked = pixels[rows, cols, :3]
    assert np.abs(baked - (world + 1) / 2).max() < 0.03


# --- PBR maps: normal map, ORM, padding, validity ---------------------------------------------------------------


def read_glb(path) -> tuple[dict, bytes]:
    """(JSON chunk, BIN chunk) of a GLB."""
    data = path.read_bytes()
    length = struct.unpack_from("<I", data, 12)[0]
    binary_at = 20 + length
    binary_length = struct.unpack_from("<I", data, binary_at)[0]
    return json.loads(data[20:binary_at]), data[binary_at + 8 : binary_at + 8 + binary_length]


COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
DTYPES = {5126: np.float32, 5125: np.uint32, 5123: np.uint16}


def read_accessor(gltf: dict, binary: bytes, index: int) -> np.ndarray:
    accessor = gltf["accessors"][index]
    view = gltf["bufferViews"][accessor["bufferView"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    count, width = accessor["count"], COMPONENTS[accessor["type"]]
    values = np.frombuffer(binary, DTYPES[accessor["componentType"]], count * width, start)
    return values.reshape(count, width) if width > 1 else values


def read_image(gltf: dict, binary: bytes, texture_index: int) -> np.ndarray:
    """(S, S, 3) float in [0, 1], row 0 = glTF t = 0 (the image's top)."""
    from io import BytesIO

    from PIL import Image

    view = gltf["bufferViews"][gltf["images"][gltf["textures"][texture_index]["source"]]["bufferView"]]
    start = view.get("byteOffset", 0)
    image = Image.open(BytesIO(binary[start : start + view["byteLength"]])).convert("RGB")
    return np.asarray(image, dtype=np.float64) / 255.0


def surface_samples(path):
    """Points on every face (centroid and three inner points) of the GLB's mesh, with the interpolated vertex
    normal, tangent (xyz, w), glTF texcoord, and face normal at each: a dict of (K, C) arrays."""
    gltf, binary = read_glb(path)
    primitive = gltf["meshes"][0]["primitives"][0]
    attributes = {name: read_accessor(gltf, binary, index) for name, index in primitive["attributes"].items()}
    faces = read_accessor(gltf, binary, primitive["indices"]).reshape(-1, 3).astype(np.int64)
    weights = np.array([[1, 1, 1], [4, 1, 1], [1, 4, 1], [1, 1, 4]], np.float64) / np.array([[3], [6], [6], [6]])
    samples = {
        name: np.einsum("sj,fjc->fsc", weights, values[faces].astype(np.float64)).reshape(-1, values.shape[1])
        for name, values in attributes.items()
    }
    corners = attributes["POSITION"][faces].astype(np.float64)
    face_normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    face_normal /= np.linalg.norm(face_normal, axis=1, keepdims=True)
    samples["FACE_NORMAL"] = np.repeat(face_normal, len(weights), axis=0)
    return gltf, binary, samples


def mapped_normals(gltf, binary, samples) -> np.ndarray:
    """What a glTF viewer shades with at each sample: the normal texture decoded in the MikkTSpace frame."""
    from nfsd_server.export.normal_map import decode_normals

    image = read_image(gltf, binary, gltf["materials"][0]["normalTexture"]["index"])
    size = image.shape[0]
    texcoord = samples["TEXCOORD_0"]
    rows = np.clip((texcoord[:, 1] * size).astype(int), 0, size - 1)
    cols = np.clip((texcoord[:, 0] * size).astype(int), 0, size - 1)
    normal = samples["NORMAL"] / np.linalg.norm(samples["NORMAL"], axis=1, keepdims=True)
    return decode_normals(image[rows, cols], normal, samples["TANGENT"])


def angle_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)))


def sphere_normals(points: np.ndarray) -> np.ndarray:
    """The analytic ball's outward normal in the GLB's frame: radius 1 (height 2), centre (0, 1, 0), +Y up."""
    outward = points - [0.0, 1.0, 0.0]
    return outward / np.linalg.norm(outward, axis=1, keepdims=True)


def torus_normals(points: np.ndarray) -> np.ndarray:
    """The analytic torus's outward normal in the GLB's frame: axis +Y through (0, 0.5, 0), ring 1.25 (× 2.5)."""
    field = TorusField()
    scale = TORUS_SETTINGS.height / (2 * field.tube)
    relative = points - [0.0, field.tube * scale, 0.0]
    radial = relative * [1.0, 0.0, 1.0]
    ring_point = radial / np.linalg.norm(radial, axis=1, keepdims=True) * field.ring * scale
    outward = relative - ring_point
    return outward / np.linalg.norm(outward, axis=1, keepdims=True)


@pytest.mark.parametrize("shape", ["sphere", "torus"])
def test_normal_map_matches_the_dense_surface_better_than_the_low_poly_faces(shape, request):
    """Baked normals, decoded as a viewer does, against the analytic surface: the map's mean angular error is
    about half the decimated mesh's face normals'. Measured: sphere (128³ grid, 3000 faces) map 1.63°, faces
    3.04°; torus (112³, 4000 faces) map 2.03°, faces 4.50°. The map's floor is the grid: this ball's shell is
    thinner than a voxel, so its sampled gradient is 1.7° off at 128³ and 0.5° at 256³."""
    report, _ = request.getfixturevalue(shape)
    gltf, binary, samples = surface_samples(report.path)
    analytic = (sphere_normals if shape == "sphere" else torus_normals)(samples["POSITION"])
    mapped_error = angle_degrees(mapped_normals(gltf, binary, samples), analytic)
    face_error = angle_degrees(samples["FACE_NORMAL"], analytic)
    print(f"{shape}: normal map {mapped_error.mean():.2f}° mean, faces {face_error.mean():.2f}° mean")
    assert mapped_error.mean() < 0.6 * face_error.mean()
    assert np.percentile(mapped_error, 99) < np.percentile(face_error, 99)


def test_tangents_are_unit_with_a_handedness_and_orthogonal_to_the_normals(sphere):
    report, _ = sphere
    gltf, binary = read_glb(report.path)
    attributes = gltf["meshes"][0]["primitives"][0]["attributes"]
    tangents = read_accessor(gltf, binary, attributes["TANGENT"])
    normals = read_accessor(gltf, binary, attributes["NORMAL"])
    assert np.linalg.norm(tangents[:, :3], axis=1) == pytest.approx(np.ones(len(tangents)), abs=1e-4)
    assert set(np.unique(tangents[:, 3])) <= {-1.0, 1.0}
    assert np.abs(np.einsum("ij,ij->i", tangents[:, :3], normals)).max() < 1e-4


def test_orm_is_one_texture_with_occlusion_and_neutral_roughness_metallic_under_explicit_factors(sphere, torus):
    """glTF's default factors (1.0) make polished metal: the file says 0.8 rough, 0 metallic; G and B are 1 so
    the factors are the values. Occlusion: a ball hides nothing from itself (R ≈ 1 everywhere); the torus's
    inner wall faces the other side of the ring across the hole, its outer wall the open sky."""
    for report, _ in (sphere, torus):
        gltf, binary = read_glb(report.path)
        material = gltf["materials"][0]
        pbr = material["pbrMetallicRoughness"]
        assert pbr["metallicFactor"] == 0.0 and pbr["roughnessFactor"] == pytest.approx(0.8)
        assert pbr["metallicRoughnessTexture"]["index"] == material["occlusionTexture"]["index"]
        orm = read_image(gltf, binary, material["occlusionTexture"]["index"])
        assert (orm[..., 1:] == 1.0).all()
    gltf, binary, samples = surface_samples(sphere[0].path)
    assert occlusion_at(gltf, binary, samples).min() > 0.95
    gltf, binary, samples = surface_samples(torus[0].path)
    occlusion, points = occlusion_at(gltf, binary, samples), samples["POSITION"]
    scale = TORUS_SETTINGS.height / (2 * TorusField().tube)
    radius = np.linalg.norm(points[:, [0, 2]], axis=1) / scale
    equator = np.abs(points[:, 1] / scale - TorusField().tube) < 0.05
    inner, outer = occlusion[equator & (radius < 0.35)], occlusion[equator & (radius > 0.65)]
    print(f"torus occlusion: inner wall {inner.mean():.2f}, outer wall {outer.mean():.2f}")
    assert outer.min() > 0.95
    assert inner.mean() < 0.75


def occlusion_at(gltf, binary, samples) -> np.ndarray:
    image = read_image(gltf, binary, gltf["materials"][0]["occlusionTexture"]["index"])
    size = image.shape[0]
    rows = np.clip((samples["TEXCOORD_0"][:, 1] * size).astype(int), 0, size - 1)
    cols = np.clip((samples["TEXCOORD_0"][:, 0] * size).astype(int), 0, size - 1)
    return image[rows, cols, 0]


def test_no_map_shows_the_clear_colour_at_any_mip_level_where_the_mesh_samples_it(sphere, torus):
    """Uncovered texels start black (the clear colour); padding must reach every texel a mip level averages. Where
    the mesh samples: the normal map points out of the surface (blue > 0.5; black would be 0) and the ORM's G and B
    stay exactly 1, at every power-of-two mip down to 16²."""
    for report, _ in (sphere, torus):
        gltf, binary, samples = surface_samples(report.path)
        material = gltf["materials"][0]
        normal_map = read_image(gltf, binary, material["normalTexture"]["index"])
        orm = read_image(gltf, binary, material["occlusionTexture"]["index"])
        base = read_image(gltf, binary, material["pbrMetallicRoughness"]["baseColorTexture"]["index"])
        factor = 1
        while normal_map.shape[0] // factor >= 16:
            for image, check in ((normal_map, lambda texels: texels[:, 2] > 0.5),
                                 (orm, lambda texels: (texels[:, 1:] > 1 - 1e-9).all(axis=1)),
                                 (base, lambda texels: texels.max(axis=1) > 0.05)):  # fmt: skip
                level = mip(image, factor)
                size = level.shape[0]
                rows = np.clip((samples["TEXCOORD_0"][:, 1] * size).astype(int), 0, size - 1)
                cols = np.clip((samples["TEXCOORD_0"][:, 0] * size).astype(int), 0, size - 1)
                assert check(level[rows, cols]).all(), f"clear colour at mip 1/{factor}"
            factor *= 2


def gltf_validator() -> list[str] | None:
    """The Khronos glTF validator's command (node + the npm package), or None: ``NFSD_GLTF_VALIDATOR`` names the
    package folder, else ``npm install gltf-validator`` in the checkout's root puts it where this looks."""
    import os
    import shutil
    from pathlib import Path

    root_install = Path(__file__).resolve().parents[2] / "node_modules" / "gltf-validator"
    folder = os.environ.get("NFSD_GLTF_VALIDATOR", str(root_install))
    node = shutil.which("node")
    if node is None or not folder or not os.path.isdir(folder):
        return None
    script = (
        "const v = require(process.argv[1]); const fs = require('fs');"
        "v.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])))"
        ".then(r => console.log(JSON.stringify(r.issues)));"
    )
    return [node, "-e", script, os.path.abspath(folder)]


def test_khronos_validator_reports_no_errors_or_warnings(sphere, torus):
    import subprocess

    import shutil

    command = gltf_validator()
    if command is None:
        if shutil.which("node") is None:
            pytest.skip("needs node (the Khronos validator runs on it)")
        pytest.fail("node is here but the gltf-validator package is not: run `npm install gltf-validator` in the "
                    "checkout's root (.ci/run does) or point NFSD_GLTF_VALIDATOR at its folder")
    for report, _ in (sphere, torus):
        result = subprocess.run([*command, str(report.path)], capture_output=True, text=True, timeout=60, check=True)
        issues = json.loads(result.stdout)
        assert (issues["numErrors"], issues["numWarnings"]) == (0, 0), issues["messages"]
        gltf = read_gltf_json(report.path)
        material = gltf["materials"][0]
        assert {"normalTexture", "occlusionTexture"} <= set(material)
        assert {"metallicFactor", "roughnessFactor"} <= set(material["pbrMetallicRoughness"])


class RoughnessField(SphereField):
    """The ball with learned materials: roughness (x + 1) / 2, metallic 0.25 everywhere."""

    def roughness(self, points):
        return ((points[:, 0] + 1) / 2).clamp(0, 1)

    def metallic(self, points):
        return torch.full((len(points),), 0.25)


def test_a_field_with_roughness_and_metallic_bakes_them_into_g_and_b_with_factors_one(tmp_path):
    path = tmp_path / "rough.glb"
    export_glb(RoughnessField(), path, ExportSettings(grid_resolution=64, poly_budget=1500, texture_size=512))
    gltf, binary, samples = surface_samples(path)
    material = gltf["materials"][0]
    assert (material["pbrMetallicRoughness"]["roughnessFactor"], material["pbrMetallicRoughness"]["metallicFactor"]) == (
        1.0, 1.0,
    )  # fmt: skip
    orm = read_image(gltf, binary, material["occlusionTexture"]["index"])
    size = orm.shape[0]
    rows = np.clip((samples["TEXCOORD_0"][:, 1] * size).astype(int), 0, size - 1)
    cols = np.clip((samples["TEXCOORD_0"][:, 0] * size).astype(int), 0, size - 1)
    # Standing on the origin 1 unit tall: glTF x = world x (radius 0.5) / (2 * 0.5).
    expected_roughness = (samples["POSITION"][:, 0] + 1) / 2
    assert np.abs(orm[rows, cols, 1] - expected_roughness).max() < 0.03
    assert orm[rows, cols, 2] == pytest.approx(np.full(len(rows), 0.25), abs=1 / 255)

"""export_glb on analytic fields: geometry, UVs, baked texture, glTF frame, metadata, and Blender import."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
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


def test_material_is_rough_non_metallic_with_an_image_texture(sphere):
    _, mesh = sphere
    material = mesh.visual.material
    assert material.baseColorTexture.size == (512, 512)
    assert material.metallicFactor == 0.0
    assert material.roughnessFactor == pytest.approx(0.8)


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
    images = [node.image for node in materials[0].node_tree.nodes if node.type == "TEX_IMAGE"]
    assert len(images) == 1 and tuple(images[0].size) == (512, 512)
    # The torus is flat (0.4 tall, 1.4 wide): +Z up means Z is the short axis, scaled to the requested height.
    width = 1.4 * TORUS_SETTINGS.height / 0.4
    assert tuple(obj.dimensions) == pytest.approx((width, width, TORUS_SETTINGS.height), rel=0.02)
    corners = np.array([obj.matrix_world @ vertex.co for vertex in obj.data.vertices])
    assert corners[:, 2].min() == pytest.approx(0.0, abs=1e-5)
    assert obj["prompt"] == METADATA["prompt"]
    assert obj["seed"] == METADATA["seed"]
    assert obj["settings"]["steps"] == METADATA["settings"]["steps"]
    assert "prompt" not in bpy.context.scene


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
    (image,) = [node.image for node in obj.material_slots[0].material.node_tree.nodes if node.type == "TEX_IMAGE"]
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

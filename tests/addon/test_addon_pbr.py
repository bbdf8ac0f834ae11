"""The imported asset's PBR material and the Remesh choice (QuadriFlow / Voxel with the maps re-baked), in headless
Blender, on a ball whose albedo encodes position: a re-bake that loses or shifts the texture shows as a colour error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from addon_helpers import addon_module
from nfsd_server.export import ExportSettings, export_glb

bpy = pytest.importorskip("bpy")

BUDGET = 1500
SIZE = 512
METADATA = {"prompt": "a red ball", "poly_budget": BUDGET, "texture_size": SIZE}


class CompassBall:
    """Ball of radius 0.5; albedo ((x, y, z) + 1) / 2 of the world point."""

    bound = 1.0
    surface_density = 25.0

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return 50.0 * torch.sigmoid((0.5 - points.norm(dim=-1)) / 0.02)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return ((points + 1) / 2).clamp(0, 1)


@pytest.fixture(scope="module")
def ball_glb(tmp_path_factory):
    path = tmp_path_factory.mktemp("pbr") / "ball.glb"
    settings = ExportSettings(grid_resolution=64, poly_budget=BUDGET, texture_size=SIZE, height=1.0)
    export_glb(CompassBall(), path, settings, METADATA)
    return path


@pytest.fixture
def fresh_scene(props):
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    for kind in ("meshes", "materials", "images"):
        for block in list(getattr(bpy.data, kind)):
            getattr(bpy.data, kind).remove(block)
    bpy.context.scene.cursor.location = (0.0, 0.0, 0.0)
    yield props
    props.remesh = "KEEP"


def import_ball(path, report=None):
    return addon_module("importer").import_glb(bpy.context, str(path), "a red ball", "abc123", dict(METADATA),
                                               report)


def maps_of(obj) -> dict:
    """{'albedo' | 'normal' | 'ORM': (H, W, 4) pixels, row 0 = bottom} from the object's Principled BSDF."""
    (bsdf,) = [n for n in obj.material_slots[0].material.node_tree.nodes if n.type == "BSDF_PRINCIPLED"]
    normal_map = bsdf.inputs["Normal"].links[0].from_node
    assert normal_map.type == "NORMAL_MAP"
    sources = {
        "albedo": bsdf.inputs["Base Color"].links[0].from_node,
        "normal": normal_map.inputs["Color"].links[0].from_node,
        # Roughness = Separate Color (G) of the ORM × the factor, the way Blender's glTF importer builds it.
        "ORM": bsdf.inputs["Roughness"].links[0].from_node.inputs[0].links[0].from_node.inputs[0].links[0].from_node,
    }
    out = {}
    for role, node in sources.items():
        assert node.type == "TEX_IMAGE", role
        width, height = node.image.size
        out[role] = np.array(node.image.pixels[:], dtype=np.float64).reshape(height, width, 4)
        out[role + " colourspace"] = node.image.colorspace_settings.name
    return out


def at_face_centres(obj, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(texel at each polygon's UV centre (P, 3), the polygon's world centre (P, 3))."""
    mesh = obj.data
    uv = np.array([loop.uv[:] for loop in mesh.uv_layers.active.data])
    positions = np.array([obj.matrix_world @ vertex.co for vertex in mesh.vertices])
    face_uv = np.array([uv[list(p.loop_indices)].mean(axis=0) for p in mesh.polygons])
    centres = np.array([positions[list(p.vertices)].mean(axis=0) for p in mesh.polygons])
    height, width = image.shape[:2]
    rows = np.clip((face_uv[:, 1] * height).astype(int), 0, height - 1)
    cols = np.clip((face_uv[:, 0] * width).astype(int), 0, width - 1)
    return image[rows, cols, :3], centres


def world_albedo(centres: np.ndarray) -> np.ndarray:
    """The ball stands on z = 0, 1 unit tall: world = Blender position - (0, 0, 0.5)."""
    return np.clip((centres - [0.0, 0.0, 0.5] + 1) / 2, 0, 1)


def test_import_keeps_triangles_and_names_each_map_by_role(fresh_scene, ball_glb):
    obj = import_ball(ball_glb)
    assert obj.name == "a red ball abc123"
    assert {len(p.vertices) for p in obj.data.polygons} == {3}
    assert sorted(image.name for image in bpy.data.images) == [
        "a red ball abc123 ORM", "a red ball abc123 albedo", "a red ball abc123 normal"
    ]  # fmt: skip
    maps = maps_of(obj)
    assert (maps["albedo colourspace"], maps["normal colourspace"], maps["ORM colourspace"]) == (
        "sRGB", "Non-Color", "Non-Color"
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["QUADS", "VOXEL"])
def test_remesh_gives_quads_within_the_budget_with_the_maps_rebaked(fresh_scene, ball_glb, mode):
    fresh_scene.remesh = mode
    phases = []
    obj = import_ball(ball_glb, phases.append)
    # Each blocking phase is named before it runs (the status bar shows it), and nothing is left over: no
    # unused image of the source (Blender 4.2 kept three a remesh), no bake-only material.
    remesher = "with QuadriFlow" if mode == "QUADS" else "(voxel)"
    assert phases == [f"Remeshing to {BUDGET // 2} quads {remesher}…", "Unwrapping UVs…",
                      "Baking map 1 of 3…", "Baking map 2 of 3…", "Baking map 3 of 3…"]
    polygons = obj.data.polygons
    assert {len(p.vertices) for p in polygons} == {4}
    # Two triangles a quad: the triangle count stays the Poly Budget, and the remesher gets close to it.
    assert BUDGET / 2 * 0.7 < len(polygons) <= BUDGET / 2
    assert obj.name == "a red ball abc123" and obj["nfsd_prompt"] == "a red ball"
    assert [o.name for o in bpy.data.objects] == [obj.name]  # the triangle source is gone, with its data
    assert len(bpy.data.images) == 3 and len(bpy.data.materials) == 1
    maps = maps_of(obj)
    albedo, centres = at_face_centres(obj, maps["albedo"])
    error = np.abs(albedo - world_albedo(centres))
    print(f"{mode}: {len(polygons)} quads, re-baked albedo error mean {error.mean():.3f} max {error.max():.3f}")
    assert error.mean() < 0.01 and error.max() < 0.06
    orm, _ = at_face_centres(obj, maps["ORM"])
    assert (orm[:, 0] > 0.9).all() and (orm[:, 1:] > 1 - 1.5 / 255).all()  # a ball occludes nothing; G, B neutral
    normal, _ = at_face_centres(obj, maps["normal"])
    assert (normal[:, 2] > 0.9).all()  # a smooth ball on a smooth remesh: the map stays near flat, never empty

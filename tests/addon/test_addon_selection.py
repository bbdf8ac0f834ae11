"""From selection in headless bpy: a rotated, scaled, off-origin cube → the result sits on the cube's transform,
matches its world bounding box, and the cube is hidden (not deleted)."""

import pytest

bpy = pytest.importorskip("bpy")

from addon_helpers import install_for_tests, pump


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    yield from install_for_tests(tmp_path_factory)


def world_box(obj):
    """(low, high) of the object's vertices in world space."""
    import numpy as np

    points = np.array([tuple(obj.matrix_world @ vertex.co) for vertex in obj.data.vertices])
    return points.min(axis=0), points.max(axis=0)


def generate_from_block(mode: str, steps: int):
    bpy.ops.mesh.primitive_cube_add(location=(2.0, -3.0, 1.0), rotation=(0.3, 0.5, 0.7), scale=(1.5, 0.8, 1.2))
    block = bpy.context.active_object
    block.name = f"Block {mode}"
    props = bpy.context.scene.nfsd
    props.error, props.job_state = "", ""
    props.prompt, props.preset, props.steps, props.seed = "a red ball", "draft", steps, 3
    props.poly_budget, props.texture_size = 1000, "512"
    bpy.context.scene.nfsd_selection.mode = mode
    bpy.context.scene.nfsd_selection.strength = 1.0
    bpy.context.scene.cursor.location = (9.0, 9.0, 9.0)  # the result must not go to the cursor
    assert bpy.ops.nfsd.generate_from_selection() == {"FINISHED"}
    pump(lambda: props.job_state in ("done", "failed", "error", "cancelled"), 300, f"the {mode} job")
    assert props.job_state == "done", props.error
    return block, bpy.context.view_layer.objects.active


@pytest.mark.parametrize("mode", ["SHAPE", "TEXTURE"])
def test_result_lands_on_the_selected_object_and_hides_it(addon, mode):
    import numpy as np

    block, result = generate_from_block(mode, steps=20)
    assert result is not block and result.type == "MESH"
    assert result["nfsd_source_object"] == block.name and result["nfsd_mode"] == mode.lower()
    np.testing.assert_allclose(np.array(result.matrix_world), np.array(block.matrix_world), atol=1e-5)
    (low, high), (block_low, block_high) = world_box(result), world_box(block)
    size = block_high - block_low
    assert np.all(np.abs(low - block_low) <= 0.05 * size) and np.all(np.abs(high - block_high) <= 0.05 * size), (
        low, high, block_low, block_high)
    assert block.hide_get() and block.name in bpy.data.objects  # hidden, not deleted
    if mode == "TEXTURE":  # the block's own corners, exactly
        corners = {tuple(np.round(vertex.co, 4)) for vertex in result.data.vertices}
        assert corners == {tuple(np.round(vertex.co, 4)) for vertex in block.data.vertices}

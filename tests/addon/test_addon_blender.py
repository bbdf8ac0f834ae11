"""The extension in headless bpy: build, validate, install, register, generate against a real local backend."""

import pytest

bpy = pytest.importorskip("bpy")
psutil = pytest.importorskip("psutil")

from addon_helpers import PKG, addon_module, install_for_tests, pump


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    yield from install_for_tests(tmp_path_factory)


def _reset(props):
    props.error = ""
    props.job_state = ""


def test_registers_ui(addon):
    assert hasattr(bpy.types, "NFSD_PT_main")
    assert bpy.types.NFSD_PT_main.bl_category == "NFSD"
    assert hasattr(bpy.ops.nfsd, "generate") and hasattr(bpy.ops.nfsd, "cancel")
    props = bpy.context.scene.nfsd
    assert props.negative_prompt.startswith("unrealistic, blurry")
    props.method = "SDS"
    assert props.guidance_scale == 100.0
    props.method = "NFSD"
    assert props.guidance_scale == 7.5


def test_empty_prompt_is_a_clear_error(addon):
    props = bpy.context.scene.nfsd
    props.prompt = "   "
    with pytest.raises(RuntimeError, match="Type a prompt"):
        bpy.ops.nfsd.generate()
    assert props.error == "Type a prompt first"


def test_missing_python_is_a_clear_error(addon):
    props = bpy.context.scene.nfsd
    props.prompt = "a red ball"
    old, addon.python_path = addon.python_path, "/nonexistent/python"
    try:
        with pytest.raises(RuntimeError, match="Backend Python not found"):
            bpy.ops.nfsd.generate()
    finally:
        addon.python_path = old


def test_wrong_token_shows_error(addon):
    backend = addon_module("backend").BACKEND
    props = bpy.context.scene.nfsd
    _reset(props)
    # a real local server, reached in remote mode with the wrong token
    backend.start(addon.python_path, addon.data_dir, "analytic")
    addon.mode, addon.url, addon.token = "REMOTE", backend.url, "wrong-token"
    try:
        props.prompt = "a red ball"
        assert bpy.ops.nfsd.generate() == {"FINISHED"}
        pump(lambda: props.job_state == "error", 30, "the token error")
        assert "token" in props.error.lower()
    finally:
        addon.mode = "LOCAL"


def _set_small(props, prompt="a red ball"):
    _reset(props)
    props.prompt = prompt
    props.preset = "draft"
    props.steps = 30
    props.poly_budget = 1000
    props.texture_size = "512"
    props.seed = 3


def test_cancel_stops_a_job(addon):
    props = bpy.context.scene.nfsd
    _set_small(props)
    props.steps = 5000
    assert bpy.ops.nfsd.generate() == {"FINISHED"}
    pump(lambda: props.job_id != "", 120, "the job to be submitted")
    assert bpy.ops.nfsd.cancel() == {"FINISHED"}
    pump(lambda: props.job_state in ("cancelled", "failed", "error"), 120, "the cancel")
    assert props.job_state == "cancelled", props.error
    assert props.history[-1].state == "cancelled"


def test_generate_imports_at_cursor_and_survives_reload(addon, tmp_path):
    props = bpy.context.scene.nfsd
    _set_small(props)
    bpy.context.scene.cursor.location = (1.0, 2.0, 3.0)
    assert bpy.ops.nfsd.generate() == {"FINISHED"}
    pump(lambda: props.job_state in ("done", "failed", "error", "cancelled"), 300, "the red ball")
    assert props.job_state == "done", props.error  # a backend that cannot finish is a failure, not a skip
    ob = bpy.context.view_layer.objects.active
    assert ob is not None and ob.name.startswith("a red ball")
    assert ob["nfsd_prompt"] == "a red ball" and ob["nfsd_seed"] == 3 and ob["nfsd_steps"] == 30
    assert ob["nfsd_job_id"] == props.job_id
    assert tuple(round(v, 4) for v in ob.location) == (1.0, 2.0, 3.0)
    assert "NFSD" in [c.name for c in ob.users_collection]
    images = [n.image for m in ob.data.materials if m and m.node_tree for n in m.node_tree.nodes
              if n.type == "TEX_IMAGE" and n.image]
    assert images, "imported mesh has no texture"
    bpy.ops.file.pack_all()
    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    ob2 = next(o for o in bpy.data.objects if o.get("nfsd_prompt"))
    assert ob2["nfsd_job_id"]
    imgs = [n.image for m in ob2.data.materials if m for n in m.node_tree.nodes if n.type == "TEX_IMAGE" and n.image]
    assert imgs and imgs[0].packed_file is not None


def test_edit_turns_the_selected_ball_into_a_blue_cube_beside_it(addon):
    """Edit on an imported object: a new object beside it, with its lineage; the source stays as it was."""
    import numpy as np

    props = bpy.context.scene.nfsd
    _set_small(props)
    bpy.context.scene.cursor.location = (0.0, 0.0, 0.0)
    assert bpy.ops.nfsd.generate() == {"FINISHED"}
    pump(lambda: props.job_state in ("done", "failed", "error", "cancelled"), 300, "the red ball")
    assert props.job_state == "done", props.error
    ball = bpy.context.view_layer.objects.active
    ball.location = (-2.0, 1.0, 0.5)
    bpy.context.view_layer.update()
    before = np.array(ball.matrix_world)
    with pytest.raises(RuntimeError, match="type what it should become"):
        bpy.ops.nfsd.edit()  # the prompt is still the ball's own
    props.prompt, props.steps = "a blue cube", 10
    assert bpy.ops.nfsd.edit() == {"FINISHED"}
    pump(lambda: props.job_state in ("done", "failed", "error", "cancelled"), 300, "the edit")
    assert props.job_state == "done", props.error
    edited = bpy.context.view_layer.objects.active
    assert edited is not ball and edited["nfsd_prompt"] == "a blue cube"
    assert edited["nfsd_edit_of"] == ball["nfsd_job_id"] and edited["nfsd_source_prompt"] == "a red ball"
    assert edited["nfsd_edited_from"] == ball.name and edited["nfsd_steps"] == 10
    assert edited.location.x == pytest.approx(-2.0 + 1.5 * max(ball.dimensions))
    assert tuple(edited.location)[1:] == pytest.approx((1.0, 0.5))
    np.testing.assert_allclose(np.array(ball.matrix_world), before)  # the source stays where it was, shown
    assert not ball.hide_get()
    assert props.history[-1].edit_of == ball["nfsd_job_id"] and props.history[-1].place_beside == ball.name


def test_unregister_stops_backend(addon):
    backend = addon_module("backend").BACKEND
    if not backend.running:
        backend.start(addon.python_path, addon.data_dir, "analytic")
    pid = backend.proc.pid
    assert psutil.pid_exists(pid)
    bpy.ops.preferences.addon_disable(module=PKG)
    assert not hasattr(bpy.types, "NFSD_PT_main")
    assert not backend.running
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

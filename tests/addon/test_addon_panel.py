"""What the panel shows, in headless bpy from the built zip: progress as named phases, the history, the imported
object's properties and names, and every draw() in every state."""

import threading

import pytest

bpy = pytest.importorskip("bpy")

import ui_recorder
from addon_helpers import Busy, addon_module, pump, resolved


# --- 7. progress as named phases ----------------------------------------------------------------------------


def _progress_text():
    return next(e[1] for e in ui_recorder.draw(bpy.types.NFSD_PT_main) if e[0] == "progress")


def test_7_progress_names_each_phase(props):
    session, events, queued = addon_module("session"), addon_module("events"), addon_module("jobs").EVENTS
    request = addon_module("contract").job_request("a red ball", seed=1, prior="analytic")
    status = {"step": 0, "total": 400, "eta_s": None, "queue_position": None, "has_preview": False,
              "request": resolved(steps=400)}
    steps = [
        (events.Phase("starting backend"), "starting backend…"),
        (events.Submitted("p1", request), "queued"),
        (events.Status("p1", {**status, "state": "queued", "queue_position": 2}), "queued (3 ahead)"),
        (events.Taesd(True), None),
        (events.Status("p1", {**status, "state": "running"}), "downloading model (9.8 MB), then loading…"),
        (events.Status("p1", {**status, "state": "running", "step": 100, "eta_s": 1858.2}),
         "training 100/400 · ETA 30:58"),
        (events.Reconnecting("p1", 2, "refused"), "reconnecting to the server (try 2)…"),
        (events.Status("p1", {**status, "state": "exporting", "step": 400}), "exporting mesh and texture · 0:00"),
        (events.Phase("downloading result"), "downloading result…"),
    ]
    with Busy():
        props.job_state = "starting"
        for event, text in steps:
            queued.put(event)
            session.poll_timer()
            if text is not None:
                assert _progress_text() == text
    assert props.history[0].state == "exporting"


def _job_fields(item) -> dict:
    """A history entry's job fields (its float32 floats rounded back to what was stored)."""
    values = {name: getattr(item, name) for name in addon_module("contract").FIELD_NAMES}
    return {name: round(value, 6) if isinstance(value, float) else value for name, value in values.items()}


def test_7_history_holds_the_job_as_the_server_runs_it_and_reruns_it(props, prefs, fake_server):
    state = addon_module("state")
    session, events, queued = addon_module("session"), addon_module("events"), addon_module("jobs").EVENTS
    contract = addon_module("contract")
    request = contract.job_request("a red ball", seed=5, prior="analytic", method="sds")
    queued.put(events.Submitted("h1", request))
    session.poll_timer()
    item = props.history[0]
    # the defaults the server resolves are not known yet: zero, as the form writes "the default"
    assert _job_fields(item) == {**request, "guidance_scale": 0.0, "steps": 0, "model": "", "init_mesh": "",
                                 "shape_strength": 0.0, "edit_of": "", "source_prompt": "", "edit_strength": 0.0}
    echo = resolved(seed=5, method="sds", steps=None)
    queued.put(events.Status("h1", {"state": "done", "step": 0, "total": echo["steps"], "request": echo}))
    session.poll_timer()
    assert (item.guidance_scale, item.steps, item.encoder) == (100.0, contract.PRESET_STEPS["standard"], "pooling")
    assert _job_fields(item) == {**echo, "model": "", "init_mesh": "", "edit_of": "", "source_prompt": ""}
    # Re-run: the job as it ran, the preferences' precision and encoder, and never the mesh of a selection job
    item.init_mesh, item.keep_geometry = "mesh-1", True
    props.history_index = 0
    assert bpy.ops.nfsd.history_rerun() == {"FINISHED"}
    pump(lambda: not state.busy(), 20, "the re-run")
    assert fake_server.posted == [{**echo, "dtype": prefs.dtype, "encoder": contract.DEFAULT_ENCODER,
                                   "shape_strength": None}]


def test_7_progress_counts_a_taesd_download(props):
    session, events, queued = addon_module("session"), addon_module("events"), addon_module("jobs").EVENTS
    status = {"state": "running", "step": 0, "total": 400, "eta_s": None, "queue_position": None,
              "has_preview": False, "request": resolved(steps=400)}
    with Busy():
        for event in (events.Taesd(True), events.Status("p1", status)):
            queued.put(event)
        session.poll_timer()
        assert _progress_text() == "downloading model (9.8 MB), then loading…"
        queued.put(events.Taesd(False))
        session.poll_timer()
        assert _progress_text() == "loading model…"
        props.job_download_taesd = True
    finished = threading.Thread(target=lambda: None)
    finished.stop_event = threading.Event()
    session.start_job(bpy.context, [], worker=finished)
    assert not props.job_download_taesd  # a new job starts knowing of no download


# --- 8. metadata and names ------------------------------------------------------------------------------------


def _server_glb(path, job_seed):
    """A small GLB written by the server's own exporter code, with the extras a real job writes."""
    import numpy as np
    from nfsd_server.export.glb import json_safe, textured_mesh, write_glb
    from nfsd_contract import resolve_spec

    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    uvs = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float64)
    image = np.full((8, 8, 3), 0.5)
    settings = resolve_spec("a red ball", prior="analytic", seed=job_seed, steps=30, preset="draft",
                            poly_budget=1000, texture_size=512)
    mesh = textured_mesh(vertices, vertices.copy(), faces, uvs, image)
    write_glb(mesh, path, json_safe({**settings.metadata(), "software": "nfsd_server test"}))  # as train.py does


def test_8_one_set_of_properties_and_names_from_prompt_and_job(props, tmp_path):
    session, events = addon_module("session"), addon_module("events")
    names = []
    for job_id, seed in (("aaa111", 3), ("bbb222", 4)):
        glb = tmp_path / f"{job_id}.glb"
        _server_glb(glb, seed)
        item = props.history.add()
        item.job_id, item.prompt, item.seed, item.method, item.texture_size = job_id, "a red ball", seed, "nfsd", 512
        addon_module("jobs").EVENTS.put(events.Done(job_id, str(glb), {}))
        session.poll_timer()
        assert props.job_state == "done", props.error_details
        ob = bpy.context.view_layer.objects.active
        names.append(ob.name)
        keys = set(ob.keys())
        assert keys == {"nfsd_" + k for k in ("prompt", "negative_prompt", "method", "guidance_scale", "seed", "steps",
                                               "preset", "poly_budget", "texture_size", "prior", "dtype",
                                               "encoder", "janus_guard", "software", "job_id")}, keys
        assert (ob["nfsd_method"], ob["nfsd_poly_budget"], ob["nfsd_texture_size"]) == ("nfsd", 1000, 512)
        assert (ob["nfsd_seed"], ob["nfsd_job_id"], ob["nfsd_prior"]) == (seed, job_id, "analytic")
        mat = ob.data.materials[0]
        assert mat.name == f"a red ball {job_id} material"
        imgs = [n.image.name for n in mat.node_tree.nodes if n.type == "TEX_IMAGE" and n.image]
        assert imgs == [f"a red ball {job_id} albedo"]
        assert ob.data.name == ob.name == f"a red ball {job_id}"
    assert names == ["a red ball aaa111", "a red ball bbb222"]


# --- 9. small UI ----------------------------------------------------------------------------------------------


def test_9_state_is_obvious(props):
    props.error = "The backend did not start: ModuleNotFoundError: No module named 'nfsd_server' (the backend " \
                  "Python needs the nfsd_server package (Python 3.11+); see the console)"
    log = ui_recorder.draw(bpy.types.NFSD_PT_main)
    icons = [e[2] for e in log if e[0] == "label" and e[1] and e[1] in props.error]
    assert len(icons) > 2 and icons[0] == "ERROR" and set(icons[1:]) == {"BLANK1"}
    props.history.add().prompt = "a red ball"
    props.history_index = 0
    with Busy():
        log = ui_recorder.draw(bpy.types.NFSD_PT_main)
        form = {e[1]: e[2] for e in log if e[0] == "prop"}
        assert form["prompt"] is False and form["seed"] is False  # greyed: editing would change nothing
        assert any(e[:2] == ("operator", "nfsd.cancel") for e in log)
        assert not any(e[:2] == ("operator", "nfsd.generate") for e in log)
        assert not bpy.ops.nfsd.history_rerun.poll()
        with pytest.raises(RuntimeError, match="Wait for the running generation, or cancel it"):
            bpy.ops.nfsd.history_rerun(new_seed=True)
    assert bpy.ops.nfsd.history_rerun.poll()


# --- every draw in every state --------------------------------------------------------------------------------


STATES = ["", "starting", "queued", "running", "exporting", "done", "failed", "cancelled", "error", "interrupted"]


@pytest.mark.parametrize("busy", [False, True])
@pytest.mark.parametrize("state", STATES)
def test_every_draw_runs_in_every_state(props, prefs, state, busy, tmp_path):
    props.job_state, props.job_step, props.job_total, props.job_eta = state, 3, 30, 65.0
    props.job_phase = "importing" if state == "done" else ""
    props.job_reconnect = 1 if state == "running" else 0
    props.error = "Something went wrong" if state in ("failed", "error", "interrupted") else ""
    props.error_details = "Traceback…\n" + props.error if props.error else ""
    props.prior, props.model = ("stable-diffusion", "org/big") if state == "queued" else ("", "")
    item = props.history.add()
    item.prompt, item.state, item.error = "a red ball", state, props.error
    preview = tmp_path / "p.png"
    image = bpy.data.images.new("thumb", 4, 4)
    image.filepath_raw, image.file_format = str(preview), "PNG"
    image.save()
    item.preview_path = str(preview) if state == "running" else ""
    addon_module("state").current.models = [] if state == "" else [
        {"id": "org/big", "label": "org/big", "prior": "stable-diffusion", "model": "org/big", "cached": False,
         "download_bytes": 5_160_000_000}]
    for mode in ("LOCAL", "REMOTE"):
        prefs.mode = mode
        with Busy() if busy else _nothing():
            main = ui_recorder.draw(bpy.types.NFSD_PT_main)
            ui_recorder.draw(bpy.types.NFSD_PT_history)
            ui_recorder.draw(bpy.types.NFSD_PT_selection)
            ui_recorder.draw(bpy.types.NFSD_MT_models)
            ui_recorder.draw(type(prefs), target=prefs)
            ui_recorder.draw_list_item(bpy.types.NFSD_UL_history, item, props)
        assert any(e[0] == "progress" for e in main) == busy
        assert any(e[1] == ("nfsd.cancel" if busy else "nfsd.generate") for e in main if e[0] == "operator")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- also expected: status line, output folder, history thumbnails, delete and clear -------------------------


def test_status_line_says_where_the_backend_runs(props, prefs, fake_server):
    addon_module("jobs").EVENTS.put(addon_module("events").Backend({"version": "9.9", "device": "cuda:0"}))
    addon_module("session").poll_timer()
    log = ui_recorder.draw(bpy.types.NFSD_PT_main)
    assert ("label", f"Backend (remote {fake_server.url}): ready on CUDA:0, nfsd 9.9", "NETWORK_DRIVE", True) in log
    assert any(e[:2] == ("operator", "nfsd.open_output") for e in log)
    prefs.mode = "LOCAL"
    assert ui_recorder.draw(bpy.types.NFSD_PT_main)[0][1] == "Backend: stopped (starts on Generate)"


def test_history_thumbnail_delete_and_clear(props, tmp_path):
    state = addon_module("state")
    session = addon_module("session")
    png = tmp_path / "h1_preview.png"
    image = bpy.data.images.new("h1 preview", 8, 8)
    image.filepath_raw, image.file_format = str(png), "PNG"
    image.save()
    for job_id in ("h1", "h2", "h3"):
        item = props.history.add()
        item.job_id, item.prompt, item.state = job_id, f"prompt {job_id}", "done"
    addon_module("jobs").EVENTS.put(addon_module("events").Preview("h1", str(png)))
    session.poll_timer()
    first = ui_recorder.draw_list_item(bpy.types.NFSD_UL_history, props.history[0], props)
    assert first[0][:2] == ("label", "prompt h1")
    assert props.history[0].preview_path == str(png)
    # drawing loaded the thumbnail (headless Blender has no icons, so its icon_id is 0 and a mesh icon shows)
    assert tuple(state.current.thumbs[str(png)].image_size) == (8, 8)
    props.history_index = 1
    assert bpy.ops.nfsd.history_delete() == {"FINISHED"}
    assert [item.job_id for item in props.history] == ["h1", "h3"]
    props.history[0].glb_path = str(tmp_path / "missing.glb")
    props.history[0].state = "cancelled"  # a done job's missing file is fetched again (test_addon_fixes_blender)
    props.history_index = 0
    with pytest.raises(RuntimeError, match="No downloaded result for this entry"):
        bpy.ops.nfsd.history_reimport()
    assert bpy.ops.nfsd.history_clear() == {"FINISHED"}
    assert len(props.history) == 0

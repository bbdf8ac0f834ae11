"""Setup-trial fixes as the artist sees them, in headless bpy from the built zip: a reopened file follows its job,
File › New keeps following, Copy Details copies what is on screen, the status line authenticates, variations
stand side by side, a broken download is fetched again, Euler rotation, one-line errors wrapped."""

import pytest

bpy = pytest.importorskip("bpy")

import ui_recorder
from addon_helpers import Busy, addon_module, executable, pump
from test_addon_panel import _server_glb


def _saved_and_reopened(props, job_id, tmp_path):
    item = props.history.add()
    item.job_id, item.prompt, item.state = job_id, "a red ball", "running"
    props.job_id, props.job_state = job_id, "running"
    blend = tmp_path / f"{job_id}.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    return bpy.context.scene.nfsd


def test_a_reopened_file_starts_the_backend_follows_its_job_and_can_cancel_it(props, prefs, fake_server, tmp_path):
    # The local backend as it restarts: it resumes the job it had (here: the fake server, which still has it).
    state = addon_module("state")
    port = fake_server.url.rsplit(":", 1)[1]
    prefs.mode = "LOCAL"
    prefs.python_path = str(executable(tmp_path / "python", f"""#!/bin/sh
echo '{{"port": {port}, "version": "fake"}}'
cat > /dev/null
"""))
    fake_server.states["r1"] = "running"
    props = _saved_and_reopened(props, "r1", tmp_path)
    pump(lambda: props.job_state == "running" and state.busy(), 20, "the reopened job to be followed")
    assert props.history[0].state == "running" and not props.error
    assert bpy.ops.nfsd.cancel() == {"FINISHED"}
    pump(lambda: not state.busy(), 20, "the cancel")
    assert props.job_state == "cancelled" and props.history[0].state == "cancelled"
    assert fake_server.states["r1"] == "cancelled"


def test_file_new_keeps_following_the_running_job(props, fake_server):
    state = addon_module("state")
    fake_server.states["n1"] = "running"
    session = addon_module("session")
    session.start_job(bpy.context, [], resume=["n1"])
    pump(lambda: props.job_state == "running", 20, "the job to run")
    bpy.ops.wm.read_homefile(use_empty=True)
    new = bpy.context.scene.nfsd
    assert state.busy()
    assert [(item.job_id, item.state) for item in new.history] == [("n1", "queued")]
    fake_server.states["n1"] = "cancelled"
    pump(lambda: new.job_state == "cancelled", 20, "the job's end in the new file")
    assert new.history[0].state == "cancelled"


def test_copy_details_copies_the_error_on_screen(props, tmp_path):
    addon_module("state").set_error(props, "old problem", "Traceback\nold problem")
    not_python = executable(tmp_path / "python", "#!/bin/sh\necho False\n")
    with pytest.raises(RuntimeError, match="has no nfsd backend installed"):
        bpy.ops.nfsd.pick_python(filepath=str(not_python))
    assert props.error.startswith("python has no nfsd backend installed")
    # what Copy Details copies (headless Blender has no clipboard to read back)
    assert props.error_details == props.error


def test_status_line_is_not_ready_with_a_wrong_token_or_after_an_outage(props, prefs, fake_server):
    handlers = addon_module("handlers")
    session, events, queued = addon_module("session"), addon_module("events"), addon_module("jobs").EVENTS
    queued.put(events.Backend({"version": "9.9", "device": "cpu", "authenticated": False}))
    session.poll_timer()
    line = handlers.server_status_text()
    assert "ready" not in line and "refused the token" in line
    queued.put(events.Backend({"version": "9.9", "device": "cpu", "authenticated": True}))
    session.poll_timer()
    assert "ready on CPU" in handlers.server_status_text()
    queued.put(events.Error("j1", "Lost contact with the server: refused"))
    session.poll_timer()
    assert handlers.server_status_text() == f"Backend (remote {fake_server.url}): Lost contact with the server: refused"


class _Batch(Busy):
    """Busy, with the job ids of a batch of variations (what a JobWorker holds)."""

    def __init__(self, job_ids):
        super().__init__()
        self.thread.job_ids = job_ids


def test_variations_stand_side_by_side_and_are_counted(props, tmp_path):
    session, events, queued = addon_module("session"), addon_module("events"), addon_module("jobs").EVENTS
    bpy.context.scene.cursor.location = (0.0, 0.0, 0.0)
    placed = []
    with _Batch(["v1", "v2", "v3"]):
        props.job_count = 3
        for seed, job_id in enumerate(("v1", "v2", "v3")):
            item = props.history.add()
            item.job_id, item.prompt, item.variation = job_id, "a red ball", seed  # as Submitted records it
            queued.put(events.Status(job_id, {"state": "running", "step": 5, "total": 10,
                                              "request": addon_module("contract").job_request("a red ball", seed=seed, prior="analytic") | {"steps": 10, "seed": seed}}))
            session.poll_timer()
            if job_id == "v2":
                assert ui_recorder.texts(ui_recorder.draw(bpy.types.NFSD_PT_main)).count("2 of 3 · training 5/10") == 1
            glb = tmp_path / f"{job_id}.glb"
            _server_glb(glb, seed)
            queued.put(events.Done(job_id, str(glb), {}))
            session.poll_timer()
            ob = bpy.context.view_layer.objects.active
            assert ob.rotation_mode == "XYZ"
            placed.append((ob.location.x, max(ob.dimensions)))
    size = placed[0][1]
    assert [x for x, _ in placed] == pytest.approx([0.0, 1.5 * size, 3.0 * size])


def test_a_broken_download_stays_done_and_re_import_fetches_it_again(props, fake_server, tmp_path):
    state = addon_module("state")
    session, events, queued = addon_module("session"), addon_module("events"), addon_module("jobs").EVENTS
    bad = tmp_path / "b1.glb"
    bad.write_bytes(b"glTF broken" * 10)
    item = props.history.add()
    item.job_id, item.prompt, item.state = "b1", "a red ball", "running"
    queued.put(events.Done("b1", str(bad), {}))
    session.poll_timer()
    assert item.state == "done" and props.job_state == "done"
    assert props.error.startswith("Import failed: ") and props.error.endswith("; Re-import downloads it again")
    assert not bad.exists() and item.glb_path == ""
    good = tmp_path / "good.glb"
    _server_glb(good, 7)
    fake_server.states["b1"] = "done"
    fake_server.glbs["b1"] = [good.read_bytes()]
    props.history_index = 0
    objects = len(bpy.data.objects)
    assert bpy.ops.nfsd.history_reimport() == {"FINISHED"}
    pump(lambda: not state.busy() and props.job_phase == "", 20, "the result fetched again")
    assert len(bpy.data.objects) == objects + 1 and not item.error, props.error
    assert item.state == "done" and bpy.context.view_layer.objects.active["nfsd_job_id"] == "b1"


def test_the_servers_done_is_a_fetch_until_the_result_is_imported(props, tmp_path):
    """The server says done before the GLB is here: the job reads "fetching" (not done) until Done imports it,
    however the two arrive across timer ticks; an ended job does not go back."""
    session, events, queued = addon_module("session"), addon_module("events"), addon_module("jobs").EVENTS
    state = addon_module("state")
    request = addon_module("contract").job_request("a red ball", prior="analytic")
    queued.put(events.Submitted("f1", request))
    session.poll_timer()
    item = props.history[0]
    assert (props.job_state, item.state) == ("queued", "queued")
    objects = len(bpy.data.objects)
    queued.put(events.Status("f1", {"state": "done", "step": 30, "total": 30, "request": request}))
    session.poll_timer()
    assert (props.job_state, item.state) == ("fetching", "fetching") and len(bpy.data.objects) == objects
    assert addon_module("progress").phase(props.job_state)[0] == "downloading result…"
    glb = tmp_path / "f1.glb"
    _server_glb(glb, 0)
    queued.put(events.Done("f1", str(glb), {}))
    session.poll_timer()
    assert (props.job_state, item.state) == ("done", "done") and len(bpy.data.objects) == objects + 1
    assert not state.enter(props, item, "running") and item.state == "done"  # a late status changes nothing
    with pytest.raises(ValueError, match="unknown job state 'finished'"):
        state.enter(props, item, "finished")


def test_a_result_lands_where_its_own_job_said_after_another_job_started(props, tmp_path):
    """Placement is the job's record: a selection job's result that arrives while another worker runs (or after
    the file was reopened) still goes onto its own object, and a cursor job's stays at the cursor."""
    session, events, queued = addon_module("session"), addon_module("events"), addon_module("jobs").EVENTS
    import numpy as np

    bpy.ops.mesh.primitive_cube_add(location=(2.0, -3.0, 1.0), rotation=(0.3, 0.5, 0.7), scale=(1.5, 0.8, 1.2))
    block = bpy.context.active_object
    block.name = "Block A"
    bpy.context.scene.cursor.location = (9.0, 9.0, 9.0)
    request = addon_module("contract").job_request("a red ball", prior="analytic")
    queued.put(events.Submitted("s1", request, 0, events.Placement(on="Block A")))
    queued.put(events.Submitted("c1", request))
    session.poll_timer()
    with Busy():  # another worker is the current one now
        for job_id in ("s1", "c1"):
            glb = tmp_path / f"{job_id}.glb"
            _server_glb(glb, 0)
            queued.put(events.Done(job_id, str(glb), {}))
            session.poll_timer()
            result = bpy.context.view_layer.objects.active
            assert result["nfsd_job_id"] == job_id
            if job_id == "s1":
                assert result["nfsd_source_object"] == "Block A" and result["nfsd_mode"] == "shape"
                np.testing.assert_allclose(np.array(result.matrix_world), np.array(block.matrix_world), atol=1e-5)
                assert block.hide_get()
            else:
                assert "nfsd_source_object" not in result
                assert tuple(result.location) == pytest.approx((9.0, 9.0, 9.0))


def test_a_long_prompt_is_refused_in_plain_words(props):
    props.prompt = "a red ball " * 100
    with pytest.raises(RuntimeError, match="The prompt is 1100 characters long; shorten it to 1000 or fewer"):
        bpy.ops.nfsd.generate()


def test_a_long_history_error_is_wrapped(props):
    item = props.history.add()
    item.prompt, item.state = "a red ball", "failed"
    item.error = "model 'org/big' is not in this server's model cache and the Hugging Face hub cannot be reached"
    props.history_index = 0
    lines = [e[1] for e in ui_recorder.draw(bpy.types.NFSD_PT_history) if e[0] == "label"]
    assert len(lines) > 1 and " ".join(lines) == item.error and max(map(len, lines)) <= 48


def test_errors_about_another_backend_or_another_model_do_not_stay(props, prefs, tmp_path):
    """An error says what went wrong with the last thing tried: switching backend, picking another model or
    reopening the file makes it old news (History keeps each job's own)."""
    handlers = addon_module("handlers")
    state = addon_module("state")
    dead = "http://127.0.0.1:1"
    props.prompt = "a red ball"
    bpy.ops.nfsd.set_model(prior="analytic", model="")

    def fail_on_a_dead_url():
        prefs.mode, prefs.url = "REMOTE", dead
        assert bpy.ops.nfsd.generate() == {"FINISHED"}
        pump(lambda: not state.busy() and bpy.context.scene.nfsd.error, 20, "the unreachable server's error")
        assert "Cannot reach the server at http://127.0.0.1:1" in bpy.context.scene.nfsd.error

    fail_on_a_dead_url()
    line = handlers.server_status_text()
    assert line.count(dead) == 1 and "start the backend" not in line and "is running there" in line
    prefs.mode = "LOCAL"
    assert props.error == "" and dead not in handlers.server_status_text()

    fail_on_a_dead_url()
    path = str(tmp_path / "scene.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.open_mainfile(filepath=path)
    reopened = bpy.context.scene.nfsd
    assert reopened.error == "" and reopened.error_details == ""

    state.set_error(reopened, "org/big is not downloaded yet: press Download above Generate")
    assert bpy.ops.nfsd.set_model(prior="analytic", model="") == {"FINISHED"}
    assert reopened.error == ""


def test_edit_from_history_refuses_what_it_cannot_edit_in_plain_words(props):
    props.prompt = "a blue cube"
    item = props.history.add()
    item.job_id, item.prompt, item.state = "h1", "a red ball", "failed"
    props.history_index = 0
    with pytest.raises(RuntimeError, match="Only a finished generation can be edited"):
        bpy.ops.nfsd.edit(from_history=True)
    item.state, item.init_mesh = "done", "mesh-1"
    with pytest.raises(RuntimeError, match="use From Selection again"):
        bpy.ops.nfsd.edit(from_history=True)
    assert props.error.startswith("This result was made from a selected mesh")
    assert not addon_module("state").busy()  # nothing was submitted

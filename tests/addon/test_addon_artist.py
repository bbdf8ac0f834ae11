"""The add-on as an artist meets it, in headless bpy from the built zip: one test per dead end, in the order an
artist hits them (what the panel shows in every state: test_addon_panel.py)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

bpy = pytest.importorskip("bpy")
psutil = pytest.importorskip("psutil")

import ui_recorder
from addon_helpers import FROM_THE_ZIP_ALONE, ROOT, addon_module, executable, pump


# --- 1. first run from the zip ----------------------------------------------------------------------------

FIRST_RUN = FROM_THE_ZIP_ALONE + textwrap.dedent("""
    preferences = sys.modules[pkg + ".preferences"]
    prefs.data_dir = sys.argv[2]
    props = bpy.context.scene.nfsd
    bpy.ops.nfsd.set_model(prior="analytic", model="")
    props.prompt, props.preset, props.steps, props.poly_budget, props.texture_size = "a red ball", "draft", 400, 1000, "512"
    assert bpy.ops.nfsd.generate() == {"FINISHED"}
    seen, deadline = [], time.monotonic() + 240
    while time.monotonic() < deadline and not (props.job_state == "running" and props.job_step > 0):
        session.poll_timer()
        seen.append(props.job_phase or props.job_state)
        if props.job_state in ("error", "failed"):
            break
        time.sleep(0.1)
    bpy.ops.nfsd.cancel()
    while time.monotonic() < deadline and state.busy():
        session.poll_timer()
        time.sleep(0.1)
    session.poll_timer()
    print(json.dumps({"python": preferences.python_path(prefs), "seen": sorted(set(seen)), "state": props.job_state,
                      "error": props.error, "history": [h.state for h in props.history]}))
    bpy.ops.preferences.addon_disable(module=pkg)
""")


def test_1_first_generate_from_an_installed_zip_finds_the_backend(zip_path, tmp_path):
    # The backend as an artist installs it: a venv whose `nfsd` command is on PATH.
    venv_python = executable(tmp_path / "venv" / "bin" / "python", (
        f"#!/bin/sh\nPYTHONPATH={ROOT / 'server'}:{ROOT} exec {sys.executable} \"$@\"\n"))
    executable(tmp_path / "venv" / "bin" / "nfsd", f"#!{venv_python}\nfrom nfsd_server.cli import main\nmain()\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PATH=f"{tmp_path / 'venv' / 'bin'}:/usr/bin:/bin", HOME=str(tmp_path / "home"),
               BLENDER_USER_RESOURCES=str(tmp_path / "blender"))
    (tmp_path / "home").mkdir()
    res = subprocess.run([sys.executable, "-c", FIRST_RUN, str(zip_path), str(tmp_path / "data")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=400, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["python"] == str(venv_python)
    assert "starting backend" in out["seen"], out
    assert out["state"] == "cancelled" and out["history"] == ["cancelled"], out


def test_1_no_backend_found_offers_pick_and_copy(props, prefs, tmp_path, monkeypatch):
    backend = addon_module("backend")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(backend, "DEFAULT_VENV", tmp_path / "nowhere")
    prefs.python_path = ""
    props.prompt = "a red ball"
    with pytest.raises(RuntimeError, match="No backend found: press Install Backend, or pick its Python"):
        bpy.ops.nfsd.generate()
    log = ui_recorder.draw(bpy.types.NFSD_PT_main)
    assert ("label", "No nfsd backend found on this computer", "INFO", True) in log
    shown = [entry[1] for entry in log if entry[0] == "operator"]
    assert "nfsd.pick_python" in shown and "nfsd.install_backend" in shown  # the install itself: test_addon_install
    not_python = executable(tmp_path / "python", "#!/bin/sh\necho False\n")
    with pytest.raises(RuntimeError, match="has no nfsd backend installed"):
        bpy.ops.nfsd.pick_python(filepath=str(not_python))
    assert prefs.python_path == ""
    assert bpy.ops.nfsd.pick_python(filepath=sys.executable) == {"FINISHED"}
    assert prefs.python_path == sys.executable
    assert not any(e[1] == "No nfsd backend found on this computer" for e in ui_recorder.draw(bpy.types.NFSD_PT_main))


# --- 3. a scene saved mid-job -----------------------------------------------------------------------------


def _saved_mid_job(props, job_id, tmp_path):
    props.prompt = "a red ball"
    item = props.history.add()
    item.job_id, item.prompt, item.state = job_id, "a red ball", "running"
    props.job_id, props.job_state, props.job_step, props.job_total = job_id, "running", 12, 30
    blend = tmp_path / f"{job_id}.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    return bpy.context.scene.nfsd


def test_3_saved_mid_job_with_the_backend_gone_reopens_interrupted(props, prefs, tmp_path):
    prefs.python_path = str(tmp_path / "uninstalled" / "python")  # no backend to restart and follow it with
    props = _saved_mid_job(props, "abc123", tmp_path)
    assert props.job_state == "interrupted"
    assert props.error == "The backend that ran this job has stopped (Blender was closed); press Generate to start again"
    assert props.history[0].state == "interrupted"
    assert bpy.ops.nfsd.generate.poll()
    log = ui_recorder.draw(bpy.types.NFSD_PT_main)
    assert any(e[:2] == ("operator", "nfsd.generate") for e in log)


def test_3_saved_mid_job_follows_the_job_if_the_server_still_has_it(props, fake_server, tmp_path):
    fake_server.states["j7"] = "cancelled"
    props = _saved_mid_job(props, "j7", tmp_path)
    pump(lambda: props.job_state == "cancelled", 20, "the resumed job's end")
    assert props.history[0].state == "cancelled"
    props = _saved_mid_job(bpy.context.scene.nfsd, "gone1", tmp_path)
    pump(lambda: props.job_state == "interrupted", 20, "the forgotten job")
    assert props.error == "The server no longer has this job; press Generate to start again"


# --- 5. an import that fails ------------------------------------------------------------------------------


def test_5_import_failure_is_one_line_in_history_and_nothing_left(props, tmp_path):
    if bpy.data.collections.get("NFSD") is not None:
        bpy.data.collections.remove(bpy.data.collections["NFSD"])
    bad = tmp_path / "bad.glb"
    bad.write_bytes(b"glTF this is not a binary glTF at all" * 10)
    item = props.history.add()
    item.job_id, item.prompt, item.state = "f00", "a red ball", "running"
    objects = len(bpy.data.objects)
    addon_module("jobs").EVENTS.put(addon_module("events").Done("f00", str(bad), {}))
    addon_module("session").poll_timer()
    assert props.job_state == "done" and item.state == "done"  # the job did finish: Re-import fetches it again
    assert props.error.startswith("Import failed: ") and "\n" not in props.error
    assert "Traceback" in props.error_details and props.error_details.count("\n") > 3
    assert len(bpy.data.objects) == objects and bpy.data.collections.get("NFSD") is None
    log = ui_recorder.draw(bpy.types.NFSD_PT_main)
    assert any(e[:2] == ("operator", "nfsd.copy_error") for e in log)
    assert bpy.ops.nfsd.copy_error() == {"FINISHED"}


# --- 6. Check Server with the backend stopped ---------------------------------------------------------------


def test_6_check_server_timer_stops(props, prefs):
    state = addon_module("state")
    session = addon_module("session")
    for _ in range(20):  # the race needed the worker to answer before the flag was set: try it many times
        assert bpy.ops.nfsd.check_health() == {"FINISHED"}
        for _ in range(100):
            if session.poll_timer() is None:
                break
            state.current.info.join(1)
        else:
            raise AssertionError("the timer kept running after Check Server answered")
    assert prefs.status == "Backend: stopped (starts on Generate)"


# --- 4. one backend per session ----------------------------------------------------------------------------


def test_4_generate_while_start_backend_boots_spawns_one_backend(props, prefs, tmp_path):
    state = addon_module("state")
    backend = addon_module("backend").BACKEND
    spawns = tmp_path / "spawns"
    prefs.python_path = str(executable(tmp_path / "python", f"""#!/bin/sh
echo $$ >> {spawns}
sleep 1
echo '{{"port": 1, "version": "fake"}}'
cat > /dev/null
"""))
    props.prompt = "a red ball"
    assert bpy.ops.nfsd.start_backend() == {"FINISHED"}
    assert bpy.ops.nfsd.generate() == {"FINISHED"}
    pump(lambda: not state.busy() and not state.current.info.is_alive(), 30, "start and generate to finish")
    pids = [int(line) for line in spawns.read_text().split()]
    assert len(pids) == 1 and backend.running
    assert props.job_state == "error" and "Cannot reach the server at http://127.0.0.1:1" in props.error
    bpy.ops.nfsd.stop_backend()
    assert not psutil.pid_exists(pids[0]) or psutil.Process(pids[0]).status() == psutil.STATUS_ZOMBIE


# --- 2. models ------------------------------------------------------------------------------------------------


def _before_generate(log):
    """The labels between the form and the Generate button."""
    end = next(i for i, e in enumerate(log) if e[:2] == ("operator", "nfsd.generate"))
    start = max(i for i, e in enumerate(log[:end]) if e[0] == "prop") + 1
    return [e[1] for e in log[start:end] if e[0] == "label"]


def test_2_before_the_server_answers_the_menu_offers_both_offline_models(props):
    build_request = addon_module("properties").build_request
    addon_module("state").current.models = None
    menu = ui_recorder.draw(bpy.types.NFSD_MT_models)
    assert [e[2] for e in menu if e[0] == "operator"] == [
        "Preferences' default", "Analytic (offline test shapes)", "Micro demo model (bundled, offline)", None]
    assert bpy.ops.nfsd.set_model(prior="stable-diffusion", model="micro") == {"FINISHED"}
    request = build_request(props, addon_module("preferences").get_prefs())
    assert (request["prior"], request["model"]) == ("stable-diffusion", "micro")
    bpy.ops.nfsd.set_model(prior="analytic", model="")


def test_2_model_picker_shows_what_needs_a_download(props):
    build_request = addon_module("properties").build_request
    addon_module("state").current.models = [
        {"id": "analytic", "label": "Analytic (offline test shapes)", "prior": "analytic", "model": None,
         "cached": True, "size_bytes": 0, "download_bytes": None},
        {"id": "org/big", "label": "org/big", "prior": "stable-diffusion", "model": "org/big", "cached": False,
         "size_bytes": None, "download_bytes": 5_160_000_000},
        {"id": "org/small", "label": "org/small", "prior": "stable-diffusion", "model": "org/small", "cached": True,
         "size_bytes": 2_000_000_000, "download_bytes": None},
    ]
    menu = ui_recorder.draw(bpy.types.NFSD_MT_models)
    assert [e[2] for e in menu if e[0] == "operator"] == [
        "Preferences' default", "Analytic (offline test shapes)", "org/big (download 5.2 GB)", "org/small (2.0 GB)",
        None,
    ]
    assert bpy.ops.nfsd.set_model(prior="stable-diffusion", model="org/big") == {"FINISHED"}
    log = ui_recorder.draw(bpy.types.NFSD_PT_main)
    assert _before_generate(log) == ["org/big is not downloaded (5.2 GB)"]
    assert any(e[:2] == ("operator", "nfsd.download_model") for e in log)
    request = build_request(props, addon_module("preferences").get_prefs())
    assert (request["prior"], request["model"]) == ("stable-diffusion", "org/big")
    bpy.ops.nfsd.set_model(prior="analytic", model="")
    assert build_request(props, addon_module("preferences").get_prefs())["prior"] == "analytic"




def test_2_rgb_encoder_choice_is_sent_and_a_taesd_download_is_announced(props, prefs):
    build_request, contract = addon_module("properties").build_request, addon_module("contract")
    current = addon_module("state").current
    items = prefs.bl_rna.properties["encoder"].enum_items
    assert [item.identifier for item in items] == list(contract.ENCODERS)
    assert [item.name for item in items] == ["Auto", "VAE", "TAESD"]
    assert "9.8 MB" in items["taesd"].description and "no extra download" in items["vae"].description
    assert ("prop", "encoder", True) in ui_recorder.draw(type(prefs), target=prefs)

    current.models = [
        {"id": "analytic", "label": "Analytic (offline test shapes)", "prior": "analytic", "model": None,
         "cached": True, "size_bytes": 0, "download_bytes": None, "taesd_cached": True},
        {"id": "org/sd", "label": "org/sd", "prior": "stable-diffusion", "model": "org/sd", "cached": True,
         "size_bytes": 2_000_000_000, "download_bytes": None, "taesd_cached": False},
    ]
    bpy.ops.nfsd.set_model(prior="stable-diffusion", model="org/sd")
    notice = "First job downloads TAESD (9.8 MB)"
    for choice, preset, shown in (("auto", "standard", True), ("auto", "draft", True), ("auto", "high", False),
                                  ("vae", "draft", False), ("taesd", "high", True)):
        prefs.encoder, props.preset = choice, preset
        assert build_request(props, prefs)["encoder"] == choice
        assert _before_generate(ui_recorder.draw(bpy.types.NFSD_PT_main)) == ([notice] if shown else []), choice
    current.models[1]["taesd_cached"] = True
    assert _before_generate(ui_recorder.draw(bpy.types.NFSD_PT_main)) == []

    # The analytic prior has one encoder: the preference does not apply (the server would refuse taesd).
    bpy.ops.nfsd.set_model(prior="analytic", model="")
    assert build_request(props, prefs)["encoder"] == contract.DEFAULT_ENCODER
    assert _before_generate(ui_recorder.draw(bpy.types.NFSD_PT_main)) == []


def test_2_a_first_generate_on_a_model_the_server_lacks_offers_the_download_in_one_sentence(props, fake_server):
    """Before the model list is known Generate cannot refuse; the worker asks first, submits nothing, and the panel
    says what Generate says once the list is known, with Download beside it."""
    state = addon_module("state")
    props.prompt = "a red ball"
    bpy.ops.nfsd.set_model(prior="stable-diffusion", model="org/big")
    assert not state.current.models
    assert bpy.ops.nfsd.generate() == {"FINISHED"}
    pump(lambda: not state.busy() and props.error, 10, "the refusal")
    assert props.error == "org/big is not downloaded yet: press Download above Generate"
    assert fake_server.posted == [] and props.job_state == "" and len(props.history) == 0
    log = ui_recorder.draw(bpy.types.NFSD_PT_main)
    assert _before_generate(log) == ["org/big is not downloaded (5.2 GB)", "First job downloads TAESD (9.8 MB)"]
    assert any(e[:2] == ("operator", "nfsd.download_model") for e in log)
    with pytest.raises(RuntimeError, match="^Error: org/big is not downloaded yet: press Download above Generate"):
        bpy.ops.nfsd.generate()  # the same sentence, now from the operator


def test_2_a_failed_jobs_error_is_the_servers_own_line(props, fake_server):
    props.prompt = "a red ball"
    bpy.ops.nfsd.set_model(prior="analytic", model="")
    assert bpy.ops.nfsd.generate() == {"FINISHED"}
    pump(lambda: props.job_state == "failed", 10, "the failure")
    assert props.error == "out of memory (try the draft preset)"


# --- variations: N seeds queued on the server -------------------------------------------------------------------


def test_variations_submit_one_job_per_seed(props, fake_server):
    state = addon_module("state")
    props.prompt, props.seed, props.variations = "a red ball", 41, 3
    bpy.ops.nfsd.set_model(prior="analytic", model="")  # the fake server's default model is not downloaded
    log = ui_recorder.draw(bpy.types.NFSD_PT_main)
    assert ("operator", "nfsd.generate", "Generate 3 Variations", True) in log
    assert bpy.ops.nfsd.generate() == {"FINISHED"}
    pump(lambda: not state.busy() and len(props.history) == 3 and props.history[-1].state == "failed", 20,
         "three failed variations")
    assert [body["seed"] for body in fake_server.posted] == [41, 42, 43]
    assert [item.job_id for item in props.history] == ["j1", "j2", "j3"]

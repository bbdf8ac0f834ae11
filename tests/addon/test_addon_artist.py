"""The add-on as an artist meets it, in headless bpy from the built zip: one test per dead end,
in the order an artist hits them, and every draw() in every state."""

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")
psutil = pytest.importorskip("psutil")

import ui_recorder
from addon_helpers import PKG, ROOT, addon_module, build_zip, pump
from fake_http import JsonHandler, serve


@pytest.fixture(scope="module")
def zip_path(tmp_path_factory):
    return build_zip(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def prefs(zip_path, tmp_path_factory):
    res = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True)
    assert res == {"FINISHED"}
    if PKG not in bpy.context.preferences.addons:
        bpy.ops.preferences.addon_enable(module=PKG)
    p = bpy.context.preferences.addons[PKG].preferences
    p.data_dir = str(tmp_path_factory.mktemp("nfsd_data"))
    p.python_path = sys.executable
    yield p
    if PKG in bpy.context.preferences.addons:
        bpy.ops.preferences.addon_disable(module=PKG)


@pytest.fixture
def props(prefs):
    current = addon_module("session").current
    p = bpy.context.scene.nfsd
    yield p
    worker = current.worker
    if worker is not None:
        worker.stop_event.set()
        worker.join(10)
    current.worker = None
    current.models = []
    while not addon_module("jobs").EVENTS.empty():
        addon_module("jobs").EVENTS.get()
    p = bpy.context.scene.nfsd
    p.error = p.error_details = p.job_state = p.job_phase = p.job_id = ""
    p.prior = p.model = ""
    p.variations = 1
    p.preset = addon_module("contract").DEFAULT_PRESET
    prefs.encoder = addon_module("contract").DEFAULT_ENCODER
    p.history.clear()
    prefs.mode, prefs.python_path = "LOCAL", sys.executable
    addon_module("backend").BACKEND.stop()


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


class Busy:
    """Holds the add-on 'busy' (a live worker) for draw and poll checks."""

    def __init__(self):
        self.event = threading.Event()
        self.thread = threading.Thread(target=self.event.wait, daemon=True)
        self.thread.cancel_event = self.thread.stop_event = threading.Event()

    def __enter__(self):
        self.thread.start()
        addon_module("session").current.worker = self.thread
        return self

    def __exit__(self, *exc):
        self.event.set()
        self.thread.join()
        addon_module("session").current.worker = None


def resolved(**request):
    """A status's ``request`` as the server echoes it: the job with every default resolved (a red ball, by default
    analytic, seed 1, 30 steps)."""
    from nfsd_contract import resolve_spec

    return resolve_spec(**{"prompt": "a red ball", "prior": "analytic", "seed": 1, "steps": 30, **request}).to_dict()


class FakeServer:
    """/v1 with canned answers: POST records the body; GET a job answers ``states[id]`` (404 when absent), with
    the posted job (or a red ball) resolved as its ``request``."""

    def __init__(self):
        self.posted, self.states, self.jobs = [], {}, {}
        outer = self

        class Handler(JsonHandler):
            def do_GET(self):
                job_id = self.path.rsplit("/", 1)[-1]
                if self.path == "/v1/health":
                    return self._send(200, {"version": "9.9", "device": "cpu"})
                if self.path == "/v1/models":
                    return self._send(200, {"models": [
                        {"id": "org/big", "label": "org/big", "prior": "stable-diffusion", "model": "org/big",
                         "cached": False, "size_bytes": None, "download_bytes": 5_160_000_000, "default": True,
                         "taesd_cached": False}]})
                if job_id not in outer.states:
                    return self._send(404, {"detail": f"no job {job_id!r} on this server"})
                self._send(200, {
                    "id": job_id, "state": outer.states[job_id], "step": 0, "total": 30, "eta_s": None,
                    "queue_position": None, "error": "out of memory", "hint": "try the draft preset",
                    "has_preview": False, "request": outer.jobs.get(job_id) or resolved(),
                })

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posted.append(body)
                job_id = f"j{len(outer.posted)}"
                outer.states[job_id] = "failed"
                outer.jobs[job_id] = resolved(**body)
                self._send(202, {"id": job_id})

        self.server, self.url = serve(Handler)

    def close(self):
        self.server.shutdown()


@pytest.fixture
def fake_server(prefs):
    server = FakeServer()
    prefs.mode, prefs.url, prefs.token = "REMOTE", server.url, "t"
    yield server
    server.close()


# --- 1. first run from the zip ----------------------------------------------------------------------------

FIRST_RUN = textwrap.dedent("""
    import json, os, sys, importlib.util, time
    # No source checkout: drop the venv's editable install (a finder, or a path entry holding the contract).
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "nfsd_contract"))]
    assert all(importlib.util.find_spec(name) is None for name in ("nfsd_blender", "nfsd_server", "nfsd_contract"))
    import bpy
    assert bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default",
                                                    enable_on_install=True) == {"FINISHED"}
    pkg = "bl_ext.user_default.nfsd_blender"
    session, preferences = sys.modules[pkg + ".session"], sys.modules[pkg + ".preferences"]
    prefs = bpy.context.preferences.addons[pkg].preferences
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
    while time.monotonic() < deadline and session.busy():
        session.poll_timer()
        time.sleep(0.1)
    session.poll_timer()
    print(json.dumps({"python": preferences.python_path(prefs), "seen": sorted(set(seen)), "state": props.job_state,
                      "error": props.error, "history": [h.state for h in props.history]}))
    bpy.ops.preferences.addon_disable(module=pkg)
""")


def test_1_first_generate_from_an_installed_zip_finds_the_backend(zip_path, tmp_path):
    # The backend as an artist installs it: a venv whose `nfsd` command is on PATH.
    venv_python = _executable(tmp_path / "venv" / "bin" / "python", (
        f"#!/bin/sh\nPYTHONPATH={ROOT / 'server'}:{ROOT} exec {sys.executable} \"$@\"\n"))
    _executable(tmp_path / "venv" / "bin" / "nfsd", f"#!{venv_python}\nfrom nfsd_server.cli import main\nmain()\n")
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
    with pytest.raises(RuntimeError, match="No backend found: pick its Python, or copy the install command"):
        bpy.ops.nfsd.generate()
    log = ui_recorder.draw(bpy.types.NFSD_PT_main)
    assert ("label", "No nfsd backend found on this computer", "INFO", True) in log
    shown = [entry[1] for entry in log if entry[0] == "operator"]
    assert "nfsd.pick_python" in shown and "nfsd.copy_install_command" in shown
    assert bpy.ops.nfsd.copy_install_command() == {"FINISHED"}
    not_python = _executable(tmp_path / "python", "#!/bin/sh\necho False\n")
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


def test_3_saved_mid_job_with_the_backend_gone_reopens_interrupted(props, tmp_path):
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


def test_5_import_failure_is_one_line_failed_in_history_and_nothing_left(props, tmp_path):
    if bpy.data.collections.get("NFSD") is not None:
        bpy.data.collections.remove(bpy.data.collections["NFSD"])
    bad = tmp_path / "bad.glb"
    bad.write_bytes(b"glTF this is not a binary glTF at all" * 10)
    item = props.history.add()
    item.job_id, item.prompt, item.state = "f00", "a red ball", "running"
    objects = len(bpy.data.objects)
    addon_module("jobs").EVENTS.put(addon_module("events").Done("f00", str(bad), {}))
    addon_module("session").poll_timer()
    assert props.job_state == "failed" and item.state == "failed"
    assert props.error.startswith("Import failed: ") and "\n" not in props.error
    assert "Traceback" in props.error_details and props.error_details.count("\n") > 3
    assert len(bpy.data.objects) == objects and bpy.data.collections.get("NFSD") is None
    log = ui_recorder.draw(bpy.types.NFSD_PT_main)
    assert any(e[:2] == ("operator", "nfsd.copy_error") for e in log)
    assert bpy.ops.nfsd.copy_error() == {"FINISHED"}


# --- 6. Check Server with the backend stopped ---------------------------------------------------------------


def test_6_check_server_timer_stops(props, prefs):
    session = addon_module("session")
    for _ in range(20):  # the race needed the worker to answer before the flag was set: try it many times
        assert bpy.ops.nfsd.check_health() == {"FINISHED"}
        for _ in range(100):
            if session.poll_timer() is None:
                break
            session.current.info.join(1)
        else:
            raise AssertionError("the timer kept running after Check Server answered")
    assert prefs.status == "Backend: stopped (starts on Generate)"


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
        (events.Status("p1", {**status, "state": "queued", "queue_position": 2}), "queued (2 ahead)"),
        (events.Model({"cached": False, "download_bytes": 5_160_000_000}), None),
        (events.Status("p1", {**status, "state": "running"}), "downloading model (5.2 GB), then loading…"),
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
    session, events, queued = addon_module("session"), addon_module("events"), addon_module("jobs").EVENTS
    contract = addon_module("contract")
    request = contract.job_request("a red ball", seed=5, prior="analytic", method="sds")
    queued.put(events.Submitted("h1", request))
    session.poll_timer()
    item = props.history[0]
    # the defaults the server resolves are not known yet: zero, as the form writes "the default"
    assert _job_fields(item) == {**request, "guidance_scale": 0.0, "steps": 0, "model": "", "init_mesh": "",
                                 "shape_strength": 0.0}
    echo = resolved(seed=5, method="sds", steps=None)
    queued.put(events.Status("h1", {"state": "done", "step": 0, "total": echo["steps"], "request": echo}))
    session.poll_timer()
    assert (item.guidance_scale, item.steps, item.encoder) == (100.0, contract.PRESET_STEPS["standard"], "vae")
    assert _job_fields(item) == {**echo, "model": "", "init_mesh": ""}
    # Re-run: the job as it ran, the preferences' precision and encoder, and never the mesh of a selection job
    item.init_mesh, item.keep_geometry = "mesh-1", True
    props.history_index = 0
    assert bpy.ops.nfsd.history_rerun() == {"FINISHED"}
    pump(lambda: not session.busy(), 20, "the re-run")
    assert fake_server.posted == [{**echo, "dtype": prefs.dtype, "encoder": contract.DEFAULT_ENCODER,
                                   "shape_strength": None}]


# --- 4. one backend per session ----------------------------------------------------------------------------


def test_4_generate_while_start_backend_boots_spawns_one_backend(props, prefs, tmp_path):
    session, backend = addon_module("session"), addon_module("backend").BACKEND
    spawns = tmp_path / "spawns"
    prefs.python_path = str(_executable(tmp_path / "python", f"""#!/bin/sh
echo $$ >> {spawns}
sleep 1
echo '{{"port": 1, "version": "fake"}}'
cat > /dev/null
"""))
    props.prompt = "a red ball"
    assert bpy.ops.nfsd.start_backend() == {"FINISHED"}
    assert bpy.ops.nfsd.generate() == {"FINISHED"}
    pump(lambda: not session.busy() and not session.current.info.is_alive(), 30, "start and generate to finish")
    pids = [int(line) for line in spawns.read_text().split()]
    assert len(pids) == 1 and backend.running
    assert props.job_state == "error" and "Cannot reach the server at http://127.0.0.1:1" in props.error
    bpy.ops.nfsd.stop_backend()
    assert not psutil.pid_exists(pids[0]) or psutil.Process(pids[0]).status() == psutil.STATUS_ZOMBIE


# --- 2. models ------------------------------------------------------------------------------------------------


def test_2_model_picker_shows_what_needs_a_download(props):
    build_request = addon_module("properties").build_request
    addon_module("session").current.models = [
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
    texts = ui_recorder.texts(ui_recorder.draw(bpy.types.NFSD_PT_main))
    assert "First use downloads 5.2 GB (needs internet)" in texts
    request = build_request(props, addon_module("preferences").get_prefs())
    assert (request["prior"], request["model"]) == ("stable-diffusion", "org/big")
    bpy.ops.nfsd.set_model(prior="analytic", model="")
    assert build_request(props, addon_module("preferences").get_prefs())["prior"] == "analytic"


def _before_generate(log):
    """The labels between the form and the Generate button."""
    end = next(i for i, e in enumerate(log) if e[:2] == ("operator", "nfsd.generate"))
    start = max(i for i, e in enumerate(log[:end]) if e[0] == "prop") + 1
    return [e[1] for e in log[start:end] if e[0] == "label"]


def test_2_rgb_encoder_choice_is_sent_and_a_taesd_download_is_announced(props, prefs):
    build_request, contract = addon_module("properties").build_request, addon_module("contract")
    current = addon_module("session").current
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


def test_7_progress_counts_a_taesd_download(props):
    session, events, queued = addon_module("session"), addon_module("events"), addon_module("jobs").EVENTS
    status = {"state": "running", "step": 0, "total": 400, "eta_s": None, "queue_position": None,
              "has_preview": False, "request": resolved(steps=400)}
    with Busy():
        for event in (events.Model({"cached": True}), events.Taesd(True), events.Status("p1", status)):
            queued.put(event)
        session.poll_timer()
        assert _progress_text() == "downloading model (9.8 MB), then loading…"
        queued.put(events.Model({"cached": False, "download_bytes": 50_000_000}))
        session.poll_timer()
        assert _progress_text() == "downloading model (59.8 MB), then loading…"
        queued.put(events.Model({"cached": True}))
        queued.put(events.Taesd(False))
        session.poll_timer()
        assert _progress_text() == "loading model…"
        props.job_download_taesd = True
    finished = threading.Thread(target=lambda: None)
    finished.stop_event = threading.Event()
    session.start_job(bpy.context, [], worker=finished)
    assert not props.job_download_taesd  # a new job starts knowing of no download


def test_2_failed_job_with_a_missing_model_says_so(props, fake_server):
    props.prompt = "a red ball"
    bpy.ops.nfsd.set_model(prior="stable-diffusion", model="org/big")
    assert bpy.ops.nfsd.generate() == {"FINISHED"}
    pump(lambda: props.job_state == "failed", 10, "the failure")
    assert round(props.job_download_gb, 2) == 5.16
    assert props.job_download_taesd  # standard preset, encoder auto → TAESD, which the server has not got
    assert fake_server.posted[0]["encoder"] == "auto"
    assert props.error == ("out of memory (try the draft preset) — the model is not downloaded; pick a downloaded "
                           "model or Analytic in Model")
    assert addon_module("session").current.models[0]["id"] == "org/big"


# --- variations: N seeds queued on the server -------------------------------------------------------------------


def test_variations_submit_one_job_per_seed(props, fake_server):
    props.prompt, props.seed, props.variations = "a red ball", 41, 3
    log = ui_recorder.draw(bpy.types.NFSD_PT_main)
    assert ("operator", "nfsd.generate", "Generate 3 Variations", True) in log
    assert bpy.ops.nfsd.generate() == {"FINISHED"}
    session = addon_module("session")
    pump(lambda: not session.busy() and len(props.history) == 3 and props.history[-1].state == "failed", 20,
         "three failed variations")
    assert [body["seed"] for body in fake_server.posted] == [41, 42, 43]
    assert [item.job_id for item in props.history] == ["j1", "j2", "j3"]


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
                                               "encoder", "software", "job_id")}, keys
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
    addon_module("session").current.models = [] if state == "" else [
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
    assert tuple(session.current.thumbs[str(png)].image_size) == (8, 8)
    props.history_index = 1
    assert bpy.ops.nfsd.history_delete() == {"FINISHED"}
    assert [item.job_id for item in props.history] == ["h1", "h3"]
    props.history[0].glb_path = str(tmp_path / "missing.glb")
    props.history_index = 0
    with pytest.raises(RuntimeError, match="No downloaded result for this entry"):
        bpy.ops.nfsd.history_reimport()
    assert bpy.ops.nfsd.history_clear() == {"FINISHED"}
    assert len(props.history) == 0

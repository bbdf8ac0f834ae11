"""Install Backend from the built zip alone: which torch build it picks (a pure function of the machine), and the
whole flow in headless bpy with no checkout importable: a venv with the zip's backend wheel, a health check, a
re-run that changes nothing, and a Generate served by the installed backend.

Torch is never downloaded here: the installer's Python sees this venv's packages (a folder of links to them on
PYTHONPATH, without the backend's own) and NFSD_PIP_ARGS=--no-index, so pip finds every dependency satisfied and
installs only the wheel from the zip.
"""

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from addon_helpers import FROM_THE_ZIP_ALONE  # noqa: E402
from nfsd_blender import installer  # noqa: E402


@pytest.mark.parametrize("system, driver, label, index", [
    ("Linux", True, "CUDA", None),  # PyPI's Linux torch is the CUDA build
    ("Linux", False, "CPU", "https://download.pytorch.org/whl/cpu"),
    ("Windows", True, "CUDA", "https://download.pytorch.org/whl/cu128"),
    ("Windows", False, "CPU", "https://download.pytorch.org/whl/cpu"),
    ("Darwin", False, "MPS", None),
    ("Darwin", True, "MPS", None),  # no CUDA on macOS whatever is installed
])
def test_the_torch_build_follows_the_machine(system, driver, label, index):
    choice = installer.torch_choice(system, driver)
    assert (choice.label, choice.index_url) == (label, index)
    assert choice.reason  # the panel says why


INSTALL_RUN = FROM_THE_ZIP_ALONE + textwrap.dedent("""
    prefs.data_dir, prefs.install_dir, prefs.python_path = sys.argv[2], sys.argv[3], ""
    props = bpy.context.scene.nfsd

    def pump(until, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until():
            session.poll_timer()
            time.sleep(0.1)
        session.poll_timer()

    def install():
        assert bpy.ops.nfsd.install_backend() == {"FINISHED"}
        pump(lambda: state.install_running() is None, 240)
        return {"phase": state.current.install.phase, "state": state.current.install.state,
                "python": prefs.python_path, "status": prefs.install_status, "error": props.error}

    first = install()
    again = install()
    bpy.ops.nfsd.set_model(prior="analytic", model="")
    props.prompt, props.preset, props.steps, props.poly_budget, props.texture_size = "a red ball", "draft", 400, 1000, "512"
    assert bpy.ops.nfsd.generate() == {"FINISHED"}
    pump(lambda: props.job_state in ("error", "failed") or props.job_state == "running" and props.job_step > 0, 120)
    trained = props.job_step
    bpy.ops.nfsd.cancel()
    pump(lambda: not state.busy(), 60)
    print(json.dumps({"first": first, "again": again, "trained": trained, "state": props.job_state,
                      "error": props.error}))
    bpy.ops.preferences.addon_disable(module=pkg)
""")


def _dependencies_without_the_backend(folder: Path) -> Path:
    """Links to this venv's installed packages except the backend itself and pip (the new venv brings its own)."""
    folder.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name.startswith(("nfsd_blender", "__editable__", "pip")) or entry.suffix == ".pth":
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


@pytest.mark.slow  # ~35 s: a venv, pip with every dependency satisfied, three backend starts, a few steps
def test_install_backend_from_the_zip_serves_a_generate(zip_path, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(_dependencies_without_the_backend(tmp_path / "deps")), NFSD_PIP_ARGS="--no-index",
               HOME=str(tmp_path / "home"), BLENDER_USER_RESOURCES=str(tmp_path / "blender"))
    (tmp_path / "home").mkdir()
    target = tmp_path / "nfsd-backend"
    res = subprocess.run([sys.executable, "-c", INSTALL_RUN, str(zip_path), str(tmp_path / "data"), str(target)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    python = str(target / "bin" / "python")
    assert out["first"] == {"phase": "switching to the new backend", "state": "done", "python": python,
                            "status": f"Backend 0.1.0 installed: {python}", "error": ""}, out
    assert out["again"]["phase"] == "already installed" and out["again"]["state"] == "done", out
    assert not (tmp_path / "nfsd-backend.installing").exists()
    log = (tmp_path / "data" / "install.log").read_text()
    assert "Successfully installed nfsd-blender-0.1.0" in log and "== health:" in log
    installed = subprocess.run([python, "-c", "import nfsd_server; print(nfsd_server.__file__)"], env=env,
                               capture_output=True, text=True, check=True).stdout.strip()
    assert installed.startswith(str(target))  # the zip's wheel, not this checkout
    assert out["trained"] > 0 and out["state"] == "cancelled", out


def test_a_failed_install_leaves_the_previous_backend(tmp_path, monkeypatch):
    import queue

    target = tmp_path / "nfsd-backend"
    (target / "bin").mkdir(parents=True)
    (target / "bin" / "python").write_text("the working backend")
    wheel = tmp_path / "nfsd_blender-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not a wheel")
    events = queue.Queue()
    job = installer.Installer(sys.executable, wheel, target, tmp_path / "install.log", str(tmp_path / "data"),
                              installer.torch_choice("Linux", False), events, pip_args=["--no-index", "--no-deps"])
    monkeypatch.setattr(installer, "installed_version", lambda python: "")
    monkeypatch.setattr(job, "_run", _fail_at("installing the backend", job._run))
    job.run()
    ended = events.get_nowait()
    assert ended.state == "failed" and ended.error.startswith("installing the backend failed")
    assert (target / "bin" / "python").read_text() == "the working backend"
    assert not job.staging.exists()
    assert "== failed: installing the backend failed" in (tmp_path / "install.log").read_text()


def _fail_at(phase, run):
    """``Installer._run`` that skips the slow steps before ``phase`` and fails there, as pip would."""

    def fake(this_phase, cmd):
        if this_phase == phase:
            return run(this_phase, [sys.executable, "-c", "raise SystemExit(1)"])
        job_dir = Path(cmd[-1]) if this_phase == "creating the environment" else None
        if job_dir is not None:
            job_dir.mkdir(parents=True)

    return fake


@pytest.mark.parametrize("pip_args, environ, config, named", [
    ([], {}, "", False),
    (["--no-cache-dir"], {}, "", False),
    (["--index-url", "https://mirror.example/simple"], {}, "", True),
    (["--index-url=https://mirror.example/simple"], {}, "", True),
    (["--no-index", "--find-links", "/wheels"], {}, "", True),
    ([], {"PIP_INDEX_URL": "https://mirror.example/simple"}, "", True),
    ([], {}, "global.index-url='https://mirror.example/simple'\n", True),
    ([], {}, "global.timeout='60'\n", False),
])
def test_the_users_own_index_is_never_overridden(pip_args, environ, config, named):
    assert installer.names_an_index(pip_args, environ, config) is named


def _torch_steps(monkeypatch, tmp_path, pip_args, fail_hosts=()):
    """The torch step's commands, with ``_run`` failing for commands that name an index in ``fail_hosts``."""
    import queue

    job = installer.Installer(sys.executable, tmp_path / "w.whl", tmp_path / "env", tmp_path / "install.log", "",
                              installer.torch_choice("Linux", False), queue.Queue(), pip_args=pip_args)
    commands = []

    def run(phase, cmd):
        commands.append((phase, cmd))
        if any(host in " ".join(cmd) for host in fail_hosts):
            raise installer.InstallFailed(f"{phase} failed", "No matching distribution found for filelock")

    monkeypatch.setattr(job, "_run", run)
    monkeypatch.setattr(installer, "pip_config", lambda python: "")  # this machine's own pip.conf aside
    for name in installer.INDEX_ENV:
        monkeypatch.delenv(name, raising=False)
    job._log = open(tmp_path / "install.log", "a")
    return job, commands


def test_torch_falls_back_to_the_standard_index_when_pytorchs_cannot_be_used(monkeypatch, tmp_path):
    job, commands = _torch_steps(monkeypatch, tmp_path, ["--no-cache-dir"], fail_hosts=["download.pytorch.org"])
    job._install_torch(["python", "-m", "pip", "install"])
    assert [cmd[-4:] for _, cmd in commands] == [
        ["--index-url", "https://download.pytorch.org/whl/cpu", "--no-cache-dir", "torch"],
        ["pip", "install", "--no-cache-dir", "torch"],  # the user's arguments after ours: theirs win
    ]
    job._log.close()
    assert "could not be used (No matching distribution found for filelock)" in (tmp_path / "install.log").read_text()


def test_a_torch_step_that_fails_everywhere_says_both_reasons_and_what_to_set(monkeypatch, tmp_path):
    job, _ = _torch_steps(monkeypatch, tmp_path, [], fail_hosts=["pip"])
    with pytest.raises(installer.InstallFailed) as error:
        job._install_torch(["python", "-m", "pip", "install"])
    message = str(error.value)
    assert message.startswith("installing torch (CPU) failed: download.pytorch.org: No matching distribution")
    assert "the standard index: No matching distribution found for filelock" in message
    assert "NFSD_PIP_ARGS" in message


def test_a_named_index_is_the_only_one_torch_comes_from(monkeypatch, tmp_path):
    job, commands = _torch_steps(monkeypatch, tmp_path, ["--index-url", "https://mirror.example/simple"])
    job._install_torch(["python", "-m", "pip", "install"])
    assert [cmd for _, cmd in commands] == [
        ["python", "-m", "pip", "install", "--index-url", "https://mirror.example/simple", "torch"]]


def test_downloads_in_flight_count_in_the_size_and_a_failure_says_pips_reason(monkeypatch, tmp_path):
    import queue

    monkeypatch.setattr(installer, "SIZE_EVERY_S", 0.05)
    job = installer.Installer(sys.executable, tmp_path / "w.whl", tmp_path / "env", tmp_path / "install.log", "",
                              installer.torch_choice("Linux", False), queue.Queue(), pip_args=[])
    job.staging.mkdir()
    with open(job.log_path, "a") as job._log:
        download = "import os, time; open(os.path.join(os.environ['TMPDIR'], 'torch.whl'), 'wb').write(bytes(3_000_000))"
        job._run("installing torch (CPU)", [sys.executable, "-c", download])
        assert job.megabytes >= 3.0 and 0 < job.fraction < 0.01
        assert (job.staging / installer.PIP_TMP / "torch.whl").is_file()
        failing = "print('Looking in indexes: x'); print('ERROR: No matching distribution found for filelock'); raise SystemExit(1)"
        with pytest.raises(installer.InstallFailed) as error:
            job._run("installing torch (CPU)", [sys.executable, "-c", failing])
    assert error.value.reason == "No matching distribution found for filelock"
    assert str(error.value).startswith("installing torch (CPU) failed: No matching distribution found for filelock")
    assert job.progress_text == "installing torch (CPU)… · 3 of about 1400 MB"

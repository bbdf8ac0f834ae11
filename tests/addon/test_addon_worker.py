"""The add-on's bpy-free parts against fakes: polling that survives a flaky server, cancel that keeps working,
progress text, backend detection from an installed zip, and one backend per session."""

import os
import queue
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from addon_helpers import executable
from fake_http import JsonHandler, serve

from nfsd_blender import backend, contract, events, jobs, progress
from nfsd_blender.client import BackendError, Client


class FlakyServer:
    """GET /v1/jobs/j1 fails with ``fail_status`` for the first ``failures`` calls, then says 'running' until a
    DELETE arrives (which itself fails ``cancel_failures`` times first), then 'cancelled'."""

    def __init__(self, failures=0, fail_status=503, cancel_failures=0, missing=False):
        self.failures, self.fail_status, self.cancel_failures, self.missing = failures, fail_status, cancel_failures, missing
        self.status_calls = self.cancel_calls = 0
        self.cancelled = False
        outer = self

        class Handler(JsonHandler):
            def do_GET(self):
                if self.path == "/v1/health":
                    return self._send(200, {"version": "fake", "device": "cpu"})
                outer.status_calls += 1
                if outer.missing:
                    return self._send(404, {"detail": "no job 'j1' on this server"})
                if outer.status_calls <= outer.failures:
                    return self._send(outer.fail_status, {"detail": "restarting"})
                state = "cancelled" if outer.cancelled else "running"
                self._send(200, {"id": "j1", "state": state, "step": 3, "total": 10, "eta_s": 70.0,
                                 "has_preview": False, "request": {}})

            def do_DELETE(self):
                outer.cancel_calls += 1
                if outer.cancel_calls <= outer.cancel_failures:
                    return self._send(502, {"detail": "bad gateway"})
                outer.cancelled = True
                self._send(200, {"id": "j1", "state": "cancelled"})

        self.server, self.url = serve(Handler)

    def close(self):
        self.server.shutdown()


def _follow(server, tmp_path, cancel_after=None):
    """Follow job j1 on ``server`` with a JobWorker; the events it put on its queue, in order."""
    queued: queue.Queue = queue.Queue()
    settings = jobs.Settings("REMOTE", "", str(tmp_path), server.url, "tok", "analytic", "")
    worker = jobs.JobWorker(settings, [], queued, resume=["j1"])
    worker.retry_delays = (0.01, 0.02, 0.04)
    worker.start()
    if cancel_after is not None:
        deadline = time.monotonic() + 10
        while server.status_calls < cancel_after and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.cancel_event.set()
    worker.join(20)
    assert not worker.is_alive()
    return [queued.get_nowait() for _ in range(queued.qsize())]


def test_poll_survives_transient_errors_and_says_reconnecting(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "POLL_S", 0.01)
    server = FlakyServer(failures=2, fail_status=503)
    try:
        seen = _follow(server, tmp_path, cancel_after=4)
    finally:
        server.close()
    assert [e.attempt for e in seen if isinstance(e, events.Reconnecting)] == [1, 2]
    assert isinstance(seen[-1], events.Cancelled), seen  # the loop lived on, and Cancel still worked
    assert not any(isinstance(e, events.Error) for e in seen)


def test_cancel_is_retried_when_the_server_blips(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "POLL_S", 0.01)
    server = FlakyServer(cancel_failures=2)
    try:
        seen = _follow(server, tmp_path, cancel_after=2)
    finally:
        server.close()
    assert server.cancel_calls == 3
    assert isinstance(seen[-1], events.Cancelled) and seen[-1].job_id == "j1"


def test_poll_gives_up_with_one_line_after_the_backoff(tmp_path):
    server = FlakyServer(failures=99, fail_status=503)
    try:
        seen = _follow(server, tmp_path)
    finally:
        server.close()
    assert server.status_calls == 4  # the first try + 3 retries
    assert isinstance(seen[-1], events.Error) and seen[-1].job_id == "j1"
    assert seen[-1].message.startswith("Lost contact with the server: restarting")


def test_a_job_the_server_forgot_is_interrupted_not_an_error(tmp_path):
    server = FlakyServer(missing=True)
    try:
        seen = _follow(server, tmp_path)
    finally:
        server.close()
    assert seen == [events.Backend({"version": "fake", "device": "cpu"}),
                    events.Interrupted("j1", "The server no longer has this job")]


def test_client_errors_are_not_retried():
    assert BackendError("bad", status=401).transient is False
    assert BackendError("bad", status=503).transient is True
    with pytest.raises(BackendError) as err:
        Client("http://127.0.0.1:9", timeout=1).health()  # discard port: refused
    assert err.value.transient


@pytest.mark.parametrize("seconds, text", [(None, ""), (-1, ""), (0, "0:00"), (59.6, "1:00"), (1858, "30:58"),
                                           (3725, "1:02:05")])
def test_eta_is_minutes_and_seconds(seconds, text):
    assert progress.format_duration(seconds) == text


def test_phases_are_named():
    assert progress.phase("starting", client_phase="starting backend") == ("starting backend…", 0.0)
    assert progress.phase("queued", queue_position=2)[0] == "queued (3 ahead)"  # 2 waiting + the running one
    assert progress.phase("running", 0, 5000)[0] == "loading model…"
    assert progress.phase("running", 0, 5000, download_bytes=5_160_000_000)[0] == (
        "downloading model (5.2 GB), then loading…")
    assert progress.phase("running", 1250, 5000, eta_s=1858) == ("training 1250/5000 · ETA 30:58", 0.25)
    assert progress.phase("exporting", 5000, 5000, elapsed_s=12)[0] == "exporting mesh and texture · 0:12"
    assert progress.phase("running", 10, 50, reconnect_attempt=3)[0] == "reconnecting to the server (try 3)…"
    assert progress.phase("done", 5000, 5000, client_phase="importing") == ("importing…", 1.0)


@pytest.mark.parametrize("choice, preset, prior, needs", [
    ("auto", "draft", "stable-diffusion", True), ("auto", "standard", "stable-diffusion", True),
    ("auto", "high", "stable-diffusion", False), ("taesd", "high", "stable-diffusion", True),
    ("vae", "draft", "stable-diffusion", False), ("taesd", "draft", "analytic", False),
])
def test_which_jobs_fetch_taesd(choice, preset, prior, needs):
    request = contract.job_request("a red ball", preset=preset, prior=prior,
                                   encoder=jobs.request_encoder(prior, choice))
    assert request["encoder"] == (choice if prior == "stable-diffusion" else contract.DEFAULT_ENCODER)
    assert jobs.needs_taesd(request, prior) is needs
    missing, cached, silent = {"taesd_cached": False}, {"taesd_cached": True}, {}
    assert jobs.downloads_taesd(missing, request, prior) is needs
    assert not jobs.downloads_taesd(cached, request, prior)
    assert not jobs.downloads_taesd(silent, request, prior)  # an entry that does not say: claim nothing
    assert not jobs.downloads_taesd(None, request, prior)


class _ModelsOnly:
    def __init__(self, models):
        self._models = models

    def models(self):
        return self._models


@pytest.mark.parametrize("taesd_cached, encoder, announced", [
    (False, "auto", True), (True, "auto", False), (False, "vae", False),
])
def test_the_worker_says_when_taesd_is_downloaded_first(tmp_path, taesd_cached, encoder, announced):
    entry = {"id": "org/sd", "prior": "stable-diffusion", "model": "org/sd", "cached": True, "default": True,
             "taesd_cached": taesd_cached}
    queued: queue.Queue = queue.Queue()
    request = contract.job_request("a red ball", preset="standard", prior="stable-diffusion", encoder=encoder)
    settings = jobs.Settings("REMOTE", "", str(tmp_path), "", "", "stable-diffusion", "")
    assert jobs.JobWorker(settings, [request], queued)._announce_model(_ModelsOnly([entry]))
    assert [queued.get_nowait() for _ in range(queued.qsize())] == [events.Models([entry]), events.Taesd(announced)]


def test_the_worker_submits_nothing_for_a_model_the_server_lacks(tmp_path):
    entry = {"id": "org/sd", "label": "SD (hub)", "prior": "stable-diffusion", "model": "org/sd", "cached": False,
             "default": True, "taesd_cached": True}
    queued: queue.Queue = queue.Queue()
    request = contract.job_request("a red ball", prior="stable-diffusion")
    settings = jobs.Settings("REMOTE", "", str(tmp_path), "", "", "stable-diffusion", "")
    assert not jobs.JobWorker(settings, [request], queued)._announce_model(_ModelsOnly([entry]))
    assert [queued.get_nowait() for _ in range(queued.qsize())] == [
        events.Models([entry]), events.NotDownloaded("SD (hub) is not downloaded yet: press Download above Generate")]


class InfoServer:
    """/v1/health answers; /v1/models answers ``models``, or 500 when it is None."""

    def __init__(self, models):
        class Handler(JsonHandler):
            def do_GET(self):
                if self.path == "/v1/health":
                    return self._send(200, {"version": "fake", "device": "cpu"})
                if models is None:
                    return self._send(500, {"detail": "the model cache is unreadable"})
                self._send(200, {"models": models})

        self.server, self.url = serve(Handler)


@pytest.mark.parametrize("models", [[{"id": "analytic", "prior": "analytic"}], None])
def test_check_server_reports_health_and_models_or_why_not(tmp_path, models):
    server = InfoServer(models)
    queued: queue.Queue = queue.Queue()
    try:
        jobs.server_info(jobs.Settings("REMOTE", "", str(tmp_path), server.url, "tok", "analytic", ""), False, queued)
    finally:
        server.server.shutdown()
    info = queued.get_nowait()
    assert queued.empty()
    if models is not None:
        assert info == events.Info({"version": "fake", "device": "cpu"}, models)
    else:  # a failing /v1/models is said, not taken for "no models"
        assert info.health is None and info.models is None and "the model cache is unreadable" in info.error


def test_check_server_does_not_start_a_stopped_local_backend(tmp_path):
    queued: queue.Queue = queue.Queue()
    assert not jobs.BACKEND.running
    jobs.server_info(jobs.Settings("LOCAL", "/nonexistent/python", str(tmp_path), "", "", "analytic", ""), False,
                     queued)
    assert queued.get_nowait() == events.Info(None, None, "not running (starts on Generate)")
    assert not jobs.BACKEND.running


def test_detects_the_nfsd_command_on_path(tmp_path, monkeypatch):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    python = executable(tmp_path / "venv" / "bin" / "python", "#!/bin/sh\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    executable(bindir / "nfsd", f"#!{python}\nimport sys\n")
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setattr(backend, "DEFAULT_VENV", tmp_path / "nowhere")
    assert backend.detect_python() == str(python)
    # pip's form for interpreter paths too long for a shebang
    executable(bindir / "nfsd", f"#!/bin/sh\n'''exec' {python} \"$0\" \"$@\"\n' '''\n")
    assert backend.detect_python() == str(python)


def test_detects_the_documented_venv_and_says_nothing_when_there_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(backend, "DEFAULT_VENV", tmp_path / "nfsd-backend")
    monkeypatch.setattr(backend, "__file__", str(tmp_path / "ext" / "nfsd_blender" / "backend.py"))
    assert backend.detect_python() == ""
    (tmp_path / "nfsd-backend" / "bin").mkdir(parents=True)
    python = executable(tmp_path / "nfsd-backend" / "bin" / "python", "#!/bin/sh\n")
    assert backend.detect_python() == str(python)


def _fake_server_python(tmp_path: Path) -> Path:
    """A 'python' that boots slowly like the real backend (prints its port line after 1 s, exits when its stdin
    closes) and counts how often it was started."""
    return executable(tmp_path / "python", f"""#!/bin/sh
echo started >> {tmp_path}/spawns
sleep 1
echo '{{"port": 1, "version": "fake"}}'
cat > /dev/null
""")


def _start_in_thread(local, python, data_dir, errors) -> threading.Thread:
    """``local.start`` as the add-on calls it: from a worker thread, its BackendError collected in ``errors``."""

    def start():
        try:
            local.start(str(python), str(data_dir))
        except BackendError as err:
            errors.append(str(err))

    thread = threading.Thread(target=start)
    thread.start()
    return thread


def test_one_backend_even_when_generate_races_start_backend(tmp_path):
    python = _fake_server_python(tmp_path)
    local = backend.LocalBackend()
    errors = []
    # Start Backend, Generate and Check Server pressed together
    threads = [_start_in_thread(local, python, tmp_path / "data", errors) for _ in range(3)]
    for t in threads:
        t.join(30)
    try:
        assert not errors and local.running
        assert (tmp_path / "spawns").read_text().count("started") == 1
    finally:
        proc = local.proc
        local.stop()
    assert proc.poll() is not None


def test_stop_while_booting_leaves_no_backend(tmp_path):
    python = _fake_server_python(tmp_path)
    local = backend.LocalBackend()
    errors = []
    t = _start_in_thread(local, python, tmp_path / "data", errors)
    deadline = time.monotonic() + 10
    while not local.booting and time.monotonic() < deadline:
        time.sleep(0.01)
    booting = local._booting
    local.stop()
    t.join(30)
    assert not local.running and booting.poll() is not None
    assert errors and "stopped" in errors[0]
    assert os.environ.get("NFSD_TOKEN") is None  # the token goes to the child only


def test_a_stopped_local_backend_is_not_retried(tmp_path, monkeypatch):
    server = FlakyServer(failures=99, fail_status=503)
    queued: queue.Queue = queue.Queue()
    monkeypatch.setattr(jobs, "make_client", lambda settings, events=None: Client(server.url, "tok"))
    assert not jobs.BACKEND.running  # as after Stop Backend
    worker = jobs.JobWorker(jobs.Settings("LOCAL", "", str(tmp_path), "", "", "analytic", ""), [], queued,
                            resume=["j1"])
    worker.start()
    worker.join(20)
    server.close()
    assert server.status_calls == 1
    assert isinstance(queued.get_nowait(), events.Backend)
    assert queued.get_nowait() == events.Interrupted("j1", "The backend was stopped while the job ran")

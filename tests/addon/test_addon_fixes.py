"""Setup-trial fixes in the add-on's bpy-free parts: phase texts, queue position, the batch's count and bar, a
result that arrives cut short, Check Server that authenticates, and a 422 said once."""

import queue
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fake_http import JsonHandler, serve

from nfsd_blender import events, jobs, progress
from nfsd_blender.client import BackendError, Client

GLB = b"glTF" + (2).to_bytes(4, "little") + (20).to_bytes(4, "little") + b"\0" * 8  # a 20-byte GLB header


def test_before_the_server_answers_the_phase_says_what_happens():
    assert progress.phase("starting") == ("sending the job to the server…", 0.0)


@pytest.mark.parametrize("position, text", [(0, "queued (1 ahead)"), (2, "queued (3 ahead)"), (-1, "queued")])
def test_queued_behind_the_running_job_counts_it(position, text):
    # the server's 0 means "runs next": the running job is still ahead of it
    assert progress.phase("queued", queue_position=position)[0] == text


def test_variations_are_counted_and_the_bar_never_goes_back():
    text, frac = progress.phase("running", 50, 100, job_index=1, job_count=3)
    assert text == "2 of 3 · training 50/100" and frac == pytest.approx(1.5 / 3)
    # the second variation queued right after the first finished: the bar stays at a third
    assert progress.phase("queued", job_index=1, job_count=3) == ("2 of 3 · queued", pytest.approx(1 / 3))
    assert progress.phase("running", 50, 100) == ("training 50/100", 0.5)


def test_glb_problem_names_a_cut_short_file():
    assert jobs.glb_problem(GLB) == ""
    assert jobs.glb_problem(GLB[:15]) == "15 of its 20 bytes"
    assert jobs.glb_problem(b"<html>") == "not a binary glTF (6 bytes)"


class ResultServer:
    """A done job j1 whose result.glb arrives cut short ``broken`` times, then whole; health says whether the
    token was right."""

    def __init__(self, broken, token_ok=True):
        self.glb_calls = 0
        outer = self

        class Handler(JsonHandler):
            def do_GET(self):
                if self.path == "/v1/health":
                    return self._send(200, {"version": "fake", "device": "cpu", "authenticated": token_ok})
                if self.path == "/v1/models":
                    return self._send(200, {"models": []})
                if self.path.endswith("/result.glb"):
                    outer.glb_calls += 1
                    data = GLB[:15] if outer.glb_calls <= broken else GLB
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return self.wfile.write(data)
                self._send(200, {"id": "j1", "state": "done", "step": 10, "total": 10, "has_preview": False,
                                 "request": {}})

        self.server, self.url = serve(Handler)


def _follow_done(server, tmp_path):
    queued: queue.Queue = queue.Queue()
    settings = jobs.Settings("REMOTE", "", str(tmp_path), server.url, "tok", "analytic", "")
    worker = jobs.JobWorker(settings, [], queued, resume=["j1"])
    worker.start()
    worker.join(20)
    server.server.shutdown()
    return [queued.get_nowait() for _ in range(queued.qsize())]


def test_a_result_cut_short_is_fetched_again(tmp_path):
    server = ResultServer(broken=2)
    seen = _follow_done(server, tmp_path)
    assert server.glb_calls == 3
    done = seen[-1]
    assert isinstance(done, events.Done) and Path(done.glb).read_bytes() == GLB


def test_a_result_that_stays_broken_is_an_error_not_a_file(tmp_path):
    server = ResultServer(broken=99)
    seen = _follow_done(server, tmp_path)
    assert server.glb_calls == jobs.GLB_TRIES
    assert isinstance(seen[-1], events.Error)
    assert seen[-1].message == ("The result arrived broken 3 times (15 of its 20 bytes) (press Re-import in History "
                                "to fetch it again)")
    assert not (tmp_path / "blender" / "j1.glb").exists()


def test_check_server_with_a_wrong_token_is_not_ready(tmp_path):
    server = ResultServer(broken=0, token_ok=False)
    queued: queue.Queue = queue.Queue()
    try:
        jobs.server_info(jobs.Settings("REMOTE", "", str(tmp_path), server.url, "wrong", "analytic", ""), False,
                         queued)
    finally:
        server.server.shutdown()
    assert queued.get_nowait() == events.Info(
        None, None, "The server refused the token: copy the server's token (its --token or NFSD_TOKEN) into the add-on "
        "preferences")


def test_a_422_says_its_problem_once():
    class Handler(JsonHandler):
        def do_POST(self):
            self._send(422, {"detail": [{"loc": ["body", "prompt"], "msg": "String should have at most 1000 characters",
                                         "type": "string_too_long"}],
                             "hint": "fix prompt: String should have at most 1000 characters"})

    server, url = serve(Handler)
    try:
        with pytest.raises(BackendError) as err:
            Client(url).submit({"prompt": "x"})
    finally:
        server.shutdown()
    assert str(err.value) == "prompt: String should have at most 1000 characters"

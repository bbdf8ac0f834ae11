"""Downloading a model from the panel, in headless bpy from the built zip, against a server that answers like
/v1/models/downloads: the line above Generate says what the default model weighs, Generate offers the download
instead of failing, the menu shows "downloading 41%", Cancel Download works, and a finished download clears it."""

import json
import threading

import pytest

bpy = pytest.importorskip("bpy")

import ui_recorder
from addon_helpers import addon_module, pump
from fake_http import JsonHandler, serve
from test_addon_artist import _before_generate

SD = "stabilityai/stable-diffusion-2-1-base"


class DownloadServer:
    """The default model, not cached until its download is done; the download goes planning → running 41% →
    (``release`` set) done, or cancelled on DELETE."""

    def __init__(self):
        self.release = threading.Event()
        self.state, self.posted, self.deleted = None, [], 0
        outer = self

        class Handler(JsonHandler):
            def do_GET(self):
                if self.path == "/v1/health":
                    return self._send(200, {"version": "9.9", "device": "cpu", "authenticated": True})
                if self.path == "/v1/models":
                    return self._send(200, {"models": [outer.entry()]})
                if self.path == "/v1/models/downloads":
                    return self._send(200, {"downloads": [outer.status()] if outer.state else []})
                outer.advance()
                self._send(200, outer.status())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posted.append(body["model"])
                outer.state = "planning"
                self._send(202, outer.status())

            def do_DELETE(self):
                outer.deleted += 1
                outer.state = "cancelled"
                self._send(200, outer.status())

        self.server, self.url = serve(Handler)

    def entry(self):
        cached = self.state == "done"
        return {"id": SD, "label": SD, "prior": "stable-diffusion", "model": SD, "cached": cached,
                "size_bytes": 4_861_000_000 if cached else None, "download_bytes": None if cached else 5_160_000_000,
                "default": True, "taesd_cached": True}

    def advance(self):
        if self.state == "planning":
            self.state = "running"
        elif self.state == "running" and self.release.is_set():
            self.state = "done"

    def status(self):
        done = {"planning": 0, "running": 2_000_000_000, "done": 4_861_000_000}.get(self.state, 2_000_000_000)
        return {"id": "d1", "model": SD, "state": self.state, "bytes_done": done,
                "total_bytes": None if self.state == "planning" else 4_861_000_000, "files": [], "error": None,
                "hint": None}


@pytest.fixture
def server(prefs):
    server = DownloadServer()
    prefs.mode, prefs.url, prefs.token, prefs.default_prior = "REMOTE", server.url, "t", "stable-diffusion"
    prefs.model = ""
    yield server
    server.release.set()
    server.server.shutdown()


def test_the_default_model_says_it_is_missing_and_generate_offers_the_download(props, prefs, server):
    state = addon_module("state")
    props.prompt = "a hamburger"
    # Nobody asked the server yet: the panel says so instead of implying the model is there.
    assert _before_generate(ui_recorder.draw(bpy.types.NFSD_PT_main)) == [
        f"Refresh Models to see whether {SD} is downloaded"]
    assert bpy.ops.nfsd.refresh_models() == {"FINISHED"}
    pump(lambda: state.current.models, 10, "the model list")
    log = ui_recorder.draw(bpy.types.NFSD_PT_main)
    assert _before_generate(log) == [f"{SD} is not downloaded (5.2 GB)"]
    assert any(e[:2] == ("operator", "nfsd.download_model") for e in log)
    with pytest.raises(RuntimeError, match="is not downloaded yet: press Download above Generate"):
        bpy.ops.nfsd.generate()
    assert not state.busy()

    assert bpy.ops.nfsd.download_model() == {"FINISHED"}
    pump(lambda: (state.download_of(SD) or {}).get("state") == "running", 10, "the download to run")
    assert server.posted == [SD]
    menu = [e[2] for e in ui_recorder.draw(bpy.types.NFSD_MT_models) if e[0] == "operator"]
    assert f"{SD} (downloading 41% of 4.9 GB)" in menu
    main = ui_recorder.draw(bpy.types.NFSD_PT_main)
    assert ("progress", f"{SD}: downloading 41% of 4.9 GB", pytest.approx(2 / 4.861, abs=1e-3)) in main
    assert any(e[:2] == ("operator", "nfsd.cancel_download") for e in main)
    server.release.set()
    pump(lambda: not state.downloading(), 10, "the download to finish")
    assert state.current.models[0]["cached"] is True
    assert _before_generate(ui_recorder.draw(bpy.types.NFSD_PT_main)) == []


def test_cancel_download_tells_the_server(props, prefs, server):
    state = addon_module("state")
    state.current.models = [server.entry()]
    assert bpy.ops.nfsd.download_model() == {"FINISHED"}
    pump(lambda: (state.download_of(SD) or {}).get("state") == "running", 10, "the download to run")
    assert bpy.ops.nfsd.cancel_download() == {"FINISHED"}
    pump(lambda: not state.downloading(), 10, "the cancel")
    assert server.deleted == 1 and state.download_of(SD)["state"] == "cancelled"
    assert _before_generate(ui_recorder.draw(bpy.types.NFSD_PT_main)) == [f"{SD} is not downloaded (5.2 GB)"]

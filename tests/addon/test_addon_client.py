"""client.py against a stdlib fake server (no bpy), and the add-on's import hygiene."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fake_http import JsonHandler, serve

from nfsd_blender.client import BackendError, Client


class Handler(JsonHandler):
    def do_GET(self):
        if self.path == "/v1/health":
            return self._send(200, {"version": "1.0", "device": "cpu", "models_loaded": []})
        if self.headers.get("Authorization") != "Bearer good":
            return self._send(401, {"detail": "Missing or wrong token", "hint": "use the token the server printed"})
        return self._send(404, {"detail": "No job abc", "hint": None})

    def do_POST(self):
        if self.headers.get("Authorization") != "Bearer good":
            return self._send(401, {"detail": "bad token"})
        self._send(422, {"detail": [{"loc": ["body", "prompt"], "msg": "String should have at least 1 character"}]})


@pytest.fixture(scope="module")
def url():
    server, url = serve(Handler)
    yield url
    server.shutdown()


def test_health_needs_no_token(url):
    assert Client(url).health()["device"] == "cpu"


def test_a_refused_token_has_one_wording_whatever_the_server_says(url):
    """Every 401 (and health's authenticated: false, in handlers.token_problem) reads the same, one action."""
    with pytest.raises(BackendError) as err:
        Client(url, "wrong").status("abc")
    assert err.value.status == 401 and err.value.hint is None
    assert str(err.value) == ("The server refused the token: copy the server's token (its --token or NFSD_TOKEN) "
                              "into the add-on preferences")
    with pytest.raises(BackendError) as err:
        Client(url, "").submit({"prompt": "x"})
    assert str(err.value).startswith("The server needs a token: copy the server's token")


def test_404_detail(url):
    with pytest.raises(BackendError, match="No job abc") as err:
        Client(url, "good").status("abc")
    assert err.value.status == 404


def test_422_list_detail_is_readable(url):
    with pytest.raises(BackendError) as err:
        Client(url, "good").submit({"prompt": ""})
    assert str(err.value) == "prompt: String should have at least 1 character"


def test_unreachable_is_clear():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(BackendError, match="Cannot reach the server") as err:
        Client(url, "x", timeout=2).health()
    # A remote server is the artist's to check, not to start; a local one is the add-on's to restart.
    assert err.value.hint == "check the URL in the add-on preferences, and that the server is running there"
    assert str(err.value).count(url) == 1
    with pytest.raises(BackendError) as err:
        Client(url, "x", timeout=2, mode="LOCAL").health()
    assert "press Stop Backend, then Start Backend" in err.value.hint


def test_addon_imports_no_torch_or_numpy():
    banned = {"torch", "numpy"}
    for path in (ROOT / "nfsd_blender").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"


def test_client_and_backend_do_not_import_bpy():
    for name in ("client.py", "backend.py", "jobs.py", "progress.py", "contract.py"):
        src = (ROOT / "nfsd_blender" / name).read_text()
        assert "import bpy" not in src, name

"""The hub probe behind "not cached and offline": every network step of it is bounded."""

import socket
import threading

import pytest

from nfsd_server import model_source


@pytest.fixture
def online(monkeypatch):
    """No offline flag (tests/conftest.py sets one): the probe really looks the hub up."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.nfsd.test:8080")


def probe_in_thread(call) -> tuple[threading.Thread, list]:
    """Run ``call`` in a daemon thread, so a probe that hangs fails the test instead of hanging the suite."""
    answers = []
    thread = threading.Thread(target=lambda: answers.append(call()), daemon=True)
    thread.start()
    thread.join(30)  # far above the probe's bound: only a hang gets here
    return thread, answers


def test_a_resolver_that_never_answers_makes_the_hub_unreachable_not_a_hang(online, monkeypatch):
    asked, release = threading.Event(), threading.Event()

    def blocking_getaddrinfo(*args, **kwargs):
        asked.set()
        release.wait()  # a broken resolver: no answer, no error
        raise socket.gaierror("resolver gave up")

    monkeypatch.setattr(socket, "getaddrinfo", blocking_getaddrinfo)
    try:
        thread, answers = probe_in_thread(lambda: model_source.hub_reachable(timeout_s=0.2))
        assert asked.is_set()
        assert not thread.is_alive(), "hub_reachable waited on a resolver that never answers"
        assert answers == [False]
    finally:
        release.set()


def test_an_uncached_hub_id_with_a_hung_resolver_gets_the_offline_message(online, monkeypatch):
    release = threading.Event()

    def blocking_getaddrinfo(*args, **kwargs):
        release.wait()
        return []

    monkeypatch.setattr(socket, "getaddrinfo", blocking_getaddrinfo)

    def check() -> str:
        with pytest.raises(ValueError) as error:
            model_source.check_model("nobody/no-such-model")
        return str(error.value)

    try:
        thread, answers = probe_in_thread(check)
        assert not thread.is_alive(), "check_model waited on a resolver that never answers"
        assert "is not in this server's model cache" in answers[0] and "offline" in answers[0]
    finally:
        release.set()


def test_a_resolved_hub_that_accepts_the_connect_is_reachable(online, monkeypatch):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        looked_up = []

        def local_getaddrinfo(host, port_asked, *args, **kwargs):
            looked_up.append((host, port_asked))
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]

        monkeypatch.setattr(socket, "getaddrinfo", local_getaddrinfo)
        assert model_source.hub_reachable(timeout_s=5.0) is True
        assert looked_up == [("hub.nfsd.test", 8080)]

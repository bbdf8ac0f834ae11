"""Fixtures of the add-on's bpy tests: the built zip installed once per module, the scene's NFSD properties
reset after each test, and a fake server. bpy is imported inside them, so the bpy-free tests run without it."""

import sys

import pytest

from addon_helpers import PKG, FakeServer, addon_module, build_zip


@pytest.fixture(scope="session")
def zip_path(tmp_path_factory):
    return build_zip(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def prefs(zip_path, tmp_path_factory):
    import bpy

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
    """The scene's NFSD properties, with no job, worker, history or server answers before and after the test
    (a module before may have left a reopened file's history)."""
    import bpy

    _reset(prefs)
    yield bpy.context.scene.nfsd
    _reset(prefs)


def _reset(prefs):
    import bpy

    current = addon_module("state").current
    if current.worker is not None:
        current.worker.stop_event.set()
        current.worker.join(10)
    current.worker = None
    if current.download is not None:
        current.download.stop_event.set()
        current.download.join(10)
    current.download, current.models, current.downloads = None, [], []
    while not addon_module("jobs").EVENTS.empty():
        addon_module("jobs").EVENTS.get()
    p = bpy.context.scene.nfsd
    p.error = p.error_details = p.job_state = p.job_phase = p.job_id = ""
    p.prior = p.model = ""
    p.variations = 1
    p.job_index, p.job_count = 0, 1  # a batch of variations before must not show as "3 of 3" here
    p.preset = addon_module("contract").DEFAULT_PRESET
    prefs.encoder = addon_module("contract").DEFAULT_ENCODER
    p.history.clear()
    prefs.mode, prefs.python_path = "LOCAL", sys.executable
    addon_module("backend").BACKEND.stop()


@pytest.fixture
def fake_server(prefs):
    server = FakeServer()
    prefs.mode, prefs.url, prefs.token = "REMOTE", server.url, "t"
    yield server
    server.close()

"""Hostile or broken inputs outside the HTTP layer get errors that say what is wrong and how to fix it: init
meshes, checkpoints, model folders with pickled weights, prompts with control characters, a read-only data dir,
and a farm worker killed between step checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import struct
import warnings

import pytest
import trimesh

from nfsd_contract import resolve_spec
from nfsd_server.scene.mesh_files import MeshError, load_mesh, parse_mesh


def _glb_with(change) -> bytes:
    """A box's GLB with ``change(document)`` applied to its JSON chunk."""
    glb = trimesh.creation.box().export(file_type="glb")
    (json_length,) = struct.unpack_from("<I", glb, 12)
    document = json.loads(glb[20 : 20 + json_length])
    change(document)
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    body = struct.pack("<II", len(text), 0x4E4F534A) + text + glb[20 + json_length :]
    return b"glTF" + struct.pack("<II", 2, 12 + len(body)) + body


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda document: document["buffers"][0].update(uri="textures/outside.bin"),
         "keeps buffer 0 in another file ('textures/outside.bin'); export it as one self-contained"),
        (lambda document: document["bufferViews"][0].update(byteLength=12 * 2**30),
         "bufferView 0 ends at byte 12884901888, past the end of its"),
        (lambda document: document.update(bufferViews="not a list"), "its JSON does not follow glTF"),
    ],
)
def test_a_glb_that_cannot_load_says_why(change, message):
    with pytest.raises(MeshError, match="init mesh 'x.glb'") as raised:  # before: "'NoneType' object is not subscriptable"
        parse_mesh(_glb_with(change), "glb", "x.glb")
    assert message in str(raised.value)


def test_a_glb_parse_error_without_a_message_is_named(monkeypatch):
    def raise_bare(*args, **kwargs):
        raise ValueError()

    monkeypatch.setattr(trimesh, "load", raise_bare)
    with pytest.raises(MeshError, match=r"is not a readable GLB file: ValueError$"):
        parse_mesh(trimesh.creation.box().export(file_type="glb"), "glb", "x.glb")


def test_huge_coordinates_are_refused_by_name_without_overflow_warnings():
    data = b"v 0 0 0\nv 1e308 0 0\nv 0 1e308 0\nf 1 2 3\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before: numpy overflow warnings, then "degenerate"
        with pytest.raises(MeshError, match=r"coordinates as large as 1e\+308; the limit is 1e\+09 \(apply the"):
            parse_mesh(data, "obj", "far.obj")


def test_a_folder_or_fifo_named_like_a_mesh_is_not_a_regular_file(tmp_path):
    (tmp_path / "folder.obj").mkdir()
    os.mkfifo(tmp_path / "pipe.obj")
    for name in ("folder.obj", "pipe.obj"):
        with pytest.raises(MeshError, match="is not a regular file"):  # before: "does not exist"
            load_mesh(tmp_path / name)
    with pytest.raises(MeshError, match="does not exist"):
        load_mesh(tmp_path / "missing.obj")


def test_a_checkpoint_missing_its_parts_says_which(tmp_path):
    from nfsd_server.checkpoints import CheckpointError, write_checkpoint
    from nfsd_server.resume import load_checkpoint

    write_checkpoint(tmp_path / "a.safetensors", {}, {"step": 3})
    with pytest.raises(CheckpointError, match="it has no 'field_config' entry; export from another checkpoint"):
        load_checkpoint(tmp_path / "a.safetensors")


def test_a_prompt_ending_in_a_control_character_is_refused():
    for prompt in ("a red ball\x1c", "a red ball\n", "\x1fa red ball"):  # str.strip took them all before the check
        with pytest.raises(ValueError, match="contains the control character"):
            resolve_spec(prompt)
    assert resolve_spec("\u3000 a red ball \u00a0").prompt == "a red ball"  # spaces still go


def test_a_prompt_ending_in_a_control_character_is_422_over_http(tmp_path):
    from fastapi.testclient import TestClient

    from nfsd_server.api.app import ServerConfig, create_app

    app = create_app(ServerConfig(data_dir=tmp_path, token=None), start_worker=False)
    with TestClient(app) as client:
        response = client.post("/v1/jobs", json={"prompt": "a red ball\x1c"})
    assert response.status_code == 422 and "control character" in response.text


def test_serve_refuses_a_data_dir_it_cannot_write(tmp_path, capsys, monkeypatch):
    import errno

    import nfsd_server.api.server as server
    from nfsd_server.cli import main

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(server, "write_atomic", read_only)
    monkeypatch.setattr(server, "bind_socket", lambda *a: pytest.fail("started on a read-only data dir"))
    assert main(["serve", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not writable (Read-only file system)" in err and err.count("\n") == 1


def test_a_model_with_only_pickled_weights_is_not_loaded_and_says_so(tiny_sd_dir, tmp_path):
    from nfsd_server.guidance.registry import load_prior
    from nfsd_server.guidance.stable_diffusion import ModelLoadError

    model = shutil.copytree(tiny_sd_dir, tmp_path / "model")
    for weights in (model / "unet").glob("*.safetensors"):
        weights.unlink()
    # Not even a pickle: were it opened, the error would be torch's, not ours.
    (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(ModelLoadError, match=r"unet of model folder .* has only pickled weights "
                                             r"\(diffusion_pytorch_model.bin\), which this server does not load"):
        load_prior("stable-diffusion", str(model), "cpu")


class _Killed(Exception):
    """Stands for a SIGKILL between two steps."""


def test_farm_workers_checkpoint_by_time_so_a_kill_loses_little(tmp_path, monkeypatch):
    from nfsd_server.checkpoints import read_checkpoint_info
    from nfsd_server.farm import WORKER_TRAIN_CONFIG, worker_generate
    from nfsd_server.farm.batch_command import local_executor
    from nfsd_server.guidance.registry import load_prior
    from nfsd_server.train import CHECKPOINT_NAME, Callbacks, TrainConfig, train

    def kill_at_step_2(step, total, loss, eta_s):
        if step == 2:
            raise _Killed

    # By steps alone (every 200) the kill at step 2 would leave no checkpoint: the batch restarted from 0.
    spec = resolve_spec("a red ball", prior="analytic", preset="draft", steps=4, seed=1)
    with pytest.raises(_Killed):
        train(spec, load_prior("analytic", None, "cpu"), tmp_path, Callbacks(on_progress=kill_at_step_2),
              config=TrainConfig(checkpoint_every_s=0.0))
    assert read_checkpoint_info(tmp_path / CHECKPOINT_NAME)["step"] == 1

    passed = {}
    monkeypatch.setattr("nfsd_server.pipeline.run_job", lambda *a, **k: passed.update(k))
    local_executor("cpu", load_prior_fn=lambda *a, **k: None).run(spec, tmp_path, Callbacks())
    assert passed["generate"] is worker_generate and WORKER_TRAIN_CONFIG.checkpoint_every_s == 60.0

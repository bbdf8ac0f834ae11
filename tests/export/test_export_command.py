"""`nfsd export CHECKPOINT --out x.glb` end to end on a real (one-step) training checkpoint."""

from __future__ import annotations

import pytest

from nfsd_server.cli import main
from nfsd_server.export.glb import ExportSettings

FAST = ["--grid-resolution", "40", "--texture-size", "512", "--poly-budget", "2000"]


@pytest.fixture(scope="module")
def checkpoint(tiny_sd_prior, tmp_path_factory):
    from nfsd_contract import resolve_spec
    from nfsd_server.train import Trainer

    out_dir = tmp_path_factory.mktemp("run")
    return Trainer(resolve_spec("a hamburger", preset="draft", steps=1), tiny_sd_prior, out_dir).save_checkpoint()


def test_export_writes_the_glb_and_prints_its_path(checkpoint, tmp_path, capsys):
    out = tmp_path / "burger.glb"
    assert main(["export", str(checkpoint), "--out", str(out), *FAST, "--height", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:4] == b"glTF"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--texture-size", "100"], "texture_size must be one of (512, 1024, 2048), got 100"),
        (["--poly-budget", "5"], "poly_budget must be in 100..500000, got 5"),
        (["--height", "-1"], "height -1.0"),
        (["--grid-resolution", "4096"], "grid_resolution 4096"),
    ],
)
def test_bad_numbers_exit_2_with_one_line(checkpoint, tmp_path, capsys, arguments, message):
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "x.glb"), *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x.glb")]) == 2
    assert "nope.pt" in capsys.readouterr().err


def test_not_a_checkpoint_exits_2(tmp_path, capsys):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    assert main(["export", str(bogus), "--out", str(tmp_path / "x.glb")]) == 2
    assert "bogus.pt" in capsys.readouterr().err


def test_missing_out_folder_exits_2(checkpoint, tmp_path, capsys):
    out = tmp_path / "missing" / "x.glb"
    assert main(["export", str(checkpoint), "--out", str(out), *FAST]) == 2
    assert "missing" in capsys.readouterr().err


def test_a_threshold_above_the_field_exits_2_suggesting_a_lower_one(checkpoint, tmp_path, capsys):
    out = tmp_path / "x.glb"
    assert main(["export", str(checkpoint), "--out", str(out), *FAST, "--threshold", "1e9"]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert not out.exists()


def test_cli_defaults_are_the_export_defaults():
    from nfsd_server.cli import build_parser

    args = build_parser("export").parse_args(["export", "c.pt", "--out", "x.glb"])
    # The values an artist gets without flags (the contract's poly budget and texture size, the field's own
    # surface density); and building ExportSettings from them must accept them.
    assert (args.poly_budget, args.texture_size, args.grid_resolution, args.threshold, args.height) == (
        20_000, 1024, 256, None, 1.0
    )
    ExportSettings(args.grid_resolution, args.threshold, args.poly_budget, args.texture_size, args.height)


class RunsACommand:
    """Unpickling this calls os.system: what a hostile checkpoint does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_hostile_pickle_checkpoint_is_refused_without_running_it(tmp_path, capsys, writer):
    import pickle

    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"format": 1, "field": RunsACommand(f"touch {marker}")}
    if writer == "pickle":
        evil.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, evil)
    assert main(["export", str(evil), "--out", str(tmp_path / "x.glb")]) == 2
    error = capsys.readouterr().err
    assert not marker.exists()  # the command in the pickle never ran
    assert error.count("\n") == 1 and "evil.pt" in error and "not an nfsd checkpoint" in error
    assert not (tmp_path / "x.glb").exists()


def test_checkpoint_is_safetensors_data_with_json_metadata(checkpoint):
    import json

    from safetensors import safe_open

    assert checkpoint.suffix == ".safetensors"
    with safe_open(str(checkpoint), framework="pt") as handle:
        info = json.loads(handle.metadata()["nfsd_checkpoint"])
        keys = set(handle.keys())
        generator = handle.get_tensor("generator")
    assert info["format"] == 2 and info["step"] == 0 and info["metadata"]["prompt"] == "a hamburger"
    assert generator.dtype.is_floating_point is False and generator.numel() > 0
    assert any(key.startswith("field.") for key in keys)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--height", "inf"], "--height must be a finite number, got inf"),
     (["--threshold", "inf"], "--threshold must be a finite number, got inf")],
)
def test_non_finite_numbers_exit_2_instead_of_a_nan_glb(checkpoint, tmp_path, capsys, arguments, message):
    out = tmp_path / "x.glb"
    assert main(["export", str(checkpoint), "--out", str(out), *FAST, *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not out.exists()


def test_out_naming_a_folder_exits_2(checkpoint, tmp_path, capsys):
    assert main(["export", str(checkpoint), "--out", str(tmp_path), *FAST]) == 2
    error = capsys.readouterr().err
    assert "is a folder; name the file to write" in error and error.count("\n") == 1


def _init_mesh_checkpoint(tmp_path, keep_geometry: bool):
    """A one-step analytic checkpoint trained on an off-origin cube (side 2, centre (3, −1, 2)), and that cube."""
    import trimesh

    from nfsd_server.guidance.analytic import AnalyticPrior
    from nfsd_contract import resolve_spec
    from nfsd_server.train import Trainer

    cube = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    cube.apply_translation((3.0, -1.0, 2.0))
    mesh_path = tmp_path / "cube.ply"
    cube.export(mesh_path)
    settings = resolve_spec("a red ball", preset="draft", steps=1, seed=0, prior="analytic", init_mesh=mesh_path,
                            keep_geometry=keep_geometry)
    return Trainer(settings, AnalyticPrior(latent_size=8), tmp_path / "run").save_checkpoint(), mesh_path, cube


def _glb_vertices(path):
    import numpy as np
    import trimesh

    from nfsd_server.scene.mesh_files import Y_UP_TO_Z_UP

    return np.asarray(trimesh.load(path, force="mesh", process=False).vertices) @ Y_UP_TO_Z_UP.T


@pytest.mark.parametrize("keep_geometry", [False, True], ids=["shape", "texture"])
def test_an_init_mesh_checkpoint_exports_where_the_mesh_was(tmp_path, capsys, keep_geometry):
    import numpy as np

    checkpoint, _, cube = _init_mesh_checkpoint(tmp_path, keep_geometry)
    out = tmp_path / "again.glb"
    assert main(["export", str(checkpoint), "--out", str(out), *FAST]) == 0
    vertices = _glb_vertices(out)
    if keep_geometry:  # baked onto the cube itself: its own 8 corners, not a marching-cubes surface
        np.testing.assert_allclose(np.unique(vertices.round(6), axis=0), np.unique(cube.vertices, axis=0), atol=1e-5)
    else:  # a new surface, on the cube's bounds (within a 40³ export voxel, 0.2 world units here)
        np.testing.assert_allclose(vertices.min(axis=0), cube.bounds[0], atol=0.2)
        np.testing.assert_allclose(vertices.max(axis=0), cube.bounds[1], atol=0.2)


def test_an_init_mesh_checkpoint_whose_mesh_is_gone_exits_2_naming_it(tmp_path, capsys):
    checkpoint, mesh_path, _ = _init_mesh_checkpoint(tmp_path, keep_geometry=True)
    mesh_path.unlink()
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "x.glb"), *FAST]) == 2
    error = capsys.readouterr().err
    assert str(mesh_path) in error and "no longer there" in error and "put the mesh back" in error
    mesh_path.write_bytes(b"ply\nnot the same mesh")
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "x.glb"), *FAST]) == 2
    assert "has changed" in capsys.readouterr().err

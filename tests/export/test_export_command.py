"""`nfsd export CHECKPOINT --out x.glb` end to end on a real (one-step) training checkpoint."""

from __future__ import annotations

import pytest

from nfsd_server.cli import main
from nfsd_server.export.glb import ExportSettings

FAST = ["--grid-resolution", "40", "--texture-size", "512", "--poly-budget", "2000"]


@pytest.fixture(scope="module")
def checkpoint(tiny_sd_prior, tmp_path_factory):
    from nfsd_server.settings import resolve_settings
    from nfsd_server.train import Trainer

    out_dir = tmp_path_factory.mktemp("run")
    return Trainer(resolve_settings("a hamburger", preset="draft", steps=1), tiny_sd_prior, out_dir).save_checkpoint()


def test_export_writes_the_glb_and_prints_its_path(checkpoint, tmp_path, capsys):
    out = tmp_path / "burger.glb"
    assert main(["export", str(checkpoint), "--out", str(out), *FAST, "--height", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:4] == b"glTF"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--texture-size", "100"], "texture_size must be one of (512, 1024, 2048), got 100"),
        (["--poly-budget", "5"], "poly_budget must be 100..500000 faces, got 5"),
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

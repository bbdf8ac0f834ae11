import os
import subprocess
import sys

import pytest
import torch


def nfsd(*args, cwd=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "nfsd_server", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", ""], "the prompt is empty"),
        (["generate", "a red ball", "--steps", "0"], "--steps must be in 1..100000, got 0"),
        (["generate", "a red ball", "--steps", "-5"], "--steps must be in 1..100000, got -5"),
        (["generate", "a red ball", "--method", "vsd"], "invalid choice: 'vsd'"),
        (["generate", "a red ball", "--guidance-scale", "0"], "--guidance-scale must be > 0"),
        (["generate", "a red ball", "--out", "/proc/nfsd-cannot-write-here"], "--out '/proc/nfsd-cannot-write-here'"),
        (["generate", "a red ball", "--model", "/no/such/model"], "model folder '/no/such/model' does not exist"),
        pytest.param(["generate", "a red ball", "--device", "mps"], "device 'mps': Apple MPS is not available here",
                     marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")),
        (["generate", "a red ball", "--device", "tpu"], "unknown device 'tpu'; expected one of cuda, mps, cpu"),
        (["generate", "a red ball", "--encoder", "tiny"], "invalid choice: 'tiny'"),
        (["generate", "a red ball", "--prior", "analytic", "--encoder", "taesd"], "the analytic prior has one fixed encoder, not 'taesd'"),
    ],
)
def test_bad_arguments_print_one_line_and_exit_2(args, message, tmp_path):
    result = nfsd(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def test_generate_end_to_end_with_the_tiny_model(tiny_sd_dir, tmp_path):
    out = tmp_path / "out"
    result = nfsd(
        "generate", "a hamburger", "--model", str(tiny_sd_dir), "--preset", "draft", "--steps", "6",
        "--poly-budget", "500", "--texture-size", "512", "--out", str(out),
    )
    assert result.returncode == 0, result.stderr
    glb = out / "a-hamburger.glb"
    assert f"glb:        {glb}" in result.stdout
    assert (out / "checkpoint.safetensors").is_file()
    assert sorted(p.name for p in (out / "previews").iterdir())[-1] == "step_000006.png"
    import trimesh

    scene = trimesh.load(glb)
    assert len(scene.geometry) == 1
    mesh = next(iter(scene.geometry.values()))
    assert 0 < len(mesh.faces) <= 500


class RunsACommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("name", ["checkpoint.safetensors", "checkpoint.pt"])
def test_resume_from_a_hostile_checkpoint_exits_2_without_running_it(tmp_path, name):
    import torch

    out, marker = tmp_path / "out", tmp_path / "pwned"
    out.mkdir()
    torch.save({"format": 1, "step": RunsACommand(f"touch {marker}")}, out / name)
    result = nfsd("generate", "a red ball", "--steps", "2", "--out", str(out), "--resume", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and name in lines[0], result.stderr
    assert not marker.exists()


def _checkpoint_of(out, prompt: str) -> None:
    """A real-format checkpoint whose settings say it was trained for ``prompt``."""
    from dataclasses import asdict

    from nfsd_server.checkpoints import write_checkpoint
    from nfsd_contract import resolve_spec
    from nfsd_server.train import CHECKPOINT_NAME

    out.mkdir()
    settings = resolve_spec(prompt, preset="draft", steps=2, seed=0)
    write_checkpoint(out / CHECKPOINT_NAME, {}, {"step": 1, "settings": asdict(settings)})


@pytest.mark.parametrize(
    "case, message",
    [
        ("device-cuda", "device 'cuda': torch sees no CUDA GPU here"),
        ("device-bogus", "unknown device 'bogus'; expected one of cuda, mps, cpu"),
        ("resume-corrupt", "is not an nfsd checkpoint"),
        ("resume-other-prompt", "was trained with prompt='a blue cube', not 'a red ball'"),
        ("model-is-a-file", "is a file, not a folder"),
        ("model-name-too-long", "(4096 characters)"),
    ],
)
def test_generate_mistakes_are_one_line_and_exit_2(tmp_path, case, message):
    out = tmp_path / "out"
    extra = {
        "device-cuda": ["--device", "cuda"], "device-bogus": ["--device", "bogus"],
        "resume-corrupt": ["--resume"], "resume-other-prompt": ["--resume"],
        "model-is-a-file": ["--model", str(tmp_path / "model.safetensors")],
        "model-name-too-long": ["--model", "/" + "m" * 4095],
    }[case]
    if case == "resume-corrupt":
        out.mkdir()
        (out / "checkpoint.safetensors").write_bytes(b"\x00" * 100)
    if case == "resume-other-prompt":
        _checkpoint_of(out, "a blue cube")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    if case == "device-cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    result = nfsd("generate", "a red ball", "--steps", "2", "--out", str(out), *extra, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert len(lines[0]) < 400
def test_bad_init_meshes_print_one_line_and_exit_2(tmp_path):
    import numpy as np
    import trimesh

    (tmp_path / "empty.ply").write_bytes(b"")
    nan_cube = trimesh.creation.box()
    nan_cube.vertices[0] = (np.inf, 0, 0)
    nan_cube.export(tmp_path / "nan.ply")
    trimesh.creation.box().export(tmp_path / "cube.ply")
    cases = [
        (["--init-mesh", "nope.obj"], "--init-mesh: init mesh 'nope.obj' does not exist"),
        (["--init-mesh", "empty.ply"], "--init-mesh: init mesh 'empty.ply' is an empty file"),
        (["--init-mesh", "nan.ply"], "non-finite (NaN or infinite) vertex positions"),
        (["--init-mesh", "cube.ply", "--shape-strength", "1.5"], "--shape-strength must be in 0..1"),
        (["--keep-geometry"], "--keep-geometry needs an init_mesh"),
    ]
    for args, message in cases:
        result = nfsd("generate", "a red ball", *args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], result.stderr


def test_generate_from_an_init_mesh_lands_where_the_mesh_was(tmp_path):
    import numpy as np
    import trimesh

    cube = trimesh.creation.box(extents=(2.0, 2.0, 2.0)).apply_translation((3.0, -1.0, 2.0))
    cube.export(tmp_path / "cube.ply")
    result = nfsd("generate", "a red ball", "--init-mesh", "cube.ply", "--shape-strength", "1", "--steps", "20",
                  "--poly-budget", "500", "--texture-size", "512", "--out", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scene = trimesh.load(tmp_path / "out" / "a-red-ball.glb")
    (mesh,) = scene.geometry.values()
    y_up_to_z_up = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    low, high = (np.asarray(mesh.bounds) @ y_up_to_z_up.T).min(axis=0), (np.asarray(mesh.bounds) @ y_up_to_z_up.T).max(axis=0)
    np.testing.assert_allclose((low + high) / 2, (3.0, -1.0, 2.0), atol=0.1)  # the cube's centre, not the origin
    np.testing.assert_allclose(high - low, (2.0, 2.0, 2.0), rtol=0.1)  # and its size


def test_the_offline_default_is_the_bundled_micro_model_and_the_analytic_prior_a_flag():
    from nfsd_server.cli import build_parser
    from nfsd_server.generate_command import spec_from_args

    def spec(*args):
        return spec_from_args(build_parser("generate").parse_args(["generate", "a red ball", *args]))

    default = spec()
    assert (default.prior, default.model, default.preset, default.encoder) == ("stable-diffusion", "micro", "draft", "taesd")
    assert (spec("--prior", "analytic").prior, spec("--prior", "analytic").model) == ("analytic", None)
    assert spec("--model", "org/other").model == "org/other"

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
        (["generate", "a red ball", "--steps", "0"], "--steps must be a positive integer, got 0"),
        (["generate", "a red ball", "--steps", "-5"], "--steps must be a positive integer, got -5"),
        (["generate", "a red ball", "--method", "vsd"], "invalid choice: 'vsd'"),
        (["generate", "a red ball", "--guidance-scale", "0"], "--guidance-scale must be > 0"),
        (["generate", "a red ball", "--out", "/proc/nfsd-cannot-write-here"], "--out '/proc/nfsd-cannot-write-here'"),
        (["generate", "a red ball", "--model", "/no/such/model"], "model folder '/no/such/model' does not exist"),
        pytest.param(["generate", "a red ball", "--device", "mps"], "device 'mps': Apple MPS is not available here",
                     marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")),
        (["generate", "a red ball", "--device", "tpu"], "unknown device 'tpu'; expected one of cuda, mps, cpu"),
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
    assert (out / "checkpoint.pt").is_file()
    assert sorted(p.name for p in (out / "previews").iterdir())[-1] == "step_000006.png"
    import trimesh

    scene = trimesh.load(glb)
    assert len(scene.geometry) == 1
    mesh = next(iter(scene.geometry.values()))
    assert 0 < len(mesh.faces) <= 500

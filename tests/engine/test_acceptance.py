"""benchmarks/acceptance.py (what benchmarks/gpu.sh runs on CUDA) at tiny scale: it passes, and it fails loudly."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "acceptance.py"


def acceptance(*args):
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_smoke_acceptance_passes_on_cpu():
    result = acceptance()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "acceptance: PASS"
    assert any(line.startswith("step time ÷ UNet floor: ") for line in lines)
    assert any("non-finite at 0 steps" in line for line in lines)


def test_acceptance_fails_with_exit_1_on_a_nan_model(nan_sd_dir):
    result = acceptance("--model", str(nan_sd_dir))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("acceptance: FAIL (the model produced NaN at step 1")

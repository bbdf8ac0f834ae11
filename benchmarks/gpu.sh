#!/usr/bin/env bash
# Pass/fail acceptance run of the real path on a CUDA machine, from a fresh checkout:
#
#     bash benchmarks/gpu.sh            # exit 0: pass; non-zero: a check failed (the last line says which)
#
# Sets up a CUDA venv (outside the repo, so it never clobbers a CPU .venv), installs the backend, then runs
# benchmarks/acceptance.py: SD 2.1-base-sized models with random weights (no downloads), preset "standard",
# STEPS training steps (default 300) on the one torch renderer every device uses; it fails on a non-finite
# loss or prior output, peak VRAM over 8 GiB, or a step costing more than 4× the UNet alone.
# With BENCH=1 it then prints the per-stage step cost of the standard preset (step_cost.py): as shipped (the
# preset's encoder, TAESD), with the VAE instead, and with torch.compile; each ends with minutes_per_asset=,
# nfsd_over_sds= and run_over_unet_floor=. BENCH runs even when a check failed (the exit status stays the checks').
# The log is written to benchmarks-gpu-<date>.log in the current folder (or LOG).
#
# Environment: PYTHON (default python3.11), VENV (default ~/.venvs/nfsd-gpu), TORCH_VERSION (default 2.13.0;
# PyPI's Linux wheels are CUDA builds), TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu128 to choose
# the CUDA version), STEPS (default 300), DTYPE (default auto), BENCH (default 0), SKIP_SETUP=1 to use the
# current python as is (e.g. an already prepared machine).
# A machine with no package index (as lent here): SKIP_SETUP=1 with PYTHONPATH=<deps>:server:. where <deps> holds the
# backend's dependencies (e.g. `pip install --target <deps> --no-index <wheels downloaded elsewhere>`).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-$HOME/.venvs/nfsd-gpu}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
STEPS=${STEPS:-300}
DTYPE=${DTYPE:-auto}
LOG=${LOG:-benchmarks-gpu-$(date -u +%Y%m%dT%H%M%SZ).log}

command -v nvidia-smi >/dev/null || { echo "gpu.sh: no nvidia-smi; this script needs a CUDA machine" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv

if [ "${SKIP_SETUP:-0}" = 1 ]; then
    PY=$(command -v python3 || command -v python)
else
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --upgrade pip
    if ! "$VENV/bin/python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        # torch first and pinned, as in the README; here a CUDA build is what we want.
        "$VENV/bin/python" -m pip install "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    fi
    "$VENV/bin/python" -m pip install -e .
    PY="$VENV/bin/python"
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch has no CUDA: set TORCH_INDEX_URL'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"

run() { echo "\$ $*"; "$PY" "$@"; }
set +e
run benchmarks/acceptance.py --steps "$STEPS" --dtype "$DTYPE" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
if [ "${BENCH:-0}" = 1 ]; then
    {
        run benchmarks/step_cost.py --model random:sd21-base --preset standard --steps 20 --warmup 5
        run benchmarks/step_cost.py --model random:sd21-base --preset standard --steps 20 --warmup 5 --encoder vae
        run benchmarks/step_cost.py --model random:sd21-base --preset standard --steps 20 --warmup 5 --compile
    } 2>&1 | tee -a "$LOG"
fi
echo "log: $LOG"
exit "$status"

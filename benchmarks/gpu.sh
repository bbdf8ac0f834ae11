#!/usr/bin/env bash
# Real-scale step cost on a CUDA machine, from a fresh checkout:
#
#     bash benchmarks/gpu.sh
#
# Sets up a CUDA venv (outside the repo, so it never clobbers a CPU .venv), installs the backend, then measures
# SD 2.1-base-sized models with random weights (no downloads) at the default preset "standard":
#   1. step_cost.py: ~200 steps (100 per method per resolution phase, NFSD and SDS interleaved) → per-stage ms,
#      step ÷ UNet floor, peak VRAM (torch.cuda.max_memory_allocated), projected time of the full 5000-step run;
#   2. the same with the UNet torch.compile'd (TrainConfig.compile_unet);
#   3. scaling.py: step cost vs render side and hash-grid size.
# Everything is printed; the log is also written to benchmarks-gpu-<date>.log in the current folder.
#
# Environment: PYTHON (default python3.11), VENV (default ~/.venvs/nfsd-gpu), TORCH_VERSION (default 2.13.0;
# PyPI's Linux wheels are CUDA builds), TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu128 to choose
# the CUDA version), STEPS (default 100 per method and phase).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-$HOME/.venvs/nfsd-gpu}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
STEPS=${STEPS:-100}
LOG="benchmarks-gpu-$(date -u +%Y%m%dT%H%M%SZ).log"

command -v nvidia-smi >/dev/null || { echo "gpu.sh: no nvidia-smi; this script needs a CUDA machine" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --upgrade pip
if ! "$VENV/bin/python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    # torch first and pinned, as in the README; here a CUDA build is what we want.
    "$VENV/bin/python" -m pip install "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
"$VENV/bin/python" -m pip install -e . ninja   # ninja: nerfacc JIT-builds its CUDA extension (needs nvcc)
"$VENV/bin/python" -c "import torch; assert torch.cuda.is_available(), 'torch has no CUDA: set TORCH_INDEX_URL'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
# Build nerfacc's CUDA extension once, before timing (minutes the first time; without nvcc the
# renderer falls back to the pure-torch sampler and says so).
"$VENV/bin/python" -c "from nfsd_server.scene.renderer import nerfacc_cuda_available as ok; \
print('nerfacc CUDA extension:', ok())"

run() { echo "\$ $*"; "$VENV/bin/python" "$@"; }
{
    run benchmarks/step_cost.py --model random:sd21-base --preset standard --steps "$STEPS" --warmup 5
    run benchmarks/step_cost.py --model random:sd21-base --preset standard --steps "$STEPS" --warmup 5 --compile
    run benchmarks/scaling.py --device cuda --steps 10
} 2>&1 | tee "$LOG"
echo "log: $LOG"

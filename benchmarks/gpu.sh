#!/usr/bin/env bash
# Pass/fail acceptance run of the real path on a CUDA machine, then what a standard asset costs there:
#
#     bash benchmarks/gpu.sh              # exit 0: pass; non-zero: a check failed (the acceptance line says which)
#     bash benchmarks/gpu.sh --cpu-smoke  # any machine, no setup: the same python steps, tiny random SD on the CPU
#
# 1. benchmarks/acceptance.py: SD 2.1-base-sized models with random weights (no downloads), preset "standard",
#    STEPS training steps (default 300); fails on a non-finite loss or prior output, peak VRAM over 8 GiB, or a
#    step costing more than 4× the UNet alone.
# 2. benchmarks/step_cost.py, standard preset, as shipped (eager UNet): its run ÷ its UNet floor.
# 3. the same with the UNet torch.compile'd (static graphs per row count, compiled before the measured steps):
#    its run ÷ the compiled UNet's floor. COMPILE_ROWS="static dynamic" also measures one dynamic-rows graph.
# 4. (CAPTURE=1, the default) 3 with the render captured too (TrainConfig.capture_render: CUDA graphs).
# The last three lines are the summary:
#   minutes_per_asset=<the fastest of 2–4: a standard asset's training with a warm model, in minutes>
#   run_over_unet_floor=<2's>   run_over_compiled_unet_floor=<the lowest of 3 and 4>
# Step 2 and 3 run even when 1 failed (the exit status stays 1's). The log is benchmarks-gpu-<date>.log (or LOG).
#
# Environment: PYTHON (default python3.11), VENV (default ~/.venvs/nfsd-gpu), TORCH_VERSION (default 2.13.0;
# PyPI's Linux wheels are CUDA builds), TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu128 to choose
# the CUDA version), STEPS (default 300), COST_STEPS (measured steps per segment, default 20), DTYPE (default
# auto), COMPILE_ROWS (default static), SKIP_SETUP=1 to use the current python as is (e.g. a prepared machine).
# A machine with no package index (as lent here): SKIP_SETUP=1 with PYTHONPATH=<deps>:server:. where <deps> holds the
# backend's dependencies (e.g. `pip install --target <deps> --no-index <wheels downloaded elsewhere>`).
set -euo pipefail

cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-$HOME/.venvs/nfsd-gpu}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
STEPS=${STEPS:-300}
COST_STEPS=${COST_STEPS:-20}
DTYPE=${DTYPE:-auto}
COMPILE_ROWS=${COMPILE_ROWS:-static}
CAPTURE=${CAPTURE:-1}
LOG=${LOG:-benchmarks-gpu-$(date -u +%Y%m%dT%H%M%SZ).log}

if [ "$SMOKE" = 1 ]; then
    PY=${PY:-$(command -v python3 || command -v python)}
    ACCEPT=(--smoke --steps 4)
    COST=(--device cpu --steps 1 --warmup 0)
    COMPILE=(--compile --compile-backend eager)  # the compile path without a C++ toolchain or minutes of inductor
else
    command -v nvidia-smi >/dev/null || { echo "gpu.sh: no nvidia-smi; this script needs a CUDA machine (or --cpu-smoke)" >&2; exit 2; }
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
    ACCEPT=(--steps "$STEPS" --dtype "$DTYPE")
    COST=(--model random:sd21-base --preset standard --steps "$COST_STEPS" --warmup 5)
    COMPILE=(--compile)
fi

run() { echo "\$ $*"; "$PY" "$@"; }
last() { grep -E "^$1=" "$2" | tail -1 | cut -d= -f2; }  # the value of the last NAME= line in a file
set +e
run benchmarks/acceptance.py "${ACCEPT[@]}" 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
eager=$(mktemp) compiled=$(mktemp -d)
run benchmarks/step_cost.py "${COST[@]}" 2>&1 | tee "$eager" | tee -a "$LOG"
for rows in $COMPILE_ROWS; do
    run benchmarks/step_cost.py "${COST[@]}" "${COMPILE[@]}" --compile-rows "$rows" 2>&1 | tee "$compiled/$rows" | tee -a "$LOG"
done
if [ "$CAPTURE" = 1 ]; then
    rows=${COMPILE_ROWS%% *}
    run benchmarks/step_cost.py "${COST[@]}" "${COMPILE[@]}" --compile-rows "$rows" --capture 2>&1 \
        | tee "$compiled/$rows+capture" | tee -a "$LOG"
fi
set -e
for run_log in "$compiled"/*; do
    echo "compiled UNet, $(basename "$run_log") rows: minutes_per_asset $(last minutes_per_asset "$run_log")," \
         "run ÷ compiled UNet floor $(last run_over_compiled_unet_floor "$run_log")" | tee -a "$LOG"
done
lowest() { "$PY" -c "import sys; v = [float(x) for x in sys.argv[1:] if x]; print(min(v) if v else '?')" "$@"; }
minutes=$(lowest "$(last minutes_per_asset "$eager")" $(for f in "$compiled"/*; do last minutes_per_asset "$f"; done))
compiled_ratio=$(lowest $(for f in "$compiled"/*; do last run_over_compiled_unet_floor "$f"; done))
echo "log: $LOG"
{
    echo "minutes_per_asset=$minutes"
    echo "run_over_unet_floor=$(last run_over_unet_floor "$eager")"
    echo "run_over_compiled_unet_floor=$compiled_ratio"
} | tee -a "$LOG"
rm -rf "$eager" "$compiled"
exit "$status"

#!/usr/bin/env bash
# kdlab on one GPU (H100/H200), about 5 minutes: images/s and TFLOP/s of teacher training, KD with a
# live teacher (eager and captured, fp32 and bf16, compiled), with the teacher-logit cache, 8 students
# in lockstep and stacked; the official-structure loop on the same GPU; a check that the captured
# step trains as the eager one; projected wall time of the paper's 200-epoch WRN-28-4 -> WRN-16-2
# run and of the 50-student grid, against the goals of issue 10.
#
#   benchmarks/gpu.sh               # on the GPU machine
#   benchmarks/gpu.sh --dry-run     # tiny models and sizes on the CPU (eager): proves the script runs
#   benchmarks/gpu.sh --no-compile  # without the torch.compile arm (saves the compile time)
#
# PYTHON picks the interpreter (default: the repo's .venv, else python3); the repo's src/ comes
# first on the path, so the code measured is this checkout's.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"  # deterministic cuBLAS for the capture check
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
fi
exec "$python" benchmarks/gpu_bench.py "$@"

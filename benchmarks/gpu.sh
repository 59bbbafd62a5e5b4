#!/usr/bin/env bash
# kdlab on one GPU (H100/H200), under 8 minutes: images/s and TFLOP/s of teacher training, KD with a
# live teacher, with the teacher-logit cache, and 8 students in lockstep; projected wall time of the
# paper's 200-epoch WRN-28-4 -> WRN-16-2 run and of the 50-student grid.
#
#   benchmarks/gpu.sh               # on the GPU machine
#   benchmarks/gpu.sh --dry-run     # tiny models and sizes on the CPU: proves the script runs
#   benchmarks/gpu.sh --compile     # also torch.compile teacher and students
#
# PYTHON picks the interpreter (default: the repo's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
fi
exec "$python" benchmarks/gpu_bench.py "$@"

#!/usr/bin/env bash
# kdlab on one GPU (H100/H200), under 7 minutes: images/s and TFLOP/s of KD with a live teacher
# (captured and eager, fp32 and bf16, channels_last and NCHW), 8 students in lockstep and stacked,
# the teacher-logit cache; the official-structure loop on the same GPU; for each GPU default (amp,
# channels_last, stack, cuda_graph, kd.cache) which setting was faster; a check that the captured
# step trains as the eager one (FAIL when it was not captured); then, as the time allows, teacher
# training and more arms; projected wall time of the paper's runs against the goals of issue 10.
# Every arm has a time limit (gpu_bench.py's ARM_LIMITS, within --budget, default 390 s).
#
#   benchmarks/gpu.sh               # on the GPU machine; exit status 1 when a capture check fails
#   benchmarks/gpu.sh --dry-run     # tiny models and sizes on the CPU (eager), under 2 minutes
#   benchmarks/gpu.sh --no-compile  # without the torch.compile arm
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
# The budget ends the arms in time and the report is printed; this is the last resort for a hang
# that Python cannot interrupt (a kernel that never returns).
exec timeout -k 10 420 "$python" benchmarks/gpu_bench.py "$@"

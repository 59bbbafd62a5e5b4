"""Shared test setup: explicit CPU threads (see kdlab.cli._set_cpu_threads) and determinism."""

import os

import torch

if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))

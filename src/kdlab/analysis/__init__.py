"""What students learned: metrics of logits and penultimate features, plots, and ``kdlab analyze``.

- ``metrics``: pure functions (logit distances, agreement, ECE, entropy, the 3-class template-plane
  projection of Mueller, Kornblith and Hinton 2019, 1-D Wasserstein distance);
- ``analyze``: ``analyze_runs(runs, teacher)`` on a dataset's clean training set -> JSON + PNGs;
- ``records``: finished run folders as (config, summary) records;
- ``plots``: the PNGs of ``kdlab analyze`` and ``kdlab report``.
"""

from .analyze import analyze_runs
from .metrics import (
    agreement,
    expected_calibration_error,
    logit_distances,
    predictive_entropy,
    project_onto_plane,
    template_plane,
    top_logit_difference,
    wasserstein_1d,
)
from .records import RunRecord, find_runs, read_run

__all__ = [
    "RunRecord",
    "agreement",
    "analyze_runs",
    "expected_calibration_error",
    "find_runs",
    "logit_distances",
    "predictive_entropy",
    "project_onto_plane",
    "read_run",
    "template_plane",
    "top_logit_difference",
    "wasserstein_1d",
]

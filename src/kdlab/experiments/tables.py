"""The markdown tables of a claim's section in REPORT.md: arms by metric, and the alpha x tau grid."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kdlab.analysis.plots import tau_label
from kdlab.experiments.evidence import ACC, TEST_BEST, VAL_ACC, Runs

TITLES = {
    ACC: "test acc last (%)", VAL_ACC: "test acc at best val (%)", TEST_BEST: "test acc best-on-test (%, not judged)",
    "train_acc": "train acc (%)", "logit_distance": "logit distance", "logit_distance_centred": "centred distance",
    "logit_distance_rms": "RMS distance", "train_acc_clean_labels": "train acc, clean labels (%)",
    "penultimate_norm": "mean ||r||_2", "w1_to_teacher": "W1 to teacher", "projection_distance": "projection distance",
    "agreement": "agreement (%)",
}  # fmt: skip
DEFAULT_METRICS = (ACC, VAL_ACC, TEST_BEST, "train_acc")


def accuracy_table(
    rows: list[tuple[str, dict[str, Any]]], runs: Runs, metrics: tuple[str, ...] = DEFAULT_METRICS
) -> str:
    """Markdown: one row per ``(label, match)``, mean ± sd over its runs (every teacher seed and student
    seed) of each metric; the verdict metric also gets its best run. Metrics no run records are left out."""
    metrics = tuple(metric for metric in metrics if runs.has(metric))
    titles = []
    for metric in metrics:
        titles.append(TITLES[metric])
        if metric == ACC:
            titles.append("best run (%)")
    lines = ["| run | runs | " + " | ".join(titles) + " |", "|---|---|" + "---|" * len(titles)]
    for label, match in rows:
        cells = []
        for metric in metrics:
            stat = runs.stat(metric, **match)
            cells.append(stat.text())
            if metric == ACC:
                cells.append(stat.best_text())
        lines.append(f"| {label} | {len(runs.select(**match))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_table(runs: Runs, metric: str, alphas: list[float], taus: list[float]) -> str:
    """Markdown alpha (rows) x tau (columns) of a KL grid, mean ± sd over runs."""
    lines = [
        "| alpha \\ tau | " + " | ".join(tau_label(t) for t in taus) + " |",
        "|---|" + "---|" * len(taus),
    ]
    for alpha in alphas:
        cells = [runs.stat(metric, loss="kl", alpha=alpha, tau=tau).text() for tau in taus]
        lines.append(f"| {alpha:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def set_text(values: Iterable[float]) -> str:
    """``{1, 3, 20, inf}``: a grid's values as the report writes them."""
    return "{" + ", ".join(tau_label(value) for value in values) + "}"

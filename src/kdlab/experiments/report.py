"""``kdlab report DIR``: a sweep folder as ``report.md``, ``results.csv`` and plots.

Runs are grouped by everything in their config but the seed (and settings that do not change the
result: device, progress, output folder...); each group shows mean +- standard deviation over its
seeds of best-epoch and last-epoch test accuracy (the literature mixes them), train accuracy and the
logit distance to the teacher. Plots: an alpha x tau heatmap of best-epoch test accuracy and
accuracy-against-tau curves for each context (runs that differ only in loss, alpha and tau) holding
a KL grid; a KL-vs-MSE table for each context holding both.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.analysis.plots import plot_heatmap, plot_tau_curves, tau_label
from kdlab.analysis.records import RunRecord, find_runs
from kdlab.experiments.recipes import identity
from kdlab.runs import atomic_write_text

METRICS = ("test_acc_best", "test_acc_last", "train_acc", "logit_distance")
LOSS_KEYS = ("kd.loss", "kd.alpha", "kd.tau")
SHOWN_KEYS = ("model", "kd.teacher", "kd.loss", "kd.alpha", "kd.tau")


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (0 for one value) of a metric over seeds."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        values = [value for value in values if not math.isnan(value)]
        if not values:
            return cls(math.nan, math.nan, 0)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, len(values))

    def text(self, digits: int = 2) -> str:
        if self.n == 0:
            return "-"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}" if self.n > 1 else f"{self.mean:.{digits}f}"


@dataclass
class Group:
    """Runs equal in everything but the seed; ``key`` holds the flattened identifying settings."""

    key: dict[str, Any]
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted(run.config.seed for run in self.runs)

    def stat(self, metric: str) -> Stat:
        return Stat.of([run.metric(metric) for run in self.runs])

    def by_seed(self, metric: str) -> dict[int, float]:
        return {run.config.seed: run.metric(metric) for run in self.runs}

    @property
    def context(self) -> tuple[tuple[str, str], ...]:
        """The key without loss, alpha and tau: runs of one context differ only in how they distil."""
        return tuple((key, repr(value)) for key, value in self.key.items() if key not in LOSS_KEYS)


def teacher_name(value: Any, root: Path | None = None) -> str | None:
    """A teacher path as a short name: relative to ``root`` when inside it, else its folder name."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    names = []
    for item in items:
        path = Path(str(item))
        try:
            names.append(str(path.resolve().relative_to(root.resolve())) if root else path.name)
        except ValueError:
            names.append(path.name)
    return "+".join(names)


def group_key(record: RunRecord, root: Path | None = None) -> dict[str, Any]:
    key = {name: value for name, value in identity(record.config).items() if name != "seed"}
    key["kd.teacher"] = teacher_name(key.get("kd.teacher"), root)
    if key["kd.loss"] == "ce":  # alpha and tau do not enter a cross-entropy run
        key["kd.alpha"], key["kd.tau"] = None, None
    elif key["kd.loss"] == "mse":
        key["kd.tau"] = None
    return key


def group_runs(records: list[RunRecord], root: Path | None = None) -> list[Group]:
    """Runs grouped by ``group_key``, groups sorted by model, teacher, loss, alpha, tau."""
    groups: dict[str, Group] = {}
    for record in records:
        key = group_key(record, root)
        groups.setdefault(repr(sorted(key.items(), key=lambda item: item[0])), Group(key)).runs.append(record)

    def order(group: Group) -> tuple[Any, ...]:
        key = group.key
        return (
            str(key.get("kd.teacher") or ""), key["model"], key["kd.loss"],
            -1 if key["kd.alpha"] is None else key["kd.alpha"], -1 if key["kd.tau"] is None else key["kd.tau"],
            repr(group.context),
        )  # fmt: skip

    return sorted(groups.values(), key=order)


def varying_keys(groups: list[Group]) -> list[str]:
    """SHOWN_KEYS plus every other key whose value differs between groups."""
    keys = sorted({key for group in groups for key in group.key})
    varying = [
        key
        for key in keys
        if key not in SHOWN_KEYS and len({repr(group.key.get(key)) for group in groups}) > 1
    ]
    return [*SHOWN_KEYS, *varying]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return tau_label(value)
    return str(value)


def results_table(groups: list[Group], columns: list[str]) -> str:
    """Markdown: one row per group, mean ± std over seeds."""
    header = [*columns, "seeds", "test acc best (%)", "test acc last (%)", "train acc (%)", "logit distance"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        cells = [_cell(group.key.get(column)) for column in columns]
        cells.append(str(len(group.runs)))
        cells += [group.stat(metric).text() for metric in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_csv(groups: list[Group], columns: list[str]) -> str:
    """CSV: one row per group; ``METRIC_mean``/``METRIC_std`` columns, the seeds and the run folders."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            *columns,
            "n",
            *[f"{metric}_{part}" for metric in METRICS for part in ("mean", "std")],
            "seeds",
            "runs",
        ]
    )
    for group in groups:
        row: list[Any] = [_cell(group.key.get(column)) for column in columns]
        row.append(len(group.runs))
        for metric in METRICS:
            stat = group.stat(metric)
            row += ["" if stat.n == 0 else f"{stat.mean:.4f}", "" if stat.n == 0 else f"{stat.std:.4f}"]
        row.append(" ".join(str(seed) for seed in group.seeds))
        row.append(" ".join(str(run.path) for run in group.runs))
        writer.writerow(row)
    return buffer.getvalue()


def contexts(groups: list[Group]) -> dict[tuple[tuple[str, str], ...], list[Group]]:
    found: dict[tuple[tuple[str, str], ...], list[Group]] = {}
    for group in groups:
        found.setdefault(group.context, []).append(group)
    return found


def context_label(members: list[Group], shown: list[str]) -> str:
    key = members[0].key
    parts = [f"{name}={_cell(key.get(name))}" for name in shown if name not in LOSS_KEYS]
    return ", ".join(parts)


def kl_grid(
    members: list[Group], metric: str = "test_acc_best"
) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
    """``(alphas, taus, means [A, T], stds [A, T])`` of the KL groups of one context (NaN = missing)."""
    kl = [group for group in members if group.key["kd.loss"] == "kl"]
    alphas = sorted({group.key["kd.alpha"] for group in kl})
    taus = sorted({group.key["kd.tau"] for group in kl})
    means = np.full((len(alphas), len(taus)), np.nan)
    stds = np.full_like(means, np.nan)
    for group in kl:
        stat = group.stat(metric)
        index = (alphas.index(group.key["kd.alpha"]), taus.index(group.key["kd.tau"]))
        means[index], stds[index] = stat.mean, stat.std
    return alphas, taus, means, stds


def kl_vs_mse_table(context_groups: dict[Any, list[Group]], shown: list[str]) -> str | None:
    """Per context with both an MSE and a KL (alpha = 1) group: CE, KL at each tau, MSE."""
    rows = []
    taus: set[float] = set()
    for members in context_groups.values():
        losses = {group.key["kd.loss"] for group in members}
        if {"kl", "mse"} <= losses:
            taus |= {g.key["kd.tau"] for g in members if g.key["kd.loss"] == "kl" and g.key["kd.alpha"] == 1}
            rows.append(members)
    if not rows:
        return None
    ordered_taus = sorted(taus)
    header = ["context", "CE", *[f"KL tau={tau_label(tau)}" for tau in ordered_taus], "MSE"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for members in rows:

        def find(loss: str, tau: float | None = None, members: list[Group] = members) -> str:
            for group in members:
                key = group.key
                if (
                    key["kd.loss"] == loss
                    and (loss == "ce" or key["kd.alpha"] == 1)
                    and (tau is None or key["kd.tau"] == tau)
                ):
                    return group.stat("test_acc_best").text()
            return "-"

        cells = [
            context_label(members, shown),
            find("ce"),
            *[find("kl", tau) for tau in ordered_taus],
            find("mse"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    folder: str | Path, out: str | Path | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Write report.md, results.csv and plots for the runs under ``folder`` (into ``out``, default ``folder``)."""
    folder = Path(folder)
    out = Path(out) if out else folder
    records = find_runs(folder)
    if not records:
        from kdlab.errors import UserError

        raise UserError(f"{folder} holds no finished runs (no summary.json found): run a sweep into it first")
    groups = group_runs(records, folder)
    columns = varying_keys(groups)
    atomic_write_text(out / "results.csv", results_csv(groups, columns))
    sections = [
        f"# kdlab report: {folder}\n",
        f"{len(records)} finished runs in {len(groups)} groups (mean ± standard deviation over seeds; "
        "best = best-epoch test accuracy, last = final-epoch). Logit distance: mean `||z_s - z_t||_2` on the "
        "clean training set.\n",
        results_table(groups, columns) + "\n",
    ]
    plots = []
    by_context = contexts(groups)
    for index, members in enumerate(by_context.values()):
        alphas, taus, means, stds = kl_grid(members)
        if len(alphas) < 2 and len(taus) < 2:
            continue
        suffix = "" if len(by_context) == 1 else f"-{index + 1}"
        label = context_label(members, columns)
        if len(alphas) >= 2 and len(taus) >= 2:
            name = f"heatmap{suffix}.png"
            plot_heatmap(means, alphas, taus, f"best-epoch test accuracy (%)\n{_wrap(label)}", out / name)
            plots.append((f"alpha x tau: {label}", name))
        curves = {
            f"alpha={alpha:g}": (
                [taus[j] for j in range(len(taus)) if np.isfinite(means[i, j])],
                [means[i, j] for j in range(len(taus)) if np.isfinite(means[i, j])],
                [stds[i, j] for j in range(len(taus)) if np.isfinite(means[i, j])],
            )
            for i, alpha in enumerate(alphas)
        }
        if len(taus) >= 2:
            name = f"tau_curves{suffix}.png"
            plot_tau_curves(curves, f"test accuracy against tau\n{_wrap(label)}", out / name)
            plots.append((f"accuracy against tau: {label}", name))
    table = kl_vs_mse_table(by_context, columns)
    if table:
        sections += ["## KL vs MSE (best-epoch test accuracy, KL at alpha = 1)\n", table + "\n"]
    for title, name in plots:
        sections.append(f"## {title}\n\n![{title}]({name})\n")
    atomic_write_text(out / "report.md", "\n".join(sections))
    log(f"report: wrote {out / 'report.md'} and {out / 'results.csv'}")
    return {"runs": len(records), "groups": len(groups), "plots": [name for _, name in plots]}


def _wrap(text: str, width: int = 70) -> str:
    return textwrap.fill(text, width)

"""PNG plots of analyses and reports (matplotlib, Agg backend).

Each ``plot_*`` function returns the PNG's bytes; given a ``path``, it also writes them there through
``kdlab.runs.OutputFolder`` (the folder's manifest, atomic, never over a file kdlab did not write).
Reports and analyses pass ``None`` and write all their files together once every one is checked.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.config import format_value

CLASS_COLOURS = ("#4477aa", "#ee6677", "#228833")
BAR_COLOURS = ("#4477aa", "#228833", "#ccbb44")
SERIES_COLOURS = ("#222222", "#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path | None) -> bytes:
    """The figure as PNG bytes (the figure is closed); written to ``path`` when given (atomically,
    through the output folder's rules: ``kdlab.runs.OutputFolder``)."""
    from kdlab.runs import OutputFolder

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    data = buffer.getvalue()
    if path is not None:
        path = Path(path)
        OutputFolder(path.parent, "plot").write_bytes(path.name, data)
    return data


def plot_projections(
    panels: list[dict[str, Any]], class_names: Sequence[str], path: str | Path | None = None
) -> bytes:
    """Side-by-side 2-D projections; each panel: ``title``, ``points`` ``[N, 2]``, ``labels`` ``[N]``
    (0, 1, 2 = position in ``class_names``) and ``templates`` ``[3, 2]``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for axis, panel in zip(axes[0], panels, strict=True):
        points, labels = np.asarray(panel["points"]), np.asarray(panel["labels"])
        for index, name in enumerate(class_names):
            chosen = points[labels == index]
            axis.scatter(chosen[:, 0], chosen[:, 1], s=4, alpha=0.5, color=CLASS_COLOURS[index], label=name)
        templates = np.asarray(panel["templates"])
        axis.scatter(templates[:, 0], templates[:, 1], marker="*", s=150, color="black", label="templates")
        axis.set_title(panel["title"], fontsize=10)
        axis.set_aspect("equal", adjustable="datalim")
    axes[0][0].legend(loc="best", fontsize=7, markerscale=2)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_histograms(series: list[dict[str, Any]], xlabel: str, path: str | Path | None = None) -> bytes:
    """Overlaid density histograms; each series: ``label``, ``edges``, ``counts``."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(6.5, 4))
    for index, item in enumerate(series):
        edges, counts = np.asarray(item["edges"]), np.asarray(item["counts"], dtype=np.float64)
        density = counts / max(counts.sum(), 1) / np.diff(edges)
        axis.stairs(
            density, edges, label=item["label"], color=SERIES_COLOURS[index % len(SERIES_COLOURS)], lw=1.6
        )
    axis.set_xlabel(xlabel)
    axis.set_ylabel("density")
    axis.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def tau_label(tau: float) -> str:
    return format_value(float(tau))


def plot_heatmap(
    values: np.ndarray,
    alphas: Sequence[float],
    taus: Sequence[float],
    title: str,
    path: str | Path | None = None,
    ylabel: str = "alpha",
    xlabel: str = "tau",
) -> bytes:
    """``values[i, j]`` at ``alpha = alphas[i]``, ``tau = taus[j]`` (NaN = missing), annotated; the axes
    may be any two hyperparameters (``ylabel``, ``xlabel``)."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(1.2 * len(taus) + 2.5, 0.45 * len(alphas) + 1.8))
    image = axis.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto", origin="lower")
    axis.set_xticks(range(len(taus)), [tau_label(tau) for tau in taus])
    axis.set_yticks(range(len(alphas)), [tau_label(alpha) for alpha in alphas])
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            colour = "black" if value > middle else "white"
            axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour)
    fig.colorbar(image, ax=axis, label="test accuracy (%)")
    axis.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_tau_curves(
    curves: dict[str, tuple[list[float], list[float], list[float]]],
    title: str,
    path: str | Path | None = None,
    xlabel: str = "tau",
) -> bytes:
    """Accuracy against tau (or another hyperparameter, ``xlabel``; categorical axis, inf last);
    ``curves[label] = (taus, means, stds)``."""
    plt = _pyplot()
    taus = sorted({tau for values in curves.values() for tau in values[0]})
    position = {tau: index for index, tau in enumerate(taus)}
    fig, axis = plt.subplots(figsize=(6.5, 4))
    for index, (label, (curve_taus, means, stds)) in enumerate(curves.items()):
        x = [position[tau] for tau in curve_taus]
        colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
        axis.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=label, color=colour)
    axis.set_xticks(range(len(taus)), [tau_label(tau) for tau in taus])
    axis.set_xlabel(xlabel)
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_bars(panels: list[dict[str, Any]], path: str | Path | None = None) -> bytes:
    """Side-by-side bar charts; each panel: ``labels``, ``values``, ``ylabel`` and optionally
    ``reference`` = ``(label, value)``, drawn as a dashed line (e.g. the teacher's accuracy). A panel
    with a reference zooms its y axis onto the values (bars of accuracies all start far above 0)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for index, (axis, panel) in enumerate(zip(axes[0], panels, strict=True)):
        values = [float(value) for value in panel["values"]]
        axis.bar(panel["labels"], values, color=BAR_COLOURS[index % len(BAR_COLOURS)])
        reference = panel.get("reference")
        if reference is not None:
            label, level = reference
            axis.axhline(level, color=CLASS_COLOURS[1], linestyle="--", label=label)
            shown = [*values, level]
            axis.set_ylim(min(shown) - 2, max(shown) + 3)  # room above for the legend
            axis.legend(loc="upper right")
        axis.set_ylabel(panel["ylabel"])
        axis.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return save_figure(fig, path)

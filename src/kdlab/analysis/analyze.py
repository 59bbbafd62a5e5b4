"""``kdlab analyze``: what trained students learned, measured on the clean training set.

Per run: the distribution of ``||z^s - z^t||_2``, of the penultimate norm ``||r||_2``, top-1
agreement with the teacher, ECE (15 bins), accuracy, predictive entropy and the top-logit difference
(TLD: the official code's per-sample scores, the teacher's per sample in ``teacher_samples.csv``);
and the 3-class pre-logit projection of Mueller, Kornblith and Hinton (2019): the penultimate features of three
classes' training images projected onto the plane through those classes' template vectors. The
teacher is analysed the same way (its features too, unless it is an ensemble), and the per-sample
distance between a student's and the teacher's projected points measures how closely the student
follows the teacher. Outputs: ``analysis.json``, ``projection.png``, ``logit_distance.png``,
``penultimate_norm.png``, ``entropy.png``, ``tld.png`` and ``teacher_samples.csv``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdlab.analysis.metrics import (
    agreement,
    describe,
    expected_calibration_error,
    histogram,
    logit_distances,
    predictive_entropy,
    project_onto_plane,
    template_plane,
    top_logit_difference,
    wasserstein_1d,
)
from kdlab.analysis.plots import plot_histograms, plot_projections
from kdlab.analysis.records import run_label
from kdlab.errors import UserError
from kdlab.models.features import FeatureTap, fast_path, last_linear, unwrapped
from kdlab.runs import OutputFolder, RunFolder, json_text
from kdlab.teacher import EnsembleTeacher, load_teacher

HISTOGRAM_BINS = 40
ECE_BINS = 15
# Every file an analysis may write (some depend on the teacher and the models): checked before the work.
ANALYSIS_FILES = (
    "analysis.json", "teacher_samples.csv", "projection.png", "logit_distance.png", "penultimate_norm.png",
    "entropy.png", "tld.png",
)  # fmt: skip
MAX_PLOTTED_PER_CLASS = 300  # points per class in projection.png (all samples enter the numbers)


@dataclass
class ModelOutputs:
    """A model's float64 outputs on the training set: logits ``[N, K]``, penultimate features ``[N, D]``
    and the weight ``[K, D]`` of the linear layer they feed (for the projection); each None where the
    model cannot give it, with the reason in ``note``."""

    logits: Tensor
    features: Tensor | None
    weight: Tensor | None
    note: str | None = None


@torch.no_grad()
def collect_outputs(model: nn.Module, loader: Any) -> ModelOutputs:
    """Run ``model`` (eval mode) over ``loader``. Features come from its feature layer
    (:mod:`kdlab.models.features`: ``forward_features`` for kdlab's models, else a forward hook on the
    run's ``features`` layer or the last ``nn.Linear``'s input); the projection's weight is that of
    the last ``nn.Linear`` when the features are exactly its input. An ensemble has no features."""
    model.eval()
    inner = unwrapped(model)
    if isinstance(inner, EnsembleTeacher):
        logits = [inner(batch.inputs).double().cpu() for batch in loader]
        return ModelOutputs(torch.cat(logits), None, None, "no penultimate features: an ensemble has none")
    if fast_path(inner):
        logits, features = [], []
        for batch in loader:
            feature = inner.forward_features(batch.inputs)
            features.append(feature.double().cpu())
            logits.append(inner.classifier(feature).double().cpu())
        head = inner.classifier
        weight = head.weight.detach().double().cpu() if isinstance(head, nn.Linear) else None
        note = None if weight is not None else "no 3-class projection: the classifier is not an nn.Linear"
        return ModelOutputs(torch.cat(logits), torch.cat(features), weight, note)
    try:
        tap = FeatureTap(inner)
    except UserError as error:
        logits = [inner(batch.inputs).double().cpu() for batch in loader]
        return ModelOutputs(torch.cat(logits), None, None, f"no penultimate features: {error}")
    final = last_linear(inner)
    # A named layer's output feeds the last Linear when it equals that Linear's input on every batch.
    final_tap = FeatureTap(inner, layer=(final[0], final[1], True)) if final and not tap.take_input else None
    feeds = final is not None
    logits, features = [], []
    for batch in loader:
        with tap.capture(), final_tap.capture() if final_tap else contextlib.nullcontext():
            logits.append(inner(batch.inputs).double().cpu())
        try:
            feature = tap.features(len(batch.inputs))
        except UserError as error:  # (on the first batch, in practice): logits alone, from a fresh pass
            logits = [inner(again.inputs).double().cpu() for again in loader]
            return ModelOutputs(torch.cat(logits), None, None, f"no penultimate features: {error}")
        if final_tap is not None:
            fed = final_tap.value
            feeds = feeds and isinstance(fed, Tensor) and fed.flatten(1).shape == feature.shape
            feeds = feeds and torch.equal(fed.flatten(1), feature)
        features.append(feature.double().cpu())
    weight = final[1].weight.detach().double().cpu() if feeds else None
    note = None
    if weight is None:
        note = (
            f"no 3-class projection: the features (layer {tap.name!r}) do not feed the model's last nn.Linear, "
            "whose weight the projection needs"
        )
    return ModelOutputs(torch.cat(logits), torch.cat(features), weight, note)


def _shared_edges(arrays: list[np.ndarray], bins: int = HISTOGRAM_BINS) -> np.ndarray:
    low = min(float(array.min()) for array in arrays)
    high = max(float(array.max()) for array in arrays)
    return np.linspace(low, high if high > low else low + 1.0, bins + 1)


def _projection(outputs: ModelOutputs, mask: Tensor, classes: Sequence[int]) -> dict[str, Any] | None:
    if outputs.features is None or outputs.weight is None:
        return None
    origin, basis = template_plane(outputs.weight, classes)
    return {
        "points": project_onto_plane(outputs.features[mask], origin, basis),
        "templates": project_onto_plane(outputs.weight[list(classes)], origin, basis),
    }


def _projection_summary(projection: dict[str, Any], labels: Tensor, classes: Sequence[int]) -> dict[str, Any]:
    points = projection["points"]
    per_class = {}
    for index, cls in enumerate(classes):
        chosen = points[labels == index]
        centre = chosen.mean(dim=0)
        per_class[str(cls)] = {
            "centroid": centre.tolist(),
            "spread": (chosen - centre).norm(dim=1).mean().item(),  # mean distance to the centroid
        }
    return {"templates": projection["templates"].tolist(), "classes": per_class}


def analyze_runs(
    runs: Sequence[str | Path],
    teacher: str | list[str] | None = None,
    out: str | Path | None = None,
    classes: Sequence[int] = (0, 1, 2),
    data_dir: str | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Analyse ``runs`` against ``teacher`` (default: the first run's ``kd.teacher``); write the outputs to
    ``out`` (default: the first run's folder + ``/analysis``) and return the JSON-ready numbers."""
    from kdlab.data import load_dataset, make_loader
    from kdlab.device import resolve_device

    if not runs:
        raise UserError("kdlab analyze needs at least one run folder")
    if not out:  # RUN1/analysis, a folder kdlab makes: a link there would lead elsewhere
        OutputFolder(runs[0], "analysis").check(["analysis/"])
    out = Path(out) if out else Path(runs[0]) / "analysis"
    destination = OutputFolder(out, "analysis")
    destination.check(ANALYSIS_FILES)  # before the work: --out a file, read-only, an analysis.json of yours
    configs = [RunFolder(run).read_config() for run in runs]
    data = configs[0].data
    for run, config in zip(runs, configs, strict=True):
        same = (config.data.name, config.data.subset, config.data.subset_seed, config.data.val_split) == (
            data.name,
            data.subset,
            data.subset_seed,
            data.val_split,
        )
        if not same:
            raise UserError(
                f"{run} was trained on other data than {runs[0]}: analyse runs of one dataset together"
            )
    teacher = teacher if teacher is not None else configs[0].kd.teacher
    target = resolve_device(device)
    splits = load_dataset(
        data.name,
        data_dir or data.data_dir,
        subset=data.subset,
        subset_seed=data.subset_seed,
        image_size=data.image_size,
        val_split=data.val_split,  # the images the runs trained on, validation ones held out
    )
    if len(set(classes)) != 3 or not all(0 <= c < splits.num_classes for c in classes):
        raise UserError(
            f"--classes {','.join(map(str, classes))} must be three different classes of {data.name}, in "
            f"0..{splits.num_classes - 1}: e.g. --classes 0,1,2"
        )
    loader = make_loader(splits, "train", 512, device=target, train=False)
    labels = torch.cat(
        [batch.targets.cpu() for batch in loader]
    )  # clean: noise is applied by the engine only
    class_names = [splits.class_names[c] if splits.class_names else str(c) for c in classes]
    mask = torch.isin(labels, torch.tensor(list(classes)))
    position = {cls: index for index, cls in enumerate(classes)}
    projected_labels = torch.tensor([position[int(label)] for label in labels[mask]])

    def outputs_of(spec: str | list[str]) -> ModelOutputs:
        return collect_outputs(load_teacher(spec, target, configs[0].kd.ensemble), loader)

    with_model = len({config.model for config in configs}) > 1
    entries: list[tuple[str, str, ModelOutputs]] = []
    if teacher:
        log(f"analyze: teacher {teacher}")
        entries.append(("teacher", "teacher", outputs_of(teacher)))
    for run, config in zip(runs, configs, strict=True):
        log(f"analyze: {run}")
        entries.append((str(run), run_label(config, with_model), outputs_of(str(run))))
    for name, _, outputs in entries:
        if outputs.note is not None:
            log(f"analyze: {name}: {outputs.note}")
    teacher_outputs = entries[0][2] if teacher else None

    norms = {
        name: outputs.features.norm(dim=1).numpy()
        for name, _, outputs in entries
        if outputs.features is not None
    }
    distances = (
        {
            name: logit_distances(outputs.logits, teacher_outputs.logits).numpy()
            for name, _, outputs in entries[1:]
        }
        if teacher_outputs is not None
        else {}
    )
    # Per-sample scores of the official code's data experiments (kdlab.data.select ranks by them).
    entropies = {name: predictive_entropy(outputs.logits).numpy() for name, _, outputs in entries}
    tlds = {name: top_logit_difference(outputs.logits, labels).numpy() for name, _, outputs in entries}
    entropy_edges, tld_edges = _shared_edges(list(entropies.values())), _shared_edges(list(tlds.values()))
    norm_edges = _shared_edges(list(norms.values())) if norms else None
    distance_edges = _shared_edges(list(distances.values())) if distances else None
    projections = {name: _projection(outputs, mask, classes) for name, _, outputs in entries}
    teacher_projection = projections.get("teacher")

    results: dict[str, Any] = {
        "dataset": data.name,
        "train_images": len(labels),
        "teacher": teacher,
        "classes": list(classes),
        "class_names": class_names,
        "runs": {},
    }
    for name, label, outputs in entries:
        entry: dict[str, Any] = {
            "label": label,
            "train_acc": 100.0 * (outputs.logits.argmax(dim=1) == labels).double().mean().item(),
            "ece": expected_calibration_error(outputs.logits, labels, ECE_BINS),
            "entropy_mean": float(entropies[name].mean()),
            "entropy": {**describe(entropies[name]), "histogram": histogram(entropies[name], entropy_edges)},
            "tld": {**describe(tlds[name]), "histogram": histogram(tlds[name], tld_edges)},
        }
        if outputs.note is not None:
            entry["note"] = outputs.note  # why the penultimate norm or the projection is missing
        if name in norms:
            entry["penultimate_norm"] = {
                **describe(norms[name]),
                "histogram": histogram(norms[name], norm_edges),
            }
            if "teacher" in norms and name != "teacher":
                entry["penultimate_norm_w1_to_teacher"] = wasserstein_1d(norms[name], norms["teacher"])
        if name in distances:
            entry["logit_distance"] = {
                **describe(distances[name]),
                "histogram": histogram(distances[name], distance_edges),
            }
            entry["agreement"] = agreement(outputs.logits, teacher_outputs.logits)
        projection = projections[name]
        if projection is not None:
            entry["projection"] = _projection_summary(projection, projected_labels, classes)
            if teacher_projection is not None and name != "teacher":
                gap = (projection["points"] - teacher_projection["points"]).norm(dim=1)
                entry["projection_distance_to_teacher"] = gap.mean().item()
        results["runs"][name] = entry

    files = _plot(entries, results, projections, projected_labels, class_names)
    if teacher:
        rows = zip(labels.tolist(), entropies["teacher"].tolist(), tlds["teacher"].tolist(), strict=True)
        lines = ["index,label,teacher_entropy,teacher_tld"]
        lines += [
            f"{index},{label},{entropy:.6g},{tld:.6g}" for index, (label, entropy, tld) in enumerate(rows)
        ]
        files["teacher_samples.csv"] = ("\n".join(lines) + "\n").encode()
    files["analysis.json"] = json_text(results).encode()
    destination.write_files(files)  # all checked, then written
    log(f"analyze: wrote {out / 'analysis.json'} and plots")
    return results


def _plot(
    entries: list[tuple[str, str, ModelOutputs]],
    results: dict[str, Any],
    projections: dict[str, dict[str, Any] | None],
    projected_labels: Tensor,
    class_names: list[str],
) -> dict[str, bytes]:
    """The PNGs of one analysis, by file name."""
    files = {}
    generator = torch.Generator().manual_seed(0)  # the same plotted subsample every time
    keep = torch.zeros(len(projected_labels), dtype=torch.bool)
    for index in range(len(class_names)):
        members = (projected_labels == index).nonzero().flatten()
        keep[members[torch.randperm(len(members), generator=generator)[:MAX_PLOTTED_PER_CLASS]]] = True
    panels = [
        {
            "title": label,
            "points": projections[name]["points"][keep].numpy(),
            "labels": projected_labels[keep].numpy(),
            "templates": projections[name]["templates"].numpy(),
        }
        for name, label, _ in entries
        if projections[name] is not None
    ]
    if panels:
        files["projection.png"] = plot_projections(panels, class_names)
    for key, filename, xlabel in [
        ("logit_distance", "logit_distance.png", "||z_s - z_t||_2 (training set)"),
        ("penultimate_norm", "penultimate_norm.png", "||r||_2 (penultimate features, training set)"),
        ("entropy", "entropy.png", "entropy of softmax(z), nats (training set)"),
        ("tld", "tld.png", "top-logit difference z_y - max_{j != y} z_j (training set; < 0: wrong)"),
    ]:
        series = [
            {"label": results["runs"][name]["label"], **results["runs"][name][key]["histogram"]}
            for name, _, _ in entries
            if key in results["runs"][name]
        ]
        if series:
            files[filename] = plot_histograms(series, xlabel)
    return files

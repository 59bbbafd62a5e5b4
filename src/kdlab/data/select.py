"""Training on a fraction of the training set chosen by the teacher: the official code's data experiments.

``data.select`` holds one or two rules joined by ``,``, each ``WHAT:BY:LOWER-UPPER[:overall]``:

- ``WHAT`` = ``classes`` (keep whole classes) or ``samples`` (keep samples of the classes kept);
- ``BY`` = ``random``, or a ranking by a teacher score: ``entropy`` (of the teacher's softmax) or
  ``tld``, the top-logit difference ``z[y] - max_{j != y} z_j`` when the teacher is right and
  ``z[y] - max_j z_j`` (<= 0) otherwise. A class's score is the mean over its samples;
- ``LOWER-UPPER`` = the quantile band ``[lower, upper)`` of the ascending order that is kept;
- ``overall`` applies a samples band to all kept samples at once instead of within each class
  (the official ``--per_class`` is the default here).

How many of ``n`` samples (or classes) a band keeps is ``data.select_count``:

- ``kd_data`` (default): the arithmetic of the official code (jhoon-oh/kd_data,
  ``tools/data_setter.py``, ``set_train_valid``), in Python floats. A ranking keeps the positions
  ``int(n * lower)`` to ``int(n * upper)`` of the ascending order (``int`` truncates the float
  product: ``90 * 0.7`` is 62.999..., so position 62). ``random`` draws the samples left out,
  ``int(round(n * (1 - (upper - lower)), 2))`` of them, and keeps the other
  ``n - int(round(n * (1 - (upper - lower)), 2))``: about the ceiling of ``n * (upper - lower)``.
  A class of 187 samples with ``samples:random:0-0.1`` keeps 187 - int(168.3) = 19.
- ``floor``: kdlab's rule before issue 17: positions ``floor(n * lower)`` to ``floor(n * upper)``
  for every ``BY``, the floor taken with a 1e-9 allowance so that a band edge such as ``100 * 0.29``
  (28.999... in floating point) counts as 29; ``random`` keeps that many at random. The class of 187
  keeps floor(18.7) = 18.

The two agree wherever the float products ``n * lower`` and ``n * upper`` come out as whole numbers
(CIFAR's 500 or 5,000 per class with the paper's tenths); they differ on unequal classes (SVHN, a
subset, noisy labels: 149 against 139 of digits' 1,437 for ``samples:random:0-0.1``) and at float
edges. A run recorded before ``data.select_count``
existed selected with ``floor`` (:func:`kdlab.config.from_record`), so it is neither resumed nor
reused under ``kd_data``.

``samples:entropy:0-0.1`` keeps, in each class, the tenth of the samples the teacher is surest of;
``classes:random:0-0.1`` keeps a random tenth of the classes (``run_vanilla_kd_data.sh``). Scores
come from one teacher pass over the clean training images (``data.select_pass: clean``) or over
crop + flip augmented ones (``augmented``, as the official ``generator.py``); random draws use
``data.select_seed``, so every run of a sweep trains on the same samples. The kept indices are
recorded in the run folder (``selection.json``, their sha256 also in ``inputs.json`` and the
checkpoints); ``--resume`` trains on them again, without a new teacher pass (kdlab.identity).
The samples left out are kept too (``splits.left_out``, in-memory data only): the training loop
reports the student's accuracy on them every epoch, as the official code does with its ``valid``
loader (kdlab.engine.loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kdlab.errors import UserError, did_you_mean

WHATS = ("classes", "samples")
RANKINGS = ("random", "entropy", "tld")
PASSES = ("clean", "augmented")
COUNTS = ("kd_data", "floor")  # data.select_count: how many of n a band keeps (module docstring)


@dataclass(frozen=True)
class Rule:
    what: str  # classes | samples
    by: str  # random | entropy | tld
    lower: float
    upper: float
    per_class: bool = True  # samples only: the band applies within each class


def parse_selection(text: str) -> list[Rule]:
    """``"samples:entropy:0-0.1"`` -> ``[Rule("samples", "entropy", 0.0, 0.1)]``; a UserError naming the
    part and the fix otherwise. At most one rule per ``WHAT``; classes are chosen before samples."""
    example = "e.g. data.select=samples:entropy:0-0.1 or classes:random:0-0.1"
    rules: dict[str, Rule] = {}
    for part in filter(None, (piece.strip() for piece in str(text).split(","))):
        fields = [field.strip().lower() for field in part.split(":")]
        if len(fields) not in (3, 4):
            raise UserError(
                f"data.select part {part!r} is malformed: write WHAT:BY:LOWER-UPPER[:overall], {example}"
            )
        what, by, band = fields[:3]
        if what not in WHATS:
            raise UserError(
                f"data.select: {what!r} is not classes or samples{did_you_mean(what, WHATS)}: {example}"
            )
        if by not in RANKINGS:
            raise UserError(
                f"data.select: {by!r} is not a ranking{did_you_mean(by, RANKINGS)}: choose {', '.join(RANKINGS)}"
            )
        low_text, dash, high_text = band.partition("-")
        try:
            lower, upper = float(low_text), float(high_text)
        except ValueError:
            lower = upper = math.nan
        if not dash or not 0 <= lower < upper <= 1:
            raise UserError(
                f"data.select band {band!r} must be LOWER-UPPER with 0 <= lower < upper <= 1, e.g. 0-0.1"
            )
        if len(fields) == 4 and (fields[3] != "overall" or what != "samples"):
            raise UserError(f"data.select part {part!r}: the only option is ':overall', for samples")
        if what in rules:
            raise UserError(
                f"data.select names {what} twice: give one classes rule and one samples rule at most"
            )
        rules[what] = Rule(what, by, lower, upper, per_class=len(fields) == 3)
    if not rules:
        raise UserError(f"data.select is empty: {example}")
    return [rules[what] for what in WHATS if what in rules]


def check_selection(text: str | None, select_pass: str, has_teacher: bool, count: str = "kd_data") -> None:
    """Validate ``data.select``/``data.select_pass``/``data.select_count`` before anything runs."""
    if select_pass not in PASSES:
        raise UserError(f"data.select_pass={select_pass!r} is invalid: choose clean or augmented")
    if count not in COUNTS:
        raise UserError(
            f"data.select_count={count!r} is invalid{did_you_mean(str(count), COUNTS)}: choose kd_data (the "
            "official code's counts) or floor"
        )
    if not text:
        return
    ranked = [rule for rule in parse_selection(text) if rule.by != "random"]
    if ranked and not has_teacher:
        raise UserError(
            f"data.select ranks by the teacher's {ranked[0].by}: pass --teacher RUN (or select at random)"
        )


def teacher_scores(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Per sample, float64 ``[N]``: ``entropy`` of ``softmax(z)`` (nats) and ``tld`` (module docstring)."""
    from kdlab.analysis.metrics import predictive_entropy, top_logit_difference

    return {"entropy": predictive_entropy(logits), "tld": top_logit_difference(logits, labels)}


def _floor(n: int, fraction: float) -> int:
    return math.floor(n * fraction + 1e-9)  # 100 * 0.29 is 28.999...: a band edge, not rounding noise


def band_positions(n: int, lower: float, upper: float, count: str = "kd_data") -> tuple[int, int]:
    """``(start, stop)``: the positions of the ascending order of ``n`` that a ranked band keeps
    (``data.select_count``, module docstring): ``int(n * lower), int(n * upper)`` (kd_data) or the
    floors with a 1e-9 allowance (floor)."""
    if count == "kd_data":
        return int(n * lower), int(n * upper)  # the official code's truncation of the float product
    return _floor(n, lower), _floor(n, upper)


def random_count(n: int, lower: float, upper: float, count: str = "kd_data") -> int:
    """How many of ``n`` a ``random`` band keeps: ``n - int(round(n * (1 - (upper - lower)), 2))``
    (kd_data: the official code draws that many to leave out) or ``floor(n * upper) - floor(n * lower)``
    (floor). 187 samples, band 0-0.1: 19 (kd_data), 18 (floor)."""
    if count == "kd_data":
        return n - int(round(n * (1 - (upper - lower)), 2))
    start, stop = band_positions(n, lower, upper, count)
    return stop - start


def _band(
    indices: Tensor, rule: Rule, scores: dict[str, Tensor] | None, generator: torch.Generator, count: str
) -> Tensor:
    """The members of ``indices`` (CPU int64) that ``rule``'s band keeps."""
    n = len(indices)
    if rule.by == "random":
        return indices[
            torch.randperm(n, generator=generator)[: random_count(n, rule.lower, rule.upper, count)]
        ]
    assert scores is not None
    start, stop = band_positions(n, rule.lower, rule.upper, count)
    order = torch.sort(scores[rule.by][indices], stable=True).indices
    return indices[order[start:stop]]


def select_indices(
    labels: Tensor,
    rules: list[Rule],
    seed: int = 0,
    scores: dict[str, Tensor] | None = None,
    count: str = "kd_data",
) -> Tensor:
    """Sorted indices (int64 ``[M]``) of the samples ``rules`` keep; ``scores`` (``teacher_scores``) is
    needed for ``entropy``/``tld`` rankings; ``count`` is ``data.select_count``. Classes first, then
    samples among the kept classes."""
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    generator = torch.Generator().manual_seed(seed)
    kept = torch.arange(len(labels))
    for rule in rules:
        if rule.what == "classes":
            classes = torch.unique(labels)
            if rule.by == "random":
                chosen = _band(classes, rule, None, generator, count)
            else:
                assert scores is not None
                means = {rule.by: torch.stack([scores[rule.by][labels == c].mean() for c in classes])}
                chosen = classes[_band(torch.arange(len(classes)), rule, means, generator, count)]
            kept = kept[torch.isin(labels[kept], chosen)]
        else:
            classes = torch.unique(labels[kept])
            groups = [kept[labels[kept] == c] for c in classes] if rule.per_class else [kept]
            bands = [_band(group, rule, scores, generator, count) for group in groups]
            if rule.per_class:
                _check_no_class_emptied(rule, classes, groups, bands)
            kept = torch.cat(bands)
    if len(kept) == 0:
        raise UserError("data.select keeps no training sample: widen the band or enlarge the data")
    return torch.sort(kept).values


def _check_no_class_emptied(rule: Rule, classes: Tensor, groups: list[Tensor], bands: list[Tensor]) -> None:
    """A per-class samples band keeps a share of each class's ``n`` samples (``band_positions``,
    ``random_count``): none for a small class and a narrow band (under ``kd_data``, a ranked one).
    Such a class would vanish from the training set although the rule asked for a share of every
    class, so it is refused (an ``:overall`` band ranks all samples together and may empty classes:
    that is what it asks; selection.json's ``classes_kept`` records what remains)."""
    emptied = [
        (int(c), len(group)) for c, group, band in zip(classes, groups, bands, strict=True) if not len(band)
    ]
    if not emptied:
        return
    listed = ", ".join(f"{c} ({n} samples)" for c, n in emptied[:8]) + (", ..." if len(emptied) > 8 else "")
    band = f"{rule.lower:g}-{rule.upper:g}"
    raise UserError(
        f"data.select band {band} of samples keeps no sample of {len(emptied)} class(es): {listed}; widen the "
        f"band to at least 1/{min(n for _, n in emptied)} of a class, or rank all samples together with "
        f"samples:{rule.by}:{band}:overall"
    )


@torch.no_grad()
def score_training_set(
    teacher: Callable[[Tensor], Tensor], splits: Any, device: torch.device, select_pass: str, seed: int
) -> Tensor:
    """The teacher's float64 logits ``[N, K]`` (CPU) for every training sample, in split order, from one
    clean pass or one crop + flip augmented pass (seeded)."""
    from .datasets import TensorData
    from .loader import make_loader

    augmented = select_pass == "augmented"
    mode = "crop+flip" if isinstance(splits.train, TensorData) else "default"
    loader = make_loader(
        splits, "train", 256, device=device, train=augmented, seed=seed, augment=mode, num_workers=0
    )
    loader.set_epoch(0)
    logits = torch.empty(len(splits.train), splits.num_classes, dtype=torch.float64)
    for batch in loader:
        logits[batch.indices] = teacher(batch.inputs).double().cpu()
    return logits


def select_training_set(
    data: Any,
    splits: Any,
    teacher: Callable[[Tensor], Tensor] | None,
    device: torch.device,
    recorded: Tensor | None = None,
) -> dict[str, Any] | None:
    """Apply ``data.select`` (a DataConfig) to ``splits.train`` in place; the record for the run folder
    (None without a selection), with the sha256 of the kept indices. ``recorded``: the indices a run
    being resumed started with (:func:`kdlab.identity.recorded_selection`), kept as they are, with no
    teacher pass. For in-memory data the samples left out become ``splits.left_out`` (None when the
    selection keeps every sample), in their original order."""
    from kdlab.identity import indices_sha256

    from .datasets import LabelledSubset, TensorData, split_labels

    if not data.select:
        return None
    rules = parse_selection(data.select)
    labels = split_labels(splits.train)
    scores = None
    ranked = any(rule.by != "random" for rule in rules)
    if ranked and recorded is None:
        if teacher is None:
            raise UserError(f"data.select={data.select} ranks by a teacher score: pass --teacher RUN")
        if data.select_pass == "augmented" and not splits.image_inputs:
            raise UserError(
                f"data.select_pass=augmented scores crop+flip views of images, but the samples of {data.name} are "
                "not uint8 images: use data.select_pass=clean"
            )
        scores = teacher_scores(
            score_training_set(teacher, splits, device, data.select_pass, data.select_seed), labels
        )
    if recorded is None:
        indices = select_indices(labels, rules, data.select_seed, scores, data.select_count)
    else:
        indices = recorded
    if isinstance(splits.train, TensorData):
        left_out = torch.ones(len(labels), dtype=torch.bool)
        left_out[indices] = False
        if bool(left_out.any()):
            rest = left_out.nonzero().squeeze(1)
            splits.left_out = TensorData(
                splits.train.images[rest.to(splits.train.images.device)],
                labels[rest].to(splits.train.labels.device),
            )
        splits.train = TensorData(
            splits.train.images[indices.to(splits.train.images.device)],
            labels[indices].to(splits.train.labels.device),
        )
    else:  # an ImageFolder's training split carries its random transforms: no clean left-out pass
        splits.train = LabelledSubset(splits.train, indices.tolist())
    return {
        "select": data.select,
        "select_pass": data.select_pass if ranked else None,
        "select_seed": data.select_seed,
        "select_count": data.select_count,
        "kept": len(indices),
        "of": len(labels),
        "classes_kept": torch.unique(labels[indices]).tolist(),
        "sha256": indices_sha256(indices),
        "indices": indices.tolist(),
    }

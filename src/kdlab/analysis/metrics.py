"""What a student learned, as pure functions of logits and penultimate features.

Notation: logits ``z`` ``[N, K]``, penultimate (pre-logit) features ``r`` ``[N, D]``, labels ``y``
``[N]``; the classifier computes ``z = r W^T + b`` with template vectors = rows of ``W`` ``[K, D]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from kdlab.errors import UserError


def logit_distances(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``||z^s_i - z^t_i||_2`` per sample, ``[N]`` (float64)."""
    return (student_logits.double() - teacher_logits.double()).norm(dim=1)


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Top-1 agreement (%): the share of samples where ``argmax z^s == argmax z^t``."""
    return 100.0 * (student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).double().mean().item()


def predictive_entropy(logits: Tensor) -> Tensor:
    """``H(softmax(z)) = -sum_k p_k log p_k`` per sample, in nats, ``[N]``."""
    log_p = torch.log_softmax(logits.double(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def top_logit_difference(logits: Tensor, labels: Tensor) -> Tensor:
    """TLD per sample ``[N]`` (float64), the official code's ranking score: ``z_y - max_{j != y} z_j``
    when ``y`` is the top class (> 0, or 0 at a tie), ``z_y - max_j z_j`` otherwise (<= 0)."""
    z = logits.double()
    label_logit = z.gather(1, labels.view(-1, 1).to(z.device)).squeeze(1)
    top2 = z.topk(2, dim=1).values
    return torch.where(top2[:, 0] == label_logit, label_logit - top2[:, 1], label_logit - top2[:, 0])


def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE (%) with ``bins`` equal-width confidence bins over ``(0, 1]`` (Guo et al. 2017).

    ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` with ``conf = max_k softmax(z)_k``.
    """
    probabilities = torch.softmax(logits.double(), dim=1)
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).double()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; ceil puts an exact edge in the lower bin.
    index = (torch.ceil(confidence * bins) - 1).clamp(0, bins - 1).long()
    gap = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct - confidence)
    return 100.0 * (gap.abs().sum() / len(labels)).item()


def template_plane(weight: Tensor, classes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The plane through three template vectors (Mueller, Kornblith and Hinton 2019).

    Returns ``(origin [D], basis [D, 2])``: ``origin = w_a``; the basis is Gram-Schmidt on
    ``(w_b - w_a, w_c - w_a)``, so its first axis points from ``w_a`` to ``w_b`` and the plane is
    the affine span of the three templates.
    """
    if len(classes) != 3 or len(set(classes)) != 3:
        raise UserError(
            f"the projection needs three distinct classes, got {list(classes)}: e.g. --classes 0,1,2"
        )
    num_classes = weight.shape[0]
    if any(not 0 <= c < num_classes for c in classes):
        raise UserError(f"classes {list(classes)} must lie in 0..{num_classes - 1}")
    w = weight.detach().double()
    origin = w[classes[0]]
    first = w[classes[1]] - origin
    second = w[classes[2]] - origin
    e1 = first / first.norm()
    residual = second - (second @ e1) * e1
    if residual.norm() <= 1e-9 * second.norm().clamp_min(1e-300):
        raise UserError(f"the templates of classes {list(classes)} are collinear: choose other --classes")
    e2 = residual / residual.norm()
    return origin, torch.stack([e1, e2], dim=1)


def project_onto_plane(features: Tensor, origin: Tensor, basis: Tensor) -> Tensor:
    """Coordinates ``(r - origin) @ basis`` ``[N, 2]`` of features in the plane's orthonormal basis."""
    return (features.double() - origin) @ basis


def describe(values: Tensor | np.ndarray) -> dict[str, float]:
    """Mean, standard deviation (population), median, 5th/95th percentiles, min and max."""
    array = np.asarray(values, dtype=np.float64)
    percentiles = np.percentile(array, [5, 50, 95])
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "median": float(percentiles[1]),
        "p05": float(percentiles[0]),
        "p95": float(percentiles[2]),
        "min": float(array.min()),
        "max": float(array.max()),
    }


def histogram(values: Tensor | np.ndarray, edges: np.ndarray) -> dict[str, list[float]]:
    """Counts of ``values`` in the bins ``edges`` (``len(edges) - 1`` bins), as JSON-ready lists."""
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=edges)
    return {"edges": [float(edge) for edge in edges], "counts": [int(count) for count in counts]}


def wasserstein_1d(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Earth mover's distance ``int |F_a(x) - F_b(x)| dx`` between two 1-D samples (exact)."""
    a = np.sort(np.asarray(a, dtype=np.float64))
    b = np.sort(np.asarray(b, dtype=np.float64))
    points = np.sort(np.concatenate([a, b]))
    widths = np.diff(points)
    cdf_a = np.searchsorted(a, points[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(b, points[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))

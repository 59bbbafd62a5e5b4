"""Label noise with an exact, seeded realised rate: ``symmetric:R`` and ``asymmetric:R``."""

from __future__ import annotations

import torch

from kdlab.errors import UserError

NOISE_KINDS = ("symmetric", "asymmetric")

# The standard CIFAR-10 asymmetric map (Patrini et al. 2017): truck -> automobile, bird -> airplane,
# deer -> horse, cat <-> dog. Other classes have no confusable target and keep their labels.
CIFAR10_ASYMMETRIC = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


def parse_label_noise(spec: str) -> tuple[str, float]:
    """``"symmetric:0.4"`` -> ``("symmetric", 0.4)``; also ``"asymmetric:R"``, with ``0 <= R < 1``."""
    usage = "write KIND:RATE with KIND symmetric or asymmetric and 0 <= RATE < 1, e.g. symmetric:0.4"
    kind, sep, rate_text = str(spec).strip().partition(":")
    kind = kind.strip().lower()
    try:
        rate = float(rate_text)
    except ValueError:
        rate = float("nan")
    if not sep or kind not in NOISE_KINDS or not 0 <= rate < 1:  # NaN fails the range check too
        raise UserError(f"invalid label noise '{spec}': {usage}")
    return kind, rate


def noise_targets(kind: str, num_classes: int, dataset: str | None = None) -> torch.Tensor:
    """The class each class is flipped to by asymmetric noise (int64 ``[K]``, -1 = never flipped).

    CIFAR-10 uses the standard map above; any other dataset the cyclic ``c -> (c + 1) % K``.
    """
    if kind == "asymmetric" and dataset == "cifar10" and num_classes == 10:
        targets = torch.full((10,), -1, dtype=torch.int64)
        targets[list(CIFAR10_ASYMMETRIC)] = torch.tensor(list(CIFAR10_ASYMMETRIC.values()))
        return targets
    return (torch.arange(num_classes) + 1) % num_classes


def apply_label_noise(
    labels: torch.Tensor, num_classes: int, spec: str, seed: int, dataset: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip exactly ``round(rate * M)`` labels; returns ``(noisy_labels [N], flipped_indices [round(rate*M)])``.

    Symmetric: ``M = N``; each chosen sample gets a uniformly random *different* class, so the realised
    rate is exactly ``round(rate * N) / N``. Asymmetric: each chosen sample of class ``c`` gets the
    fixed confusable class ``noise_targets(...)[c]``; only samples whose class has a target are
    candidates, so for cifar10 ``M`` is the number of truck, bird, deer, cat and dog samples and the
    rate is relative to them (for other datasets every sample is a candidate). The choice uses its own
    ``torch.Generator().manual_seed(seed)``, independent of the training seed. ``labels`` is not
    modified; the outputs live on its device, flipped indices sorted.
    """
    kind, rate = parse_label_noise(spec)
    if num_classes < 2:
        raise UserError(f"label noise needs at least 2 classes, got {num_classes}")
    clean = labels.detach().to("cpu", torch.int64)
    generator = torch.Generator().manual_seed(seed)
    targets = noise_targets(kind, num_classes, dataset)
    candidates = (
        torch.arange(len(clean)) if kind == "symmetric" else (targets[clean] >= 0).nonzero().flatten()
    )
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[: round(rate * len(candidates))]]
    chosen = torch.sort(chosen).values
    noisy = clean.clone()
    if kind == "symmetric":
        # An offset in 1..K-1 added modulo K is uniform over the K-1 other classes.
        offsets = torch.randint(1, num_classes, (len(chosen),), generator=generator)
        noisy[chosen] = (clean[chosen] + offsets) % num_classes
    else:
        noisy[chosen] = targets[clean[chosen]]
    return noisy.to(labels.device), chosen

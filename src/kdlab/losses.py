"""The distillation losses of Kim et al. (IJCAI 2021), as pure functions of logits.

Notation: ``s`` = student logits, ``t`` = teacher logits, both ``[B, K]``; ``p(tau) =
softmax(z / tau)``. Every loss returns a scalar: the mean over the batch (``mse_logits`` also
averages over classes, the official code's reduction).

The tau limits are real losses, not hand-written gradients:

- ``tau -> inf``: ``tau^2 * KL -> (1 / 2K) * ||(s - mean s) - (t - mean t)||^2`` (logit matching);
- ``tau -> 0``: ``tau * KL -> max_j s_j - s[argmax t]`` (label matching), whose gradient is
  ``onehot(argmax s) - onehot(argmax t)``.

The KL is evaluated in float64: at large tau it is a difference of nearly equal log-probabilities
(of order 1/tau^2 against terms of order 1), which float32 would bury in rounding. The cost is
B*K elementwise operations, nothing next to a network's forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import UserError
from kdlab.registry import Registry


def check_alpha_tau(alpha: float, tau: float) -> None:
    """Raise a UserError unless ``0 <= alpha <= 1`` and ``tau >= 0`` (``math.inf`` allowed)."""
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise UserError(f"alpha={alpha} is outside [0, 1]: alpha weights the KD term, e.g. --alpha 0.9")
    if not isinstance(tau, (int, float)) or math.isnan(tau) or tau < 0:
        raise UserError(
            f"tau={tau} is invalid: use a temperature >= 0, 'inf' (logit matching) or 0 (label matching)"
        )


def logit_matching(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``(1 / 2K) * ||centre(s - t)||^2``, batch mean: the exact ``tau -> inf`` limit of ``kl_div``."""
    diff = (student_logits - teacher_logits).double()
    centred = diff - diff.mean(dim=1, keepdim=True)
    num_classes = student_logits.shape[1]
    return (centred.square().sum(dim=1) / (2 * num_classes)).mean().to(student_logits.dtype)


def kl_div(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """``tau^2 * KL(p_t(tau) || p_s(tau))``, batch mean. ``tau = math.inf`` gives ``logit_matching``."""
    if tau == math.inf:
        return logit_matching(student_logits, teacher_logits)
    if not tau > 0:
        raise UserError(f"kl_div needs tau > 0 (got {tau}): for tau = 0 use label_matching or kd_loss(tau=0)")
    # KL = sum_k p_t,k d_k - log sum_k p_s,k exp(d_k) with d = (t - s) / tau, any shift of d cancelling.
    # Centring d under p_s makes both terms second order in d, so that at large tau (|d| << 1) the
    # log-moment can go through log1p/expm1 instead of cancelling to rounding noise; rows with large
    # |d| (small tau) take the plain logsumexp, which is exact there.
    student = student_logits.double() / tau
    log_p_student = F.log_softmax(student, dim=1)
    p_student = log_p_student.exp()
    p_teacher = F.softmax(teacher_logits.double() / tau, dim=1)
    d = teacher_logits.double() / tau - student
    d = d - (p_student * d).sum(dim=1, keepdim=True)
    small = d.abs().amax(dim=1) < 1
    d_small = torch.where(small[:, None], d, torch.zeros_like(d))
    log_moment = torch.where(
        small,
        torch.log1p((p_student * torch.expm1(d_small)).sum(dim=1)),
        torch.logsumexp(log_p_student + d, dim=1),
    )
    kl = ((p_teacher * d).sum(dim=1) - log_moment).mean()
    return (tau * tau * kl).to(student_logits.dtype)


def label_matching(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``max_j s_j - s[argmax t]``, batch mean: the exact ``tau -> 0`` limit of ``tau * KL``.

    Zero when the student's top class is the teacher's; its gradient is
    ``onehot(argmax s) - onehot(argmax t)``.
    """
    teacher_top = teacher_logits.argmax(dim=1, keepdim=True)
    return (student_logits.max(dim=1).values - student_logits.gather(1, teacher_top).squeeze(1)).mean()


def mse_logits(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``mean over batch and classes of (s - t)^2`` (PyTorch's default MSELoss, as the official code)."""
    return F.mse_loss(student_logits, teacher_logits)


def soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """``kl_div`` for tau > 0 (``inf`` included) and ``label_matching`` for tau = 0."""
    if tau == 0:
        return label_matching(student_logits, teacher_logits)
    return kl_div(student_logits, teacher_logits, tau)


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, alpha: float, tau: float
) -> Tensor:
    """``(1 - alpha) * CE(s, y) + alpha * kl_div(s, t, tau)``; ``tau = 0`` uses ``label_matching``."""
    return sum(loss_terms("kl", student_logits, teacher_logits, targets, alpha=alpha, tau=tau).values())


# --- the training step's contract: a loss is a dict of named, already weighted terms -------------

LossTerms = Callable[..., dict[str, Tensor]]
LOSSES: Registry[LossTerms] = Registry("loss")


def _with_ce(
    terms: dict[str, Tensor], student_logits: Tensor, targets: Tensor, alpha: float
) -> dict[str, Tensor]:
    # Terms with zero weight are left out, so logs show only what trains the student.
    weighted = {name: alpha * value for name, value in terms.items()} if alpha > 0 else {}
    if alpha < 1:
        weighted = {"ce": (1 - alpha) * F.cross_entropy(student_logits, targets), **weighted}
    return weighted


@LOSSES.register("ce")
def _ce_terms(
    student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, **_: float
) -> dict[str, Tensor]:
    return {"ce": F.cross_entropy(student_logits, targets)}


@LOSSES.register("kl")
def _kl_terms(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, alpha: float = 1.0, tau: float = 4.0
) -> dict[str, Tensor]:
    name = "label" if tau == 0 else "kl"
    soft = soft_target_loss(student_logits, teacher_logits, tau) if alpha > 0 else None
    return _with_ce({name: soft} if soft is not None else {}, student_logits, targets, alpha)


@LOSSES.register("mse")
def _mse_terms(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, alpha: float = 1.0, **_: float
) -> dict[str, Tensor]:
    soft = {"mse": mse_logits(student_logits, teacher_logits)} if alpha > 0 else {}
    return _with_ce(soft, student_logits, targets, alpha)


def loss_terms(
    loss: str,
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    targets: Tensor,
    alpha: float = 1.0,
    tau: float = 4.0,
) -> dict[str, Tensor]:
    """The named, weighted terms of ``loss`` ('ce', 'kl' or 'mse'); the training loss is their sum.

    'kl': ``{"ce": (1-alpha) CE, "kl": alpha kl_div}`` (``"label"`` instead of ``"kl"`` at tau = 0);
    'mse': ``{"ce": (1-alpha) CE, "mse": alpha mse_logits}`` (the paper uses alpha = 1: no CE);
    'ce': ``{"ce": CE}``, no teacher. Zero-weight terms are omitted.
    """
    check_alpha_tau(alpha, tau)
    return LOSSES.get(loss)(student_logits, teacher_logits, targets, alpha=alpha, tau=tau)


def needs_teacher(loss: str) -> bool:
    """Whether ``loss`` reads teacher logits."""
    LOSSES.get(loss)  # validates the name
    return loss != "ce"

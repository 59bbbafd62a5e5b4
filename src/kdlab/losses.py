"""Distillation losses as pure functions of logits, and the one registry that says what each loss is.

Notation: ``s`` = student logits, ``t`` = teacher logits, both ``[B, K]``; ``y`` the labels ``[B]``;
``p(tau) = softmax(z / tau)``. Every loss returns a scalar: the mean over the batch (``mse_logits``
and ``smooth_l1_logits`` also average over classes, the official code's reduction).

The paper's losses (Kim et al., IJCAI 2021). The tau limits are real losses, not hand-written
gradients:

- ``tau -> inf``: ``tau^2 * KL -> (1 / 2K) * ||(s - mean s) - (t - mean t)||^2`` (logit matching);
- ``tau -> 0``: ``tau * KL -> max_j s_j - s[argmax t]`` (label matching), whose gradient is
  ``onehot(argmax s) - onehot(argmax t)``.

The KL is evaluated in float64: at large tau it is a difference of nearly equal log-probabilities
(of order 1/tau^2 against terms of order 1), which float32 would bury in rounding. The cost is
B*K elementwise operations, nothing next to a network's forward pass. The later logit losses
(DKD, DIST, logit standardization) are computed in float64 too, for the same low cost.

A loss declares itself once, with :func:`register_loss`: its report label, the outputs it reads
(teacher logits, penultimate features, the epoch) and the hyperparameters it reads, by the name of
their run-config field ``kd.FIELD``. Each field is declared once, with its default, valid range,
run-name token and hint (``kdlab.config``); this module does not import the config. Config
validation, run names, chain stages, report columns and labels are derived from the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import UserError
from kdlab.registry import Registry


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
    """``(1 - alpha) * CE(s, y) + alpha * kl_div(s, t, tau)``; ``tau = 0`` uses ``label_matching``.

    ``alpha`` in [0, 1] and ``tau`` >= 0 (``math.inf``: logit matching); anything else is a UserError."""
    if not 0 <= alpha <= 1:  # NaN fails too
        raise UserError(f"alpha={alpha} is outside [0, 1]: alpha weights the KD term, e.g. alpha=0.9")
    if not 0 <= tau <= math.inf:
        raise UserError(f"tau={tau} is not a temperature >= 0: use e.g. 4, math.inf (logit matching) or 0")
    terms = loss_terms(
        "kl", student_logits, teacher_logits, targets,
        alpha=alpha, ce_weight=None, kd_weight=None, tau=tau, standardize=False,
    )  # fmt: skip
    return sum(terms.values())


def smooth_l1_logits(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """SmoothL1 (Huber, beta = 1) between logits, mean over batch and classes: PyTorch's default
    ``SmoothL1Loss``, the official code's ``--logit smooth_logit``."""
    return F.smooth_l1_loss(student_logits, teacher_logits)


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample z-score ``(z - mean_k z) / (std_k z + eps)`` (Sun et al., CVPR 2024).

    ``std`` is Bessel-corrected (divides by K - 1) with ``eps = 1e-7``, as in the official code; the
    paper's 1/K version differs by the constant factor ``sqrt(K / (K - 1))``, i.e. a slightly
    different base temperature.
    """
    centred = logits - logits.mean(dim=1, keepdim=True)
    return centred / (logits.std(dim=1, keepdim=True) + eps)


def decoupled_kd(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, tau: float
) -> tuple[Tensor, Tensor]:
    """``(TCKD, NCKD)`` of Decoupled KD (Zhao et al., CVPR 2022), each times ``tau^2``, batch means.

    With ``p = softmax(z / tau)`` and ``y`` the label: TCKD is the KL between the binary
    distributions ``b = (p_y, 1 - p_y)`` of teacher and student, ``KL(b^t || b^s)``; NCKD is the KL
    between the distributions over the non-target classes, ``q_k = softmax_{k != y}(z_k / tau)``,
    ``KL(q^t || q^s)``. The classical KD loss is ``TCKD + (1 - p^t_y) * NCKD`` (the paper's Eq. 3),
    which the tests check. ``log(1 - p_y)`` is a log-sum-exp over the other classes, so nothing
    underflows when ``p_y`` is near 1 (mdistiller takes the log of the probabilities instead).
    """
    target = F.one_hot(targets, student_logits.shape[1]).bool()

    def binary_log(logits: Tensor) -> Tensor:  # [B, 2]: log p_y, log(1 - p_y)
        log_p = F.log_softmax(logits.double() / tau, dim=1)
        log_rest = torch.logsumexp(log_p.masked_fill(target, -math.inf), dim=1)
        return torch.stack([log_p.gather(1, targets[:, None]).squeeze(1), log_rest], dim=1)

    def non_target_log(logits: Tensor) -> Tensor:  # [B, K], 0 at the target (masked out below)
        log_q = F.log_softmax((logits.double() / tau).masked_fill(target, -math.inf), dim=1)
        return log_q.masked_fill(target, 0.0)

    log_b_student, log_b_teacher = binary_log(student_logits), binary_log(teacher_logits)
    tckd = (log_b_teacher.exp() * (log_b_teacher - log_b_student)).sum(dim=1).mean()
    log_q_student, log_q_teacher = non_target_log(student_logits), non_target_log(teacher_logits)
    q_teacher = log_q_teacher.exp().masked_fill(target, 0.0)
    nckd = (q_teacher * (log_q_teacher - log_q_student)).sum(dim=1).mean()
    scale = tau * tau
    return (scale * tckd).to(student_logits.dtype), (scale * nckd).to(student_logits.dtype)


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` ``[N]`` (``eps`` as DIST's code)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_relations(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """``(inter, intra)`` relation losses of DIST (Huang et al., NeurIPS 2022), each times ``tau^2``.

    With ``Y = softmax(Z / tau)`` ``[B, K]``: inter-class = ``1 - mean_i rho(Y^s_i., Y^t_i.)`` (each
    sample's class distribution), intra-class = ``1 - mean_k rho(Y^s_.k, Y^t_.k)`` (each class's scores
    over the batch), ``rho`` the Pearson correlation. The intra-class term needs a batch of 2 or more.
    """
    y_student = F.softmax(student_logits.double() / tau, dim=1)
    y_teacher = F.softmax(teacher_logits.double() / tau, dim=1)
    inter = 1 - _pearson_rows(y_student, y_teacher).mean()
    intra = 1 - _pearson_rows(y_student.T, y_teacher.T).mean()
    scale = tau * tau
    return (scale * inter).to(student_logits.dtype), (scale * intra).to(student_logits.dtype)


# --- the registry: what each loss is, declared once -----------------------------------------------

# What the training step can hand a loss beyond the student's logits and the labels.
INPUTS = ("teacher_logits", "student_features", "teacher_features", "epoch")
TEACHER_INPUTS = ("teacher_logits", "teacher_features")


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: ``terms(student_logits, targets, *, INPUTS it reads, hyperparameters)``
    returns its named, already weighted terms (the training loss is their sum).

    ``params`` pairs each keyword of ``terms`` with the run-config field ``kd.FIELD`` it reads. The
    field's range, default, run-name token and hint are declared once, with the field
    (:mod:`kdlab.config`, ``DistillConfig`` or ``declare_hyperparameter``); ``excludes`` lists values of
    a field this loss cannot take although the field's range allows them (DKD's temperature: not 0,
    not inf). ``min_batch``: the fewest samples a training batch may hold for the loss to mean
    anything (DIST's intra-class term is a correlation over the batch: 2); every batch of an epoch,
    the last partial one included, is checked before a run starts (``kdlab.data.loader``).
    """

    name: str
    terms: Callable[..., dict[str, Tensor]]
    label: str
    params: tuple[tuple[str, str], ...] = ()
    reads: frozenset[str] = frozenset({"teacher_logits"})
    excludes: tuple[tuple[str, tuple[float, ...]], ...] = ()
    min_batch: int = 1

    @property
    def needs_teacher(self) -> bool:
        return bool(self.reads & set(TEACHER_INPUTS))

    @property
    def reads_features(self) -> bool:
        """Whether the step must hand the loss penultimate features (the student's or the teacher's)."""
        return bool(self.reads & {"student_features", "teacher_features"})

    @property
    def fields(self) -> tuple[str, ...]:
        """The ``kd.*`` fields this loss reads (besides ``kd.loss`` and ``kd.teacher``)."""
        return tuple(field for _, field in self.params)

    def field_of(self, keyword: str) -> str | None:
        """The ``kd.*`` field behind the loss's keyword ``keyword`` (DKD's ``beta`` -> ``dkd_beta``)."""
        return next((field for name, field in self.params if name == keyword), None)

    def excluded(self, field: str) -> tuple[float, ...]:
        return next((values for name, values in self.excludes if name == field), ())

    @property
    def batch_need(self) -> str:
        """Why a batch smaller than ``min_batch`` is refused, for error messages."""
        return f"loss {self.name} needs at least {self.min_batch} samples per batch (it reads statistics over the batch)"

    def __call__(self, student_logits: Tensor, targets: Tensor, **given: Any) -> dict[str, Tensor]:
        """The terms; ``given`` holds the inputs this loss reads and every hyperparameter by keyword
        (their defaults and ranges are the config's: ``kdlab.config.loss_values`` gives all of them)."""
        inputs = {}
        for name in sorted(self.reads):
            if given.get(name) is None:
                raise ValueError(f"loss {self.name} reads {name}, which the caller did not pass")
            inputs[name] = given[name]
        keywords = {name for name, _ in self.params}
        unknown = set(given) - set(INPUTS) - keywords
        if unknown:
            raise TypeError(f"loss {self.name} has no hyperparameter {', '.join(sorted(unknown))}")
        missing = sorted(keywords - set(given))
        if missing:
            raise TypeError(
                f"loss {self.name} needs {', '.join(missing)} (kdlab.config.loss_values(kd) gives every "
                "hyperparameter of a run's loss)"
            )
        values = {name: value for name, value in given.items() if name in keywords}
        return self.terms(student_logits, targets, **inputs, **values)


LOSSES: Registry[dict[str, Tensor]] = Registry("loss")


def register_loss(
    name: str,
    *,
    label: str,
    params: Sequence[str] | Mapping[str, str] = (),
    reads: tuple[str, ...] = ("teacher_logits",),
    excludes: Mapping[str, Sequence[float]] | None = None,
    min_batch: int = 1,
    replace: bool = False,
) -> Callable[[Callable[..., dict[str, Tensor]]], Callable[..., dict[str, Tensor]]]:
    """Register ``terms(student_logits, targets, *, <reads>, <params>) -> {term: tensor}`` as ``name``.

    ``params``: the hyperparameters it reads, as ``kd.*`` field names (``("alpha", "tau")``: the
    keyword is the field's name) or a mapping ``{keyword: field}`` (``{"beta": "dkd_beta"}``). Each
    field is declared once with its range and run-name token: kdlab's own in ``DistillConfig``, a
    plugin's with ``kdlab.config.declare_hyperparameter``. ``reads`` names what it needs beyond the
    student's logits and the labels (see ``INPUTS``): none for a loss without a teacher.
    ``excludes``: values of a field that this loss cannot take (``{"tau": (0, math.inf)}``).
    ``min_batch``: the fewest samples per training batch the loss needs (a statistic over the batch:
    2 or more); a run whose batches, or whose last partial batch, would hold fewer is refused.
    A second registration of ``name`` is refused unless ``replace=True``.
    """
    unknown = [item for item in reads if item not in INPUTS]
    if unknown:
        raise ValueError(f"loss {name}: unknown input {unknown[0]!r}; inputs are {', '.join(INPUTS)}")
    pairs = (
        tuple(params.items()) if isinstance(params, Mapping) else tuple((field, field) for field in params)
    )
    excluded = tuple((field, tuple(float(v) for v in values)) for field, values in (excludes or {}).items())
    stray = [field for field, _ in excluded if field not in {f for _, f in pairs}]
    if stray:
        raise ValueError(f"loss {name}: excludes names {stray[0]!r}, which is not one of its params")
    if not isinstance(min_batch, int) or isinstance(min_batch, bool) or min_batch < 1:
        raise ValueError(f"loss {name}: min_batch={min_batch!r} must be a whole number >= 1")

    def decorator(terms: Callable[..., dict[str, Tensor]]) -> Callable[..., dict[str, Tensor]]:
        spec = LossSpec(name, terms, label, pairs, frozenset(reads), excluded, min_batch)
        LOSSES.register(name, replace=replace)(spec)
        return terms

    return decorator


def loss_spec(loss: str) -> LossSpec:
    """The registration of ``loss`` (a UserError naming the valid losses when unknown)."""
    spec = LOSSES.get(loss)
    assert isinstance(spec, LossSpec)
    return spec


def loss_fields() -> tuple[str, ...]:
    """Every ``kd.*`` field some registered loss reads, in registration order."""
    return tuple(dict.fromkeys(field for name in LOSSES.registered() for field in loss_spec(name).fields))


def loss_terms(
    loss: str, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, **given: Any
) -> dict[str, Tensor]:
    """The named, weighted terms of ``loss``; the training loss is their sum.

    ``given``: every hyperparameter by keyword (``alpha=0.9, tau=4``) and the inputs the loss reads
    besides teacher logits (``epoch=``,
    ``student_features=``, ...). 'kl': ``{"ce": (1-alpha) CE, "kl": alpha kl_div}`` (``"label"`` at
    tau = 0; ``ce_weight``/``kd_weight`` instead of ``1 - alpha``/``alpha`` when given, see
    :func:`term_weights`); 'ce': ``{"ce": CE}``. Zero-weight terms are omitted.
    """
    return loss_spec(loss)(student_logits, targets, teacher_logits=teacher_logits, **given)


def needs_teacher(loss: str) -> bool:
    """Whether ``loss`` reads the teacher (its logits or its features)."""
    return loss_spec(loss).needs_teacher


# --- the registered losses ----------------------------------------------------------------------

# Temperatures these losses cannot take, although kd.tau's range (for KL) holds them.
LIMIT_TEMPERATURES = {"tau": (0.0, math.inf)}


def term_weights(alpha: float, ce_weight: float | None, kd_weight: float | None) -> tuple[float, float]:
    """``(weight of CE, weight of the KD term)`` of the losses that read ``kd.alpha``: the paper's
    ``(1 - alpha, alpha)``, or ``(ce_weight, kd_weight)`` when both are given (mdistiller's
    ``CE_WEIGHT``/``KD_WEIGHT``: logit standardization's recipe is 0.1 * CE + 9 * KD), which then
    replace alpha. One weight without the other, or two zero weights, is a UserError."""
    if ce_weight is None and kd_weight is None:
        return 1.0 - alpha, alpha
    if ce_weight is None or kd_weight is None:
        given, missing = ("kd_weight", "ce_weight") if ce_weight is None else ("ce_weight", "kd_weight")
        raise UserError(
            f"kd.{given} is given without kd.{missing}: give both (the loss is then ce_weight * CE + kd_weight * KD), "
            "or neither and kd.alpha ((1 - alpha) * CE + alpha * KD)"
        )
    if ce_weight == 0 and kd_weight == 0:
        raise UserError(
            "kd.ce_weight=0 and kd.kd_weight=0 leave nothing to learn from: give one a positive weight"
        )
    return ce_weight, kd_weight


def _with_ce(
    terms: dict[str, Tensor], student_logits: Tensor, targets: Tensor, ce_weight: float, kd_weight: float
) -> dict[str, Tensor]:
    """``ce_weight * CE`` and ``kd_weight *`` each of ``terms``. Terms with zero weight are left out, so
    logs show only what trains the student."""
    weighted = {name: kd_weight * value for name, value in terms.items()} if kd_weight > 0 else {}
    if ce_weight > 0:
        weighted = {"ce": ce_weight * F.cross_entropy(student_logits, targets), **weighted}
    return weighted


def _weighted(
    student_logits: Tensor, targets: Tensor, terms: dict[str, tuple[float, Tensor]]
) -> dict[str, Tensor]:
    """Cross-entropy at weight 1 plus ``weight * term`` for each term of positive weight."""
    kept = {name: weight * value for name, (weight, value) in terms.items() if weight > 0}
    return {"ce": F.cross_entropy(student_logits, targets), **kept}


@register_loss("ce", label="CE", reads=())
def _ce_terms(student_logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"ce": F.cross_entropy(student_logits, targets)}


# What weighs a loss's CE and KD terms: alpha, or ce_weight and kd_weight instead (term_weights).
WEIGHTS = ("alpha", "ce_weight", "kd_weight")


@register_loss("kl", label="KL", params=("standardize", "alpha", "tau", "ce_weight", "kd_weight"))
def _kl_terms(
    student_logits: Tensor,
    targets: Tensor,
    *,
    teacher_logits: Tensor,
    alpha: float,
    ce_weight: float | None,
    kd_weight: float | None,
    tau: float,
    standardize: bool,
) -> dict[str, Tensor]:
    """``w_ce * CE + w_kd * tau^2 KL`` with ``(w_ce, w_kd)`` from :func:`term_weights`; with
    ``standardize``, the KL of z-scored logits (Sun et al., CVPR 2024; CE reads the raw logits)."""
    ce_weight, kd_weight = term_weights(alpha, ce_weight, kd_weight)
    if kd_weight == 0:
        return _with_ce({}, student_logits, targets, ce_weight, kd_weight)
    student, teacher = student_logits, teacher_logits
    if standardize:
        student, teacher = standardize_logits(student), standardize_logits(teacher)
    name = "label" if tau == 0 else "kl"
    soft = {name: soft_target_loss(student, teacher, tau)}
    return _with_ce(soft, student_logits, targets, ce_weight, kd_weight)


@register_loss("mse", label="MSE", params=WEIGHTS)
def _mse_terms(
    student_logits: Tensor, targets: Tensor, *, teacher_logits: Tensor, alpha: float,
    ce_weight: float | None, kd_weight: float | None,
) -> dict[str, Tensor]:  # fmt: skip
    ce_weight, kd_weight = term_weights(alpha, ce_weight, kd_weight)
    soft = {"mse": mse_logits(student_logits, teacher_logits)} if kd_weight > 0 else {}
    return _with_ce(soft, student_logits, targets, ce_weight, kd_weight)


@register_loss("smooth_logit", label="SmoothL1", params=WEIGHTS)
def _smooth_logit_terms(
    student_logits: Tensor, targets: Tensor, *, teacher_logits: Tensor, alpha: float,
    ce_weight: float | None, kd_weight: float | None,
) -> dict[str, Tensor]:  # fmt: skip
    ce_weight, kd_weight = term_weights(alpha, ce_weight, kd_weight)
    soft = {"smooth_l1": smooth_l1_logits(student_logits, teacher_logits)} if kd_weight > 0 else {}
    return _with_ce(soft, student_logits, targets, ce_weight, kd_weight)


@register_loss(
    "dkd", label="DKD", reads=("teacher_logits", "epoch"),
    params={"alpha": "dkd_alpha", "beta": "dkd_beta", "tau": "tau", "warmup": "dkd_warmup",
            "standardize": "standardize"},
    excludes=LIMIT_TEMPERATURES,
)  # fmt: skip
def _dkd_terms(
    student_logits: Tensor, targets: Tensor, *, teacher_logits: Tensor, epoch: int,
    alpha: float, beta: float, tau: float, warmup: int, standardize: bool,
) -> dict[str, Tensor]:  # fmt: skip
    """``CE + w * (alpha * TCKD + beta * NCKD)``, ``w = min(epoch / warmup, 1)`` with 1-based epochs
    (mdistiller); with ``standardize``, TCKD and NCKD of z-scored logits, CE of the raw ones (the
    logit-standardization code's DKD: its recipe multiplies alpha and beta by 9 at tau 2)."""
    ramp = min(epoch / warmup, 1.0) if warmup > 0 else 1.0
    student, teacher = student_logits, teacher_logits
    if standardize:
        student, teacher = standardize_logits(student), standardize_logits(teacher)
    tckd, nckd = decoupled_kd(student, teacher, targets, tau)
    return _weighted(student_logits, targets, {"tckd": (ramp * alpha, tckd), "nckd": (ramp * beta, nckd)})


@register_loss(
    "dist", label="DIST", params={"beta": "dist_beta", "gamma": "dist_gamma", "tau": "tau"},
    excludes=LIMIT_TEMPERATURES, min_batch=2,  # the intra-class Pearson over a batch of 1 is constant
)  # fmt: skip
def _dist_terms(
    student_logits: Tensor, targets: Tensor, *, teacher_logits: Tensor, beta: float, gamma: float, tau: float
) -> dict[str, Tensor]:
    """``CE + beta * inter + gamma * intra`` (Huang et al., NeurIPS 2022)."""
    inter, intra = dist_relations(student_logits, teacher_logits, tau)
    return _weighted(student_logits, targets, {"inter": (beta, inter), "intra": (gamma, intra)})

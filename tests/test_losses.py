"""The losses against an independent float64 NumPy implementation of shared/PAPER.md's formulas."""

import math

import numpy as np
import pytest
import torch

from kdlab.config import build_config
from kdlab.errors import UserError
from kdlab.losses import (
    decoupled_kd,
    dist_relations,
    kd_loss,
    kl_div,
    label_matching,
    loss_spec,
    loss_terms,
    mse_logits,
    needs_teacher,
    smooth_l1_logits,
)

B, K = 6, 10
UNSET = {"ce_weight": None, "kd_weight": None}  # the losses weighted by alpha: no ce_weight/kd_weight given


def logits(
    seed: int, scale: float = 3.0, dtype=torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = (scale * torch.randn(B, K, generator=g)).to(dtype)
    teacher = (scale * torch.randn(B, K, generator=g)).to(dtype)
    targets = torch.randint(0, K, (B,), generator=g)
    return student, teacher, targets


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kd(s: np.ndarray, t: np.ndarray, y: np.ndarray, alpha: float, tau: float) -> tuple[float, np.ndarray]:
    """Value and gradient (w.r.t. s) of the paper's KD loss, batch mean, written from the formulas."""
    ps, pt = np_softmax(s / tau), np_softmax(t / tau)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(axis=1)
    p1 = np_softmax(s)
    ce = -np.log(p1[np.arange(len(y)), y])
    onehot = np.eye(s.shape[1])[y]
    value = ((1 - alpha) * ce + alpha * tau**2 * kl).mean()
    grad = ((1 - alpha) * (p1 - onehot) + alpha * tau * (ps - pt)) / len(y)
    return value, grad


def value_and_grad(fn, student: torch.Tensor, *args) -> tuple[float, np.ndarray]:
    student = student.clone().requires_grad_(True)
    value = fn(student, *args)
    value.backward()
    return value.item(), student.grad.numpy()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("tau", [0.5, 1.0, 4.0, 20.0])
def test_kd_loss_matches_independent_float64(alpha: float, tau: float) -> None:
    s, t, y = logits(1)
    value, grad = value_and_grad(kd_loss, s, t, y, alpha, tau)
    ref_value, ref_grad = np_kd(s.numpy(), t.numpy(), y.numpy(), alpha, tau)
    assert value == pytest.approx(ref_value, abs=1e-6, rel=1e-9)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6, rtol=0)


def test_kl_div_hand_computed_two_classes() -> None:
    # p_t = softmax([0, ln 3]) = (1/4, 3/4); p_s = (1/2, 1/2); tau = 1.
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kl_div(s, t, 1.0).item() == pytest.approx(expected, rel=1e-12)
    # tau = 2 scales the logits by 1/2 and the value by tau^2 = 4.
    p_t = np.array([1.0, math.sqrt(3.0)]) / (1 + math.sqrt(3.0))
    expected_tau2 = 4 * float((p_t * np.log(p_t / 0.5)).sum())
    assert kl_div(s, t, 2.0).item() == pytest.approx(expected_tau2, rel=1e-12)


def test_mse_logits_is_mean_over_batch_and_classes() -> None:
    s = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    t = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    assert mse_logits(s, t).item() == pytest.approx((1 + 4 + 4 + 0) / 4)


def test_label_matching_hand_computed() -> None:
    s = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, -1.0]])
    t = torch.tensor([[0.0, 0.0, 9.0], [7.0, 1.0, 1.0]])
    # Row 1: max s = 5, s[argmax t = 2] = 2 -> 3. Row 2: argmax agree -> 0.
    assert label_matching(s, t).item() == pytest.approx(1.5)


def test_tau_inf_is_centred_mse_over_2k_with_closed_form_gradient() -> None:
    s, t, _ = logits(2)
    value, grad = value_and_grad(kl_div, s, t, math.inf)
    diff = (s - t).numpy()
    centred = diff - diff.mean(axis=1, keepdims=True)
    assert value == pytest.approx((centred**2).sum(axis=1).mean() / (2 * K), rel=1e-12)
    np.testing.assert_allclose(grad, centred / K / B, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_tau_converges_to_logit_matching(dtype: torch.dtype) -> None:
    s, t, _ = logits(3, dtype=dtype)
    limit_value, limit_grad = value_and_grad(kl_div, s, t, math.inf)
    # The gap closes like 1/tau, and float32 stays accurate all the way to tau = 1e6.
    for tau, tolerance in [(1e4, 1e-3), (1e6, 1e-5)]:
        value, grad = value_and_grad(kl_div, s, t, tau)
        assert value == pytest.approx(limit_value, rel=tolerance)
        np.testing.assert_allclose(grad, limit_grad, atol=tolerance * np.abs(limit_grad).max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_tau_kl_over_tau_converges_to_label_matching(dtype: torch.dtype) -> None:
    s, t, _ = logits(4, dtype=dtype)
    limit_value, limit_grad = value_and_grad(label_matching, s, t)
    value, grad = value_and_grad(lambda x, y: kl_div(x, y, 1e-3) / 1e-3, s, t)
    assert value == pytest.approx(limit_value, abs=1e-3)
    np.testing.assert_allclose(grad, limit_grad, atol=1e-6)
    s_argmax, t_argmax = np.eye(K)[s.argmax(1)], np.eye(K)[t.argmax(1)]
    np.testing.assert_allclose(limit_grad, (s_argmax - t_argmax) / B, atol=0)


def test_mse_gradient_is_twice_logit_matching_plus_mean_matching() -> None:
    s, t, _ = logits(5)
    _, mse_grad = value_and_grad(mse_logits, s, t)
    _, inf_grad = value_and_grad(kl_div, s, t, math.inf)
    mean_matching = 2 * (s - t).mean(dim=1, keepdim=True).numpy() / (B * K) * np.ones((1, K))
    np.testing.assert_allclose(mse_grad, 2 * inf_grad + mean_matching, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [1e-3, 1e-2, 1.0, 1e2, 1e4, 1e6])
def test_stable_over_tau_range(dtype: torch.dtype, tau: float) -> None:
    s, t, y = logits(6, scale=20.0, dtype=dtype)
    for alpha in (0.5, 1.0):
        value, grad = value_and_grad(kd_loss, s, t, y, alpha, tau)
        assert math.isfinite(value) and np.isfinite(grad).all()
    # Against the float64 reference where its plain formula is itself trustworthy.
    if 1.0 <= tau <= 1e2:
        ref_value, _ = np_kd(s.double().numpy(), t.double().numpy(), y.numpy(), 1.0, tau)
        assert kl_div(s, t, tau).item() == pytest.approx(ref_value, rel=1e-5)


def test_kd_loss_tau_zero_is_label_matching_and_terms_are_named() -> None:
    s, t, y = logits(7)
    terms = loss_terms("kl", s, t, y, alpha=0.4, tau=0, standardize=False, **UNSET)
    assert set(terms) == {"ce", "label"}
    assert kd_loss(s, t, y, 0.4, 0).item() == pytest.approx(
        0.6 * torch.nn.functional.cross_entropy(s, y).item() + 0.4 * label_matching(s, t).item()
    )
    assert set(loss_terms("kl", s, t, y, alpha=1.0, tau=4.0, standardize=False, **UNSET)) == {"kl"}
    assert set(loss_terms("mse", s, t, y, alpha=1.0, **UNSET)) == {"mse"}
    with pytest.raises(TypeError, match="loss mse needs alpha"):
        loss_terms("mse", s, t, y)
    assert set(loss_terms("ce", s, None, y)) == {"ce"}


@pytest.mark.parametrize(
    ("alpha", "tau", "message"),
    [
        (1.5, 4.0, "alpha=1.5 is outside [0, 1]"),
        (-0.1, 4.0, "outside [0, 1]"),
        (0.5, -1.0, "tau=-1.0 is not a temperature >= 0: use e.g. 4"),
        (0.5, float("nan"), "tau=nan is not a temperature >= 0"),
    ],
)
def test_bad_alpha_tau_are_user_errors(alpha: float, tau: float, message: str) -> None:
    s, t, y = logits(8)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        kd_loss(s, t, y, alpha, tau)


def test_unknown_loss_suggests_closest() -> None:
    s, t, y = logits(9)
    with pytest.raises(UserError, match="did you mean mse"):
        loss_terms("mes", s, t, y)


# --- the losses that came after the paper, against their papers' formulas --------------------------


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def np_kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row, 0 * log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(axis=1)


def np_dkd(s: np.ndarray, t: np.ndarray, y: np.ndarray, tau: float) -> tuple[float, float]:
    """Zhao et al. (CVPR 2022), Eqs. 1-2: b = (p_y, 1 - p_y), q = p over the non-target classes renormalised."""
    rows = np.arange(len(y))
    ps, pt = np_softmax(s / tau), np_softmax(t / tau)
    b_s = np.stack([ps[rows, y], 1 - ps[rows, y]], axis=1)
    b_t = np.stack([pt[rows, y], 1 - pt[rows, y]], axis=1)
    others = np.ones_like(ps, dtype=bool)
    others[rows, y] = False
    q_s = ps[others].reshape(len(y), -1) / b_s[:, 1:]
    q_t = pt[others].reshape(len(y), -1) / b_t[:, 1:]
    return tau**2 * np_kl_rows(b_t, b_s).mean(), tau**2 * np_kl_rows(q_t, q_s).mean()


def test_dkd_hand_computed_three_classes() -> None:
    # p_s = (1/3, 1/3, 1/3); teacher logits (0, ln 3, 0): p_t = (1/5, 3/5, 1/5); target class 0.
    # b_t = (0.2, 0.8), b_s = (1/3, 2/3); q_t = (3/4, 1/4), q_s = (1/2, 1/2).
    s = torch.zeros(1, 3, dtype=torch.float64)
    t = torch.tensor([[0.0, math.log(3.0), 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    tckd, nckd = decoupled_kd(s, t, y, tau=1.0)
    assert tckd.item() == pytest.approx(0.2 * math.log(0.6) + 0.8 * math.log(1.2), rel=1e-12)
    assert nckd.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-12)
    # The paper's Eq. 3: KD = TCKD + (1 - p^t_y) NCKD.
    assert kl_div(s, t, 1.0).item() == pytest.approx(tckd.item() + 0.8 * nckd.item(), rel=1e-12)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dkd_matches_independent_float64_and_kd_decomposition(tau: float) -> None:
    s, t, y = logits(10)
    tckd, nckd = decoupled_kd(s, t, y, tau)
    ref_tckd, ref_nckd = np_dkd(s.numpy(), t.numpy(), y.numpy(), tau)
    assert tckd.item() == pytest.approx(ref_tckd, rel=1e-10)
    assert nckd.item() == pytest.approx(ref_nckd, rel=1e-10)
    # Per sample, tau^2 KL = TCKD_i + (1 - p^t_y,i) NCKD_i; check it row by row.
    weight = 1 - torch.softmax(t / tau, dim=1)[torch.arange(B), y]
    for i in range(B):
        row = slice(i, i + 1)
        tckd_i, nckd_i = decoupled_kd(s[row], t[row], y[row], tau)
        assert kl_div(s[row], t[row], tau).item() == pytest.approx(
            (tckd_i + weight[i] * nckd_i).item(), rel=1e-10
        )
    assert torch.autograd.gradcheck(lambda x: sum(decoupled_kd(x, t, y, tau)), s.clone().requires_grad_(True))


def test_dkd_terms_weights_and_warmup() -> None:
    s, t, y = logits(11)
    tckd, nckd = decoupled_kd(s, t, y, 4.0)
    ce = torch.nn.functional.cross_entropy(s, y)
    full = loss_terms("dkd", s, t, y, epoch=30, alpha=1.0, beta=8.0, tau=4.0, warmup=20, standardize=False)
    assert set(full) == {"ce", "tckd", "nckd"}
    assert full["ce"].item() == pytest.approx(ce.item())  # cross-entropy at weight 1, as in the paper
    assert full["tckd"].item() == pytest.approx(tckd.item()) and full["nckd"].item() == pytest.approx(
        8 * nckd.item()
    )
    # mdistiller's linear warm-up min(epoch / warmup, 1), 1-based epochs: epoch 5 of 20 -> 1/4.
    ramp = loss_terms("dkd", s, t, y, epoch=5, alpha=2.0, beta=8.0, tau=4.0, warmup=20, standardize=False)
    assert ramp["tckd"].item() == pytest.approx(0.25 * 2 * tckd.item())
    assert ramp["nckd"].item() == pytest.approx(0.25 * 8 * nckd.item())
    no_warmup = loss_terms("dkd", s, t, y, epoch=1, alpha=1.0, beta=0.0, tau=4.0, warmup=0, standardize=False)
    assert set(no_warmup) == {"ce", "tckd"} and no_warmup["tckd"].item() == pytest.approx(tckd.item())
    for tau in (0.0, math.inf):  # kd.tau's range holds them (for KL); DKD excludes both
        with pytest.raises(
            UserError, match=r"kd.tau=(0|inf) cannot be used with loss dkd, which excludes 0, inf"
        ):
            build_config(flags={"kd": {"loss": "dkd", "teacher": "t", "tau": tau}})


def np_pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([np.corrcoef(row_a, row_b)[0, 1] for row_a, row_b in zip(a, b, strict=True)])


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dist_matches_independent_float64(tau: float) -> None:
    s, t, y = logits(12)
    inter, intra = dist_relations(s, t, tau)
    ys, yt = np_softmax(s.numpy() / tau), np_softmax(t.numpy() / tau)
    # Huang et al. (NeurIPS 2022), Eqs. 4-6: 1 - mean Pearson over samples (rows) and over classes (columns).
    assert inter.item() == pytest.approx(tau**2 * (1 - np_pearson_rows(ys, yt).mean()), rel=1e-6)
    assert intra.item() == pytest.approx(tau**2 * (1 - np_pearson_rows(ys.T, yt.T).mean()), rel=1e-6)
    terms = loss_terms("dist", s, t, y, beta=2.0, gamma=0.5, tau=tau)
    assert set(terms) == {"ce", "inter", "intra"}
    assert terms["inter"].item() == pytest.approx(2 * inter.item())
    assert terms["intra"].item() == pytest.approx(0.5 * intra.item())
    assert torch.autograd.gradcheck(lambda x: sum(dist_relations(x, t, tau)), s.clone().requires_grad_(True))


def test_dist_hand_computed_and_invariances() -> None:
    # Two classes: a row (p, 1 - p) centred is (p - 1/2)(1, -1), so the per-sample Pearson correlation
    # is +1 when student and teacher favour the same class and -1 otherwise.
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    inter, _ = dist_relations(s, t, 1.0)
    assert inter.item() == pytest.approx(1 - (1 - 1 + 1) / 3, abs=1e-7)
    # Perfect relations: a student equal to the teacher loses nothing (up to the eps = 1e-8 that DIST's
    # code adds to the denominator, here about tau^2 * eps / ||centred Y_i||^2 ~ 1e-5).
    _, t2, _ = logits(13)
    inter, intra = dist_relations(t2, t2, 4.0)
    assert inter.item() == pytest.approx(0, abs=1e-4) and intra.item() == pytest.approx(0, abs=1e-4)


def test_logit_standardization_is_kl_of_zscored_logits() -> None:
    s, t, y = logits(14)
    tau = 2.0
    # Sun et al. (CVPR 2024): Z(z) = (z - mean z) / std z per sample (std Bessel-corrected as their code),
    # then the usual tau^2 KL at the base temperature.
    z_s = (s.numpy() - s.numpy().mean(1, keepdims=True)) / (s.numpy().std(1, ddof=1, keepdims=True) + 1e-7)
    z_t = (t.numpy() - t.numpy().mean(1, keepdims=True)) / (t.numpy().std(1, ddof=1, keepdims=True) + 1e-7)
    expected = tau**2 * np_kl_rows(np_softmax(z_t / tau), np.exp(np_log_softmax(z_s / tau))).mean()
    terms = loss_terms("kl", s, t, y, alpha=1.0, tau=tau, standardize=True, **UNSET)
    assert set(terms) == {"kl"} and terms["kl"].item() == pytest.approx(expected, rel=1e-9)
    # The point of the method: the student's logit scale and shift no longer matter.
    moved = loss_terms("kl", 3.0 * s + 5.0, t, y, alpha=1.0, tau=tau, standardize=True, **UNSET)["kl"]
    assert moved.item() == pytest.approx(expected, rel=1e-6)
    assert loss_terms("kl", s, t, y, alpha=1.0, tau=tau, standardize=False, **UNSET)[
        "kl"
    ].item() != pytest.approx(expected, rel=1e-3)


def test_smooth_logit_hand_computed() -> None:
    # SmoothL1 with beta 1: 0.5 d^2 for |d| < 1, |d| - 0.5 otherwise; mean over batch and classes.
    s = torch.tensor([[0.5, 2.0], [0.0, -3.0]])
    t = torch.zeros(2, 2)
    expected = (0.5 * 0.25 + 1.5 + 0.0 + 2.5) / 4
    assert smooth_l1_logits(s, t).item() == pytest.approx(expected)
    y = torch.tensor([0, 1])
    assert loss_terms("smooth_logit", s, t, y, alpha=1.0, **UNSET)["smooth_l1"].item() == pytest.approx(
        expected
    )
    half = loss_terms("smooth_logit", s, t, y, alpha=0.5, **UNSET)
    assert half["smooth_l1"].item() == pytest.approx(0.5 * expected) and set(half) == {"ce", "smooth_l1"}


def test_registrations_give_names_labels_ranges_and_teacher_needs() -> None:
    from kdlab.config import DistillConfig, loss_label, loss_tokens

    kd = DistillConfig(loss="kl", alpha=0.9, tau=math.inf)
    assert loss_tokens(kd) == ["kl", "a0.9", "tinf"]
    assert loss_label(kd) == "KL alpha=0.9 tau=inf"
    assert loss_label(DistillConfig(loss="kl", tau=2.0, standardize=True)) == "KL+LS tau=2"
    assert loss_tokens(DistillConfig(loss="kl", tau=2.0, standardize=True)) == ["kl", "ls", "a1", "t2"]
    assert loss_tokens(DistillConfig(loss="dkd")) == ["dkd", "a1", "b8", "t4", "w20"]
    assert loss_label(DistillConfig(loss="dkd", dkd_beta=6.0)) == "DKD beta=6 tau=4"
    assert loss_label(DistillConfig(loss="dist")) == "DIST tau=4"
    assert loss_label(DistillConfig(loss="mse", alpha=0.5)) == "MSE alpha=0.5"
    assert not needs_teacher("ce") and all(needs_teacher(name) for name in ("kl", "mse", "dkd", "dist"))
    assert loss_spec("dkd").reads == {"teacher_logits", "epoch"}
    dkd = {"kd": {"loss": "dkd", "teacher": "t"}}
    with pytest.raises(UserError, match=r"kd.dkd_warmup=2.5 is not a valid int"):
        build_config(base=dkd, overrides=["kd.dkd_warmup=2.5"])
    with pytest.raises(UserError, match=r"kd.dist_gamma=-1.0 is outside \[0, 10000\]"):
        build_config(flags={"kd": {"loss": "dist", "teacher": "t", "dist_gamma": -1.0}})
    # tau is not an MSE hyperparameter: given, it is refused as unread, whatever its value
    with pytest.raises(
        UserError,
        match=r"kd.tau is not read by loss mse, which reads kd.alpha, kd.ce_weight, kd.kd_weight: drop kd.tau",
    ):
        build_config(flags={"kd": {"loss": "mse", "teacher": "t", "tau": -1.0}})

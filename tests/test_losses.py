"""The losses against an independent float64 NumPy implementation of shared/PAPER.md's formulas."""

import math

import numpy as np
import pytest
import torch

from kdlab.errors import UserError
from kdlab.losses import kd_loss, kl_div, label_matching, loss_terms, mse_logits

B, K = 6, 10


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
    terms = loss_terms("kl", s, t, y, alpha=0.4, tau=0)
    assert set(terms) == {"ce", "label"}
    assert kd_loss(s, t, y, 0.4, 0).item() == pytest.approx(
        0.6 * torch.nn.functional.cross_entropy(s, y).item() + 0.4 * label_matching(s, t).item()
    )
    assert set(loss_terms("kl", s, t, y, alpha=1.0, tau=4.0)) == {"kl"}
    assert set(loss_terms("mse", s, t, y)) == {"mse"}
    assert set(loss_terms("ce", s, None, y)) == {"ce"}


@pytest.mark.parametrize(
    ("alpha", "tau", "message"),
    [
        (1.5, 4.0, "alpha=1.5 is outside [0, 1]"),
        (-0.1, 4.0, "outside [0, 1]"),
        (0.5, -1.0, "tau=-1.0 is invalid"),
        (0.5, float("nan"), "tau=nan is invalid"),
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

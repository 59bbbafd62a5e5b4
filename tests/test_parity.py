"""Parity with the reference code (issue 17), each against a value computed by hand:

- ``data.select`` counts as jhoon-oh/kd_data does (``data.select_count=kd_data``), today's rule kept
  as ``floor``; a run recorded before the setting existed is not resumed under the new rule;
- ``kd.ce_weight``/``kd.kd_weight``: logit standardization's recipe, 0.1 * CE + 9 * KD at tau 2;
- ``kd.standardize`` for DKD (the logit-standardization code's DKD);
- the accuracy on the training samples a data-fraction run leaves out, every epoch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from fixtures_engine import make_config

from kdlab.config import DistillConfig, build_config, loss_label, loss_tokens, loss_values
from kdlab.data import load_dataset
from kdlab.data.select import parse_selection, select_indices
from kdlab.engine import train
from kdlab.errors import UserError
from kdlab.export import load_student
from kdlab.losses import loss_terms

# --- data.select: how many of each class a band keeps ------------------------------------------------

# Five classes of unequal size (SVHN's, a subset's or noisy labels' are unequal too).
SIZES = [187, 95, 33, 12, 90]
LABELS = torch.cat([torch.full((n,), c) for c, n in enumerate(SIZES)])


def kept_per_class(spec: str, count: str, scores: dict | None = None) -> list[int]:
    kept = select_indices(LABELS, parse_selection(spec), seed=0, scores=scores, count=count)
    return torch.bincount(LABELS[kept], minlength=len(SIZES)).tolist()


def test_random_bands_keep_what_kd_data_keeps_floor_what_kdlab_kept() -> None:
    # kd_data draws int(round(n * (1 - (upper - lower)), 2)) samples to leave out and keeps the rest:
    # 187 * 0.9 = 168.3 -> 19; 95 * 0.9 = 85.5 -> 10; 33 * 0.9 = 29.7 -> 4; 12 * 0.9 = 10.8 -> 2; 81 -> 9.
    assert kept_per_class("samples:random:0-0.1", "kd_data") == [19, 10, 4, 2, 9]
    # floor: floor(18.7), floor(9.5), floor(3.3), floor(1.2), 9.
    assert kept_per_class("samples:random:0-0.1", "floor") == [18, 9, 3, 1, 9]
    # kd_data's count depends on the band's width only; floor's on its edges: floor(6.6) - floor(3.3) = 3
    # of 33 and floor(2.4) - floor(1.2) = 1 of 12.
    assert kept_per_class("samples:random:0.1-0.2", "kd_data") == [19, 10, 4, 2, 9]
    assert kept_per_class("samples:random:0.1-0.2", "floor") == [19, 10, 3, 1, 9]
    # The default is kd_data.
    assert (
        select_indices(LABELS, parse_selection("samples:random:0-0.1")).tolist()
        == select_indices(LABELS, parse_selection("samples:random:0-0.1"), count="kd_data").tolist()
    )
    # Over all 417 samples: 417 - int(375.3) = 42, against floor(41.7) = 41.
    overall = parse_selection("samples:random:0-0.1:overall")
    assert len(select_indices(LABELS, overall)) == 42
    assert len(select_indices(LABELS, overall, count="floor")) == 41
    # Classes, the same counts: 7 classes, band 0-0.5: 7 - int(3.5) = 4 classes, against floor(3.5) = 3.
    seven = torch.arange(70) % 7
    for count, classes in (("kd_data", 4), ("floor", 3)):
        kept = select_indices(seven, parse_selection("classes:random:0-0.5"), count=count)
        assert len(torch.unique(seven[kept])) == classes and len(kept) == 10 * classes


def test_ranked_bands_keep_kd_datas_truncated_positions() -> None:
    # Scores falling with the index: the ascending order of a class is its samples from the last.
    scores = {"entropy": -torch.arange(len(LABELS), dtype=torch.float64)}
    # kd_data keeps positions int(n * 0.6) to int(n * 0.7) of the order, the products as floats:
    # 187: 112 to int(130.9) = 130 (18); 95: 57 to int(66.5) = 66 (9); 33: int(19.8) to int(23.1) (4);
    # 12: int(7.2) to int(8.4) (1); 90: 54 to int(62.99999999999999) = 62 (8, where floor keeps 9).
    assert kept_per_class("samples:entropy:0.6-0.7", "kd_data", scores) == [18, 9, 4, 1, 8]
    assert kept_per_class("samples:entropy:0.6-0.7", "floor", scores) == [18, 9, 4, 1, 9]
    kept = select_indices(LABELS, parse_selection("samples:entropy:0.6-0.7"), scores=scores)
    last_class = kept[LABELS[kept] == 4]
    first = sum(SIZES[:4])  # class 4 holds indices first .. first + 89; its order runs from the last
    assert last_class.tolist() == sorted(first + 89 - position for position in range(54, 62))


def test_select_count_is_checked_and_recorded(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data.select_count='ceiling' is invalid: choose kd_data"):
        build_config(
            flags={"data": {"name": "digits", "select": "samples:random:0-0.1", "select_count": "ceiling"}}
        )
    assert build_config(flags={"data": {"name": "digits"}}).data.select_count == "kd_data"


# --- the weights of CE and KD: logit standardization's recipe -------------------------------------------

S = [[2.0, 0.5, -1.0], [0.3, 1.2, 0.0]]
T = [[3.0, -0.5, 0.2], [-1.0, 2.5, 0.5]]
Y = [0, 1]


def zscore(row: list[float]) -> list[float]:
    """(z - mean) / (std + 1e-7), std with K - 1 (Sun et al.'s code)."""
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
    return [(v - mean) / (std + 1e-7) for v in row]


def softmax(row: list[float], tau: float = 1.0) -> list[float]:
    exps = [math.exp(v / tau) for v in row]
    return [e / sum(exps) for e in exps]


def cross_entropy(rows: list[list[float]], labels: list[int]) -> float:
    return sum(-math.log(softmax(row)[y]) for row, y in zip(rows, labels, strict=True)) / len(rows)


def tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(S, dtype=torch.float64), torch.tensor(T, dtype=torch.float64), torch.tensor(Y)


def test_the_logit_standardization_recipe_is_0_1_ce_plus_9_kd_at_tau_2() -> None:
    tau = 2.0
    kl = 0.0
    for s_row, t_row in zip(S, T, strict=True):
        p_s, p_t = softmax(zscore(s_row), tau), softmax(zscore(t_row), tau)
        kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True)) / len(S)
    # The reference multiplies the KD term by T^2 (mdistiller/distillers/KD.py: loss_kd *= temperature**2).
    expected = 0.1 * cross_entropy(S, Y) + 9 * tau**2 * kl
    config = build_config(
        flags={
            "kd": {
                "loss": "kl",
                "teacher": "t",
                "standardize": True,
                "tau": 2,
                "ce_weight": 0.1,
                "kd_weight": 9,
            }
        }
    )
    terms = loss_terms(config.kd.loss, *tensors(), **loss_values(config.kd))
    assert set(terms) == {"ce", "kl"}
    assert sum(terms.values()).item() == pytest.approx(expected, rel=1e-12)
    assert terms["ce"].item() == pytest.approx(0.1 * cross_entropy(S, Y), rel=1e-12)
    # The weights are the general form of alpha's: (1 - alpha, alpha) = (0.1, 0.9) is the same loss.
    given = {"standardize": True, "tau": tau}
    by_alpha = loss_terms("kl", *tensors(), alpha=0.9, ce_weight=None, kd_weight=None, **given)
    by_weights = loss_terms("kl", *tensors(), alpha=1.0, ce_weight=0.1, kd_weight=0.9, **given)
    assert sum(by_alpha.values()).item() == pytest.approx(sum(by_weights.values()).item(), rel=1e-15)
    # Names and labels show the weights only where they are given (a KL run's name is as before).
    assert loss_tokens(config.kd) == ["kl", "ls", "a1", "t2", "ce0.1", "kd9"]
    assert loss_label(config.kd) == "KL+LS tau=2 ce_weight=0.1 kd_weight=9"
    assert loss_tokens(DistillConfig(loss="kl")) == ["kl", "a1", "t4"]
    mse = loss_terms("mse", *tensors(), alpha=1.0, ce_weight=2.0, kd_weight=0.5)
    squares = sum(
        (s - t) ** 2 for s_row, t_row in zip(S, T, strict=True) for s, t in zip(s_row, t_row, strict=True)
    )
    assert mse["ce"].item() == pytest.approx(2 * cross_entropy(S, Y), rel=1e-12)
    assert mse["mse"].item() == pytest.approx(0.5 * squares / 6, rel=1e-12)


@pytest.mark.parametrize(
    ("flags", "overrides", "message"),
    [
        ({"ce_weight": 0.1}, [], "kd.ce_weight is given without kd.kd_weight: give both (the loss is then ce_weight * CE"),
        ({"kd_weight": 9}, [], "kd.kd_weight is given without kd.ce_weight: give both"),
        ({"alpha": 0.9, "ce_weight": 0.1, "kd_weight": 9}, [],
         "kd.alpha=0.9 and kd.ce_weight/kd.kd_weight both weight loss kl: give alpha ((1 - alpha) * CE + alpha * KD) "
         "or the two weights (ce_weight * CE + kd_weight * KD), not both"),
        ({"ce_weight": 0.1, "kd_weight": 9}, ["kd.alpha=1"], "kd.alpha=1 and kd.ce_weight/kd.kd_weight both weight"),
        ({"ce_weight": 0, "kd_weight": 0}, [], "kd.ce_weight=0 and kd.kd_weight=0 leave nothing to learn from"),
        ({"kd_weight": -1, "ce_weight": 1}, [], "kd.kd_weight=-1.0 is outside [0, 10000]"),
        ({"loss": "dkd", "ce_weight": 1}, [], "kd.ce_weight is not read by loss dkd"),
    ],
)  # fmt: skip
def test_weights_replace_alpha_both_or_neither(flags: dict, overrides: list[str], message: str) -> None:
    with pytest.raises(UserError) as error:
        build_config(flags={"kd": {"loss": "kl", "teacher": "t", **flags}}, overrides=overrides)
    assert message in str(error.value)


def test_a_recipes_base_alpha_does_not_count_as_given_with_the_weights() -> None:
    # methods-paper sets kd.alpha: 1.0 for every run; its LS run gives the weights.
    config = build_config(
        base={"kd": {"loss": "kl", "teacher": "t", "alpha": 1.0}},
        overrides=["kd.ce_weight=0.1", "kd.kd_weight=9"],
    )
    assert (config.kd.ce_weight, config.kd.kd_weight) == (0.1, 9.0)


# --- DKD of standardized logits --------------------------------------------------------------------------


def test_dkd_standardizes_both_logits_as_the_logit_standardization_code() -> None:
    # Its recipe for DKD: alpha and beta times 9 (mdistiller's WRN-40-2 -> WRN-16-2: 1 and 6), tau 2.
    alpha, beta, tau = 9.0, 54.0, 2.0
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(S, T, Y, strict=True):
        p_s, p_t = softmax(zscore(s_row), tau), softmax(zscore(t_row), tau)
        b_s, b_t = (p_s[y], 1 - p_s[y]), (p_t[y], 1 - p_t[y])
        tckd += sum(bt * math.log(bt / bs) for bt, bs in zip(b_t, b_s, strict=True)) / len(S)
        q_s = [p / b_s[1] for k, p in enumerate(p_s) if k != y]
        q_t = [p / b_t[1] for k, p in enumerate(p_t) if k != y]
        nckd += sum(qt * math.log(qt / qs) for qt, qs in zip(q_t, q_s, strict=True)) / len(S)
    expected = cross_entropy(S, Y) + alpha * tau**2 * tckd + beta * tau**2 * nckd  # CE of the raw logits
    config = build_config(
        flags={"kd": {"loss": "dkd", "teacher": "t", "standardize": True, "tau": tau, "dkd_alpha": alpha,
                      "dkd_beta": beta}}
    )  # fmt: skip
    terms = loss_terms("dkd", *tensors(), epoch=20, **loss_values(config.kd))
    assert sum(terms.values()).item() == pytest.approx(expected, rel=1e-12)
    assert terms["nckd"].item() == pytest.approx(beta * tau**2 * nckd, rel=1e-12)
    assert loss_label(config.kd) == "DKD+LS alpha=9 beta=54 tau=2"
    assert loss_tokens(config.kd) == ["dkd", "a9", "b54", "t2", "w20", "ls"]
    assert loss_tokens(DistillConfig(loss="dkd")) == [
        "dkd",
        "a1",
        "b8",
        "t4",
        "w20",
    ]  # unchanged unstandardized


# --- a data-fraction run: accuracy on what it left out, every epoch ---------------------------------------


@pytest.fixture(scope="module")
def fraction_run(tmp_path_factory, one_torch_thread) -> Path:
    """mlp-64 trained 3 epochs with CE (batch 16, lr 0.05) on a random fifth of each class of digits."""
    out = tmp_path_factory.mktemp("fraction") / "run"
    config = make_config(out)
    config.model, config.data.select = "mlp-64", "samples:random:0-0.2"
    config.optim.epochs, config.optim.batch_size = 3, 16
    train(config)
    return out


def test_a_data_fraction_run_reports_the_left_out_samples_every_epoch(fraction_run: Path) -> None:
    # digits' training classes hold 142, 146, 142, 146, 145, 145, 145, 143, 139, 144 samples; the band
    # keeps n - int(round(n * 0.8, 2)) of each: 29, 30, 29, 30, 29, 29, 29, 29, 28, 29 = 291 of 1437.
    selection = json.loads((fraction_run / "selection.json").read_text())
    assert (selection["kept"], selection["of"], selection["select_count"]) == (291, 1437, "kd_data")
    summary = json.loads((fraction_run / "summary.json").read_text())
    assert summary["train_images"] == 291 and summary["left_out_images"] == 1437 - 291
    rows = [json.loads(line) for line in (fraction_run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3] and all("left_out_acc" in row for row in rows)
    assert summary["left_out_acc_last"] == rows[-1]["left_out_acc"]
    assert rows[-1]["left_out_acc"] > 60  # it learnt from a fifth (chance: 10%; measured 73%)
    # The same number from the saved student on the 1146 samples selection.json does not list.
    splits = load_dataset("digits")
    left_out = torch.ones(1437, dtype=torch.bool)
    left_out[selection["indices"]] = False
    student = load_student(fraction_run)
    with torch.no_grad():
        predicted = student(splits.train.images[left_out].float() / 255).argmax(dim=1)
    accuracy = 100.0 * (predicted == splits.train.labels[left_out]).float().mean().item()
    assert accuracy == pytest.approx(rows[-1]["left_out_acc"], abs=100 / 1146)


def test_without_a_selection_or_with_the_switch_off_nothing_is_left_out(
    tmp_path: Path, one_torch_thread
) -> None:
    config = make_config(tmp_path / "off")
    config.data.select, config.data.eval_left_out, config.optim.epochs = "samples:random:0-0.2", False, 1
    summary = train(config)
    row = json.loads((tmp_path / "off" / "metrics.jsonl").read_text().splitlines()[0])
    assert "left_out_acc" not in row and "left_out_images" not in summary and summary["train_images"] == 291
    config = make_config(tmp_path / "all")
    config.data.select, config.optim.epochs = "samples:random:0-1", 1  # keeps every sample
    summary = train(config)
    row = json.loads((tmp_path / "all" / "metrics.jsonl").read_text().splitlines()[0])
    assert "left_out_acc" not in row and "left_out_images" not in summary and summary["train_images"] == 1437


# --- a run recorded under the old rule ---------------------------------------------------------------------


def test_a_run_recorded_before_select_count_resumes_only_under_floor(
    tmp_path: Path, one_torch_thread
) -> None:
    out = tmp_path / "old"
    config = make_config(out)
    config.data.select, config.data.select_count, config.optim.epochs = "samples:random:0-0.2", "floor", 1
    train(config)
    assert json.loads((out / "selection.json").read_text())["kept"] == 284  # floor: 28 + 29 + ... + 28
    # What a kdlab before data.select_count recorded: no such key, in config.yaml nor in last.pt.
    last = out / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    del checkpoint["config"]["data"]["select_count"]
    torch.save(checkpoint, last)
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text.replace("  select_count: floor\n", ""))
    written = (out / "selection.json").read_bytes()
    again = make_config(out)
    again.data.select, again.optim.epochs = "samples:random:0-0.2", 2  # today's default: kd_data
    with pytest.raises(UserError, match=r"was trained with data.select_count='floor', not 'kd_data'"):
        train(again, resume=True)
    again.data.select_count = "floor"
    summary = train(again, resume=True)
    assert summary["epochs"] == 2 and summary["train_images"] == 284
    assert (out / "selection.json").read_bytes() == written

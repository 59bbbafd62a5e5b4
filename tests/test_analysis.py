"""Analysis: the projection maths on synthetic cases with known answers, calibration, entropy,
agreement, distances, and ``kdlab analyze`` end to end on digits runs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from kdlab.analysis.analyze import analyze_runs
from kdlab.analysis.metrics import (
    agreement,
    describe,
    expected_calibration_error,
    histogram,
    logit_distances,
    predictive_entropy,
    project_onto_plane,
    template_plane,
    wasserstein_1d,
)
from kdlab.config import build_config
from kdlab.engine import train, train_lockstep
from kdlab.errors import UserError


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: see tests/test_experiments.py
    yield
    torch.set_num_threads(threads)


# --- the 3-class projection ----------------------------------------------------------------------------


def test_projection_of_axis_aligned_templates_is_exact():
    # Templates in the (x, y) plane of R^4: the plane's basis is e_x, e_y, anchored at w0 = (1, 1, 0, 0).
    weight = torch.tensor([[1.0, 1, 0, 0], [3, 1, 0, 0], [1, 4, 0, 0], [0, 0, 5, 5]])
    origin, basis = template_plane(weight, (0, 1, 2))
    assert origin.tolist() == [1, 1, 0, 0]
    assert basis.T.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0]]
    features = torch.tensor([[1.0, 1, 7, -2], [2.5, -1, 0, 3], [1, 4, 1, 1]])
    # The components out of the plane (z, w) vanish; in-plane coordinates are relative to w0.
    assert project_onto_plane(features, origin, basis).tolist() == [[0, 0], [1.5, -2], [0, 3]]
    assert project_onto_plane(weight[:3], origin, basis).tolist() == [[0, 0], [2, 0], [0, 3]]


def test_projection_is_rotation_invariant_and_orthonormal():
    generator = torch.Generator().manual_seed(0)
    dim = 16
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    # Templates w0 = 0, w1 = 2 e1, w2 = e1 + 3 e2 (e1, e2 orthonormal), rotated into a random direction.
    plane = torch.zeros(3, dim, dtype=torch.float64)
    plane[1, 0], plane[2, 0], plane[2, 1] = 2.0, 1.0, 3.0
    offset = torch.randn(dim, generator=generator, dtype=torch.float64)
    weight = plane @ rotation.T + offset
    origin, basis = template_plane(weight, (0, 1, 2))
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=torch.float64), atol=1e-12)
    # Known in-plane points plus an arbitrary component orthogonal to the plane.
    coordinates = torch.tensor([[0.5, 0.25], [-1.0, 2.0], [3.0, -0.5]], dtype=torch.float64)
    normal = torch.zeros(3, dim, dtype=torch.float64)
    normal[:, 2:] = torch.randn(3, dim - 2, generator=generator, dtype=torch.float64)
    in_plane = torch.cat([coordinates, torch.zeros(3, dim - 2, dtype=torch.float64)], dim=1)
    features = (in_plane + normal) @ rotation.T + offset
    assert torch.allclose(project_onto_plane(features, origin, basis), coordinates, atol=1e-12)
    assert torch.allclose(
        project_onto_plane(weight, origin, basis),
        torch.tensor([[0.0, 0], [2, 0], [1, 3]], dtype=torch.float64),
        atol=1e-12,
    )


def test_projection_rejects_collinear_or_bad_classes():
    weight = torch.tensor([[0.0, 0], [1, 1], [2, 2], [0, 1]])
    with pytest.raises(UserError, match=r"templates of classes \[0, 1, 2\] are collinear"):
        template_plane(weight, (0, 1, 2))
    with pytest.raises(UserError, match="three distinct classes"):
        template_plane(weight, (0, 0, 1))
    with pytest.raises(UserError, match=r"must lie in 0..3"):
        template_plane(weight, (0, 1, 4))


# --- calibration, entropy, agreement, distances ----------------------------------------------------


def test_ece_entropy_agreement_by_hand():
    # Two classes. Confidences: 0.9 (correct), 0.9 (wrong), 0.6 (correct), 0.6 (correct).
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    logits = p.log()
    labels = torch.tensor([0, 1, 0, 1])
    # Bin (0.867, 0.933]: acc 0.5, conf 0.9 -> gap 0.4, weight 1/2; bin (0.6-, 0.6]: acc 1, conf 0.6 -> gap 0.4, weight 1/2.
    assert expected_calibration_error(logits, labels, bins=15) == pytest.approx(40.0)
    confident = torch.tensor([[0.0, 10.0]], dtype=torch.float64)  # one correct sample: ECE = 1 - confidence
    assert expected_calibration_error(confident, torch.tensor([1])) == pytest.approx(100 / (1 + math.exp(10)))
    assert predictive_entropy(torch.zeros(3, 7)).tolist() == pytest.approx([math.log(7)] * 3)
    assert predictive_entropy(logits)[0].item() == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))
    assert agreement(logits, torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])) == 75.0
    assert logit_distances(torch.tensor([[3.0, 0]]), torch.tensor([[0.0, 4]])).tolist() == [5.0]


def test_distribution_helpers():
    values = np.arange(1, 101, dtype=np.float64)
    stats = describe(values)
    assert (stats["mean"], stats["median"], stats["min"], stats["max"]) == (50.5, 50.5, 1.0, 100.0)
    assert histogram(values, np.array([0.0, 50, 100]))["counts"] == [49, 51]  # numpy: last bin closed
    assert wasserstein_1d(values, values + 2.5) == pytest.approx(2.5)
    assert wasserstein_1d([0.0, 1.0], [0.0, 0.0, 0.0, 1.0]) == pytest.approx(0.25)
    assert wasserstein_1d(values, values[::-1]) == 0.0


# --- kdlab analyze end to end ------------------------------------------------------------------------


def test_analyze_teacher_and_students_on_digits(tmp_path):
    common = {"data": {"name": "digits"}, "optim": {"epochs": 2, "batch_size": 64}, "seed": 0,
              "progress": False, "tensorboard": False}  # fmt: skip
    teacher = tmp_path / "teacher"
    train(build_config(base={**common, "model": "convnet-8", "out": str(teacher)}))
    students = [tmp_path / name for name in ("kl", "mse")]
    train_lockstep([
        build_config(base={**common, "model": "convnet-4", "out": str(students[0]), "kd": {"teacher": str(teacher), "loss": "kl", "tau": 4}}),
        build_config(base={**common, "model": "convnet-4", "out": str(students[1]), "kd": {"teacher": str(teacher), "loss": "mse"}}),
    ])  # fmt: skip
    out = tmp_path / "analysis"
    # The teacher analysed as a run against itself: every distance is exactly zero.
    results = analyze_runs(
        [str(teacher), *map(str, students)], teacher=str(teacher), out=out, classes=(3, 5, 8), log=print
    )
    assert json.loads((out / "analysis.json").read_text())["classes"] == [3, 5, 8]
    for name in ("projection.png", "logit_distance.png", "penultimate_norm.png"):
        assert (out / name).stat().st_size > 1000
    own = results["runs"][str(teacher)]
    assert own["logit_distance"]["max"] == 0.0 and own["agreement"] == 100.0
    assert own["penultimate_norm_w1_to_teacher"] == 0.0 and own["projection_distance_to_teacher"] == 0.0
    reference = results["runs"]["teacher"]
    assert own["train_acc"] == reference["train_acc"] > 50
    for student in students:
        entry = results["runs"][str(student)]
        assert entry["label"] in ("convnet-4 KL tau=4", "convnet-4 MSE")  # models differ: named
        assert entry["logit_distance"]["mean"] > 0 and 0 < entry["agreement"] <= 100
        assert 0 <= entry["ece"] <= 100 and 0 < entry["entropy_mean"] < math.log(10)
        assert sum(entry["logit_distance"]["histogram"]["counts"]) == results["train_images"] == 1437
        summary = json.loads((student / "summary.json").read_text())
        # The engine's logit distance (float32 logits) is the analysis's mean (float64).
        assert entry["logit_distance"]["mean"] == pytest.approx(summary["logit_distance"], rel=1e-5)
        assert entry["train_acc"] == pytest.approx(summary["train_acc"])
    # The official code's per-sample scores: the teacher's in teacher_samples.csv, summaries for every model.
    rows = list(csv.DictReader((out / "teacher_samples.csv").open()))
    assert len(rows) == 1437 and (out / "tld.png").stat().st_size > 1000
    assert sum(float(row["teacher_tld"]) < 0 for row in rows) == round(
        1437 * (1 - reference["train_acc"] / 100)
    )
    mean_tld = sum(float(row["teacher_tld"]) for row in rows) / len(rows)
    assert reference["tld"]["mean"] == pytest.approx(mean_tld, rel=1e-5)
    assert reference["entropy"]["mean"] == pytest.approx(reference["entropy_mean"])
    templates = reference["projection"]["templates"]
    assert templates[0] == [0.0, 0.0] and templates[1][1] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(UserError, match="not a finished kdlab run|has no config.yaml"):
        analyze_runs([str(tmp_path / "missing")])

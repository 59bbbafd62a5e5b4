"""``kdlab demo``: on Fashion-MNIST, train a teacher, then distill one small student six ways.

The design follows the small preset (docs/results/small/PROTOCOL.md) so that the demo runs in the
paper's regime: a convnet-32 teacher trained to fit its training images (no augmentation), and MLP
students that fit theirs but stay well below the teacher on test. The six students (CE without
teacher, KL at tau = 1, 4, 20, inf with alpha = 1, and MSE) share the data order and the teacher, so
they train in lockstep: one teacher pass per batch. The table is followed by the regime gates
(kdlab.experiments.regime) measured on these runs. One seed: a demonstration, not a verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlab.analysis.plots import plot_bars
from kdlab.config import build_config
from kdlab.engine import train, train_lockstep
from kdlab.experiments.regime import check_gates, gates_table
from kdlab.runs import OutputFolder, json_text


@dataclass(frozen=True)
class DemoScale:
    teacher: str
    student: str
    subset: int | None
    teacher_epochs: int
    student_epochs: int
    dataset: str = "fashion-mnist"
    teacher_lr: float = 0.1
    student_lr: float = 0.01  # MLPs have no normalisation: MSE students diverge at 0.05 (PROTOCOL.md)


QUICK = DemoScale(teacher="convnet-32", student="mlp-64", subset=2_000, teacher_epochs=40, student_epochs=40)
FULL = DemoScale(teacher="convnet-32", student="mlp-64", subset=5_000, teacher_epochs=60, student_epochs=30)
DEMO_FILES = ("results.json", "results.md", "results.png")  # beside the run folders teacher/, student-*/

METHODS: list[tuple[str, dict[str, Any]]] = [
    ("CE (no teacher)", {"loss": "ce"}),
    ("KL tau=1", {"loss": "kl", "alpha": 1.0, "tau": 1.0}),
    ("KL tau=4", {"loss": "kl", "alpha": 1.0, "tau": 4.0}),
    ("KL tau=20", {"loss": "kl", "alpha": 1.0, "tau": 20.0}),
    ("KL tau=inf", {"loss": "kl", "alpha": 1.0, "tau": math.inf}),
    ("MSE", {"loss": "mse", "alpha": 1.0}),
]


def _slug(label: str) -> str:
    return label.lower().replace(" (no teacher)", "").replace("=", "").replace(" ", "-")


def run_demo(
    out: str | Path = "demo-out",
    quick: bool = False,
    data_dir: str | None = None,
    device: str = "auto",
    scale: DemoScale | None = None,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Train the teacher and the six students into ``out``; write results.md/.json/.png; return the rows."""
    scale = scale or (QUICK if quick else FULL)
    out = Path(out)
    outputs = OutputFolder(out, "demo")
    outputs.check(DEMO_FILES)  # before any training: --out a file, read-only, a results.md of yours
    common = {
        "device": device,
        "seed": 0,
        "data": {"name": scale.dataset, "data_dir": data_dir, "subset": scale.subset, "augment": False},
        "optim": {"batch_size": 64},
    }
    teacher_config = build_config(
        base=common,
        flags={
            "model": scale.teacher,
            "out": str(out / "teacher"),
            "optim": {"epochs": scale.teacher_epochs, "lr": scale.teacher_lr},
        },
    )
    log(f"kdlab demo: {describe(scale)}")
    log(f"kdlab demo: teacher {scale.teacher}, {scale.teacher_epochs} epochs")
    teacher_summary = train(teacher_config, resume=True)
    student_configs = [
        build_config(
            base=common,
            flags={
                "model": scale.student,
                "out": str(out / f"student-{_slug(label)}"),
                "optim": {"epochs": scale.student_epochs, "lr": scale.student_lr},
                "kd": {"teacher": str(out / "teacher"), **kd},
            },
        )
        for label, kd in METHODS
    ]
    log(f"kdlab demo: {len(METHODS)} {scale.student} students in lockstep, {scale.student_epochs} epochs")
    summaries = train_lockstep(student_configs, resume=True)
    rows = [{"method": "teacher " + scale.teacher, **_row(teacher_summary)}]
    rows += [
        {"method": label, **_row(summary)} for (label, _), summary in zip(METHODS, summaries, strict=True)
    ]
    gates = check_gates(
        teacher_summary, [summaries[0]], scope=f"{scale.teacher} -> {scale.student} CE, 1 seed"
    )
    table = format_table(rows)
    gates_text = gates_table(gates)
    log(table + "\n\nRegime gates (the paper's regime: all should pass):\n\n" + gates_text)
    markdown = (
        f"# kdlab demo ({'quick' if quick else 'full'})\n\n{describe(scale)}\n\n{table}\n\n"
        f"Regime gates (kdlab.experiments.regime):\n\n{gates_text}\n"
    )
    outputs.write_files({
        "results.json": json_text({"rows": rows, "gates": [gate.to_dict() for gate in gates]}).encode(),
        "results.png": plot_results(rows),
        "results.md": markdown.encode(),
    })  # fmt: skip
    log(f"kdlab demo: wrote {out / 'results.md'} and {out / 'results.png'}")
    return rows


def _row(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("test_acc_last", "test_acc_best", "train_acc", "logit_distance", "wall_time_s")
    return {key: summary.get(key) for key in keys}


def describe(scale: DemoScale) -> str:
    images = f"{scale.subset:,}" if scale.subset else "all"
    return (
        f"{scale.dataset}, {images} training images (class-balanced subset, seed 0, no augmentation), the full "
        f"test set. Teacher {scale.teacher} ({scale.teacher_epochs} epochs, cross-entropy, SGD lr "
        f"{scale.teacher_lr:g}); students {scale.student} ({scale.student_epochs} epochs, lr {scale.student_lr:g}), "
        "alpha = 1 for every KD row; x0.1 lr steps at 50% and 75% of the epochs, batch 64. One seed: differences "
        "under about 0.5 points are within seed noise; `kdlab reproduce` gives verdicts."
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = [
        "| method | test acc last (%) | test acc best-on-test (%) | train acc (%) | logit distance to teacher |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {row['method']} | {cell(row['test_acc_last'])} | {cell(row['test_acc_best'])} | {cell(row['train_acc'])} | "
        f"{cell(row['logit_distance'])} |"
        for row in rows
    ]
    return "\n".join(lines)


def plot_results(rows: list[dict[str, Any]], path: Path | None = None) -> bytes:
    """Two bar panels: last-epoch test accuracy with the teacher's as a line, and the logit distance
    (PNG bytes; also written to ``path`` when given)."""
    teacher, students = rows[0], rows[1:]
    labels = [row["method"] for row in students]
    return plot_bars(
        [
            {
                "labels": labels,
                "values": [row["test_acc_last"] for row in students],
                "ylabel": "test accuracy, last epoch (%)",
                "reference": ("teacher", teacher["test_acc_last"]),
            },
            {
                "labels": labels,
                "values": [row["logit_distance"] or 0.0 for row in students],
                "ylabel": "mean ||z_s - z_t||_2 (train set)",
            },
        ],
        path,
    )

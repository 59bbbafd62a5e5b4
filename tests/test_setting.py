"""``kdlab reproduce --setting``: the shipped example (a plugin of plain nn.Sequential MLPs and a .npz
dataset made by its own script) runs end to end from the command line alone, at tiny size, and a
setting that leaves parts out says which claims it cannot judge and why."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdlab.cli import main
from kdlab.experiments.claims import CLAIMS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tabular"
VERDICTS = {
    "holds",
    "does not hold",
    "not supported",
    "inconclusive",
    "about as good",
    "outside the paper's regime",
    "not judged",
}


def kdlab_process(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "kdlab", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example folder copied as a user would have it, its data made by its own script (small)."""
    folder = tmp_path_factory.mktemp("clone") / "tabular"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("data"))
    made = subprocess.run(
        [sys.executable, str(folder / "make_data.py"), "--train", "600", "--test", "300"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return folder


def tiny(folder: Path, name: str, **changes: object) -> Path:
    """The example's setting at tiny size (1 seed, 1 teacher seed, 2 epochs, a 60-sample validation split)."""
    setting = yaml.safe_load((folder / "setting.yaml").read_text())
    setting["seeds"] = 1
    setting["teacher_seeds"] = 1
    setting["data"]["val_split"] = 60
    setting["student"]["optim"]["epochs"] = 2
    setting["student"] |= {"progress": False, "tensorboard": False}
    for role, entry in setting["teachers"].items():
        entry["optim"]["epochs"] = 1 if role == "poor" else 2
    setting.update(changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(setting))
    return path


def test_the_example_setting_runs_end_to_end_from_the_command_line(example: Path) -> None:
    setting = tiny(example, "tiny")
    done = kdlab_process("reproduce", "--setting", setting, "--out", example / "out", cwd=example.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    claims = json.loads((example / "out" / "claims.json").read_text())
    assert [claim["claim"] for claim in claims["claims"]] == list(CLAIMS)
    assert {claim["verdict"] for claim in claims["claims"]} <= VERDICTS
    assert claims["claims"][2]["verdict"] == "holds"  # C3: exact checks, whatever the setting
    assert all(claim["verdict"] != "not judged" for claim in claims["claims"])  # the example names every part
    assert claims["setting"]["sha256"] == hashlib.sha256(setting.read_bytes()).hexdigest()
    assert claims["setting"]["imports"] == [str(example / "models.py")]
    assert sorted(row["name"] for row in claims["teachers"]) == [
        "large", "large-b", "large-noisy", "medium", "medium-from-large", "poor"
    ]  # fmt: skip
    report = (example / "out" / "REPORT.md").read_text()
    assert report.startswith("# kdlab reproduce --setting tiny.yaml")
    assert "## Provenance" in report and "made by the code at `" in report
    # C6 reads penultimate features of plain nn.Sequential models: from the hook on their last Linear.
    analysis = json.loads((example / "out" / "analysis" / "ts0-s0" / "analysis.json").read_text())
    norms = [entry["penultimate_norm"]["mean"] for entry in analysis["runs"].values()]
    assert len(norms) == 4 and all(norm > 0 for norm in norms)  # teacher, KL tau=3, KL tau=20, MSE
    # The students are the setting's models, trained on its data.
    stored = yaml.safe_load((example / "out" / "pairs" / "tabmlp-40-mse-a1-s0" / "config.yaml").read_text())
    assert (stored["model"], stored["data"]["name"]) == ("tabmlp-40", "tensors")
    assert stored["imports"] == [str(example / "models.py")]


def test_a_setting_that_leaves_parts_out_says_what_it_cannot_judge(example: Path) -> None:
    teachers = yaml.safe_load((example / "setting.yaml").read_text())["teachers"]
    del teachers["medium"]
    setting = tiny(example, "partial", label_noise=None, teachers=teachers)
    done = kdlab_process("reproduce", "--setting", setting, "--claims", "C3,C8,C9", "--out", example / "partial-out",
                         cwd=example.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    claims = {
        claim["claim"]: claim
        for claim in json.loads((example / "partial-out" / "claims.json").read_text())["claims"]
    }
    assert claims["C8"]["verdict"] == "not judged" and "names no medium teacher" in claims["C8"]["evidence"]
    assert claims["C9"]["verdict"] == "not judged" and "label noise off" in claims["C9"]["evidence"]
    assert not (example / "partial-out" / "sequential").exists()  # nothing trained for them
    assert (
        "| C8 | **not judged** | the setting names no medium teacher"
        in (example / "partial-out" / "REPORT.md").read_text()
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"student": {"optim": {"epochs": 2}}, "stray": 1}, "unknown key 'stray'"),
        ({"students": ["tabmlp-8", "tabmlp-8", "tabmlp-16"]}, "students names 2 distinct model(s): C5 compares"),
        ({"teachers": {"medium": {"model": "tab-medium"}}}, "teachers.large is missing"),
        ({"teachers": {"large": {"model": "tab-large", "kd": {"loss": "kl"}}}}, "teachers.large sets kd"),
        ({"teachers": {"large": {"model": "tab-large"}, "huge": {"model": "tab-large"}}}, "teacher 'huge' is not a role"),
        ({"student": {"model": "tab-large"}}, "student sets model, which the setting decides"),
        ({"data": {"data_dir": "data"}}, "data.name is missing"),
        ({"label_noise": "symmetric:1.5"}, "symmetric:1.5"),
        ({"seeds": 0}, "seeds=0 must be a whole number in 1..100"),
        ({"teacher_seeds": 0}, "teacher_seeds=0 must be a whole number in 1..20 (3 or more for a verdict)"),
    ],
)  # fmt: skip
def test_a_bad_setting_is_one_line(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict, message: str
) -> None:
    setting = yaml.safe_load((example / "setting.yaml").read_text())
    setting.update(change)
    path = example / "bad.yaml"
    path.write_text(yaml.safe_dump(setting))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--setting", str(path), "--out", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr
    (line,) = stderr.strip().splitlines()
    assert message in line, line
    assert not (tmp_path / "out").exists()


def test_preset_and_setting_together_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "reproduce",
                "--preset",
                "tiny",
                "--setting",
                str(EXAMPLE / "setting.yaml"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert exit_info.value.code == 2
    assert "--preset and --setting both given" in capsys.readouterr().err

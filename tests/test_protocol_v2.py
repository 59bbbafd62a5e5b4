"""Protocol v2's machinery: teacher seeds in recipes (paired students), runs.csv (exact round trip,
damaged files refused), the provenance checks on a temporary git repository (the protocol commit must
precede every run, both orders; the deviations between them), the committed reports, and the bad
inputs of ``kdlab reproduce --rejudge`` (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from fixtures_engine import kdlab_error

from kdlab.errors import UserError
from kdlab.experiments import provenance
from kdlab.experiments.recipes import parse_recipe, plan_sweep
from kdlab.experiments.reproduce import reproduce
from kdlab.experiments.runtable import COLUMNS, csv_text, make_row, parse_csv

ROOT = Path(__file__).resolve().parents[1]


# --- teacher seeds: every teacher trained T times, students paired within a teacher seed ---------------


def sequential_recipe(teacher_seeds: int) -> dict:
    return {
        "model": "mlp-16", "data": {"name": "digits"}, "optim": {"epochs": 1}, "teacher_seeds": teacher_seeds,
        "kd": {"teacher": "large", "loss": "kl", "alpha": 1.0, "tau": 3},
        "teachers": {"large": {"model": "convnet-8"}, "medium": {"model": "convnet-4", "seed": 5},
                     "medium-from-large": {"model": "convnet-4", "kd": {"teacher": "large", "loss": "kl", "tau": 3}}},
        "grid": {"kd.teacher": ["large", "medium", "medium-from-large"]},
        "runs": [{"kd.loss": "ce"}, {"kd.teacher": ["large", "medium"], "kd.loss": "mse"}],
    }  # fmt: skip


def test_teacher_seeds_reach_every_student_and_pair_them(tmp_path):
    plan = plan_sweep(parse_recipe(sequential_recipe(3), "r"), tmp_path / "s", seeds=2)
    teachers = {
        name: (run.role, run.teacher_seed, run.config.seed, run.teachers)
        for name, run in plan.teachers.items()
    }
    assert teachers["large-ts1"] == ("large", 1, 10000, ())  # the default seed 9999, + K
    assert teachers["medium-ts2"] == ("medium", 2, 7, ())  # its own seed 5, + K
    assert teachers["medium-from-large-ts2"] == ("medium-from-large", 2, 10001, ("large-ts2",))  # reads its K
    assert plan.teachers["medium-from-large-ts2"].config.kd.teacher == str(
        tmp_path / "s" / "teachers" / "large-ts2"
    )
    assert list(plan.teachers).index("large-ts2") < list(plan.teachers).index("medium-from-large-ts2")
    students = {run.name: run for run in plan.students}
    assert len(students) == (3 + 1) * 3 * 2 + 2  # 3 grid teachers and the ensemble x 3 K x 2 S; CE once per S
    run = students["from-medium-from-large-kl-a1-t3-ts1-s0"]
    assert (run.teacher_seed, run.config.seed, run.teachers) == (1, 0, ("medium-from-large-ts1",))
    ensemble = students["from-large+medium-mse-a1-ts2-s1"]
    assert ensemble.teachers == ("large-ts2", "medium-ts2") and ensemble.teacher_seed == 2
    ce = students[
        "ce-s1"
    ]  # trains alike whatever K: planned once, reading teacher seed 0 (its logit distance)
    assert (ce.teacher_seed, ce.teachers) == (0, ("large-ts0",))
    single = plan_sweep(parse_recipe(sequential_recipe(1), "r"), tmp_path / "one", seeds=1)
    assert list(single.teachers) == [
        "large",
        "medium",
        "medium-from-large",
    ]  # one teacher seed: names of before
    assert sorted(run.name for run in single.students)[:2] == ["ce-s0", "from-large+medium-mse-a1-s0"]
    assert {run.config.seed for run in single.teachers.values()} == {9999, 5}
    with pytest.raises(UserError, match=r"teacher_seeds=0 must be a whole number in 1\.\.20"):
        parse_recipe({**sequential_recipe(1), "teacher_seeds": 0}, "r")


# --- runs.csv -----------------------------------------------------------------------------------------


def test_runs_csv_reads_back_every_value_exactly():
    values = {
        "folder": "main", "run": "kl-a1-tinf-ts1-s3", "role": "student", "experiments": "grid logit-distance",
        "preset": "small", "status": "finished", "model": "mlp-64", "loss": "kl", "alpha": 1.0, "tau": math.inf,
        "seed": 3, "teacher_seed": 1, "teacher": "convnet-32+convnet-32-b", "test_acc_last": 0.1 + 0.2,
        "train_acc": 95.19999999999999, "logit_distance": math.nan, "git_dirty": False, "label_noise": "symmetric:0.4",
    }  # fmt: skip
    teacher = make_row({"folder": "teachers", "run": "convnet-32-ts1", "role": "teacher", "name": "convnet-32",
                        "seed": 10000, "teacher_seed": 1})  # fmt: skip
    text = csv_text([make_row(values), teacher])
    assert text.splitlines()[0] == ",".join(COLUMNS)
    student, read_teacher = sorted(parse_csv(text, "runs.csv"), key=lambda row: row.role)
    assert student.metric("test_acc_last") == 0.1 + 0.2 and student.metric("train_acc") == 95.19999999999999
    assert student.tau == math.inf and math.isnan(student.metric("logit_distance"))
    assert student.teacher == ("convnet-32", "convnet-32-b") and student.cell == (1, 3)
    assert student.experiments == ("grid", "logit-distance") and student.text("git_dirty") == "false"
    assert (read_teacher.name, read_teacher.teacher_seed, read_teacher.seed) == ("convnet-32", 1, 10000)
    assert csv_text(parse_csv(text, "runs.csv")) == text
    with pytest.raises(ValueError, match="not runs.csv columns"):
        make_row({"accuracy": 1.0})


# --- provenance on a temporary git repository --------------------------------------------------------


def git(repo: Path, *args: str, when: str | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    if when:
        env |= {"GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
    done = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def commit(repo: Path, path: str, text: str, when: str, message: str) -> str:
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(text)
    git(repo, "add", path)
    git(repo, "commit", "-q", "-m", message, when=when)
    return git(repo, "rev-parse", "HEAD")


PROTOCOL = "docs/results/small/PROTOCOL.md"


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A repository: code before the protocol, the protocol, an engine change, a docs change."""
    repo = tmp_path_factory.mktemp("repo")
    git(repo, "init", "-q")
    commits = {
        "before": commit(repo, "src/kdlab/engine/loop.py", "v0\n", "2025-01-01T10:00:00+00:00", "engine v0"),
        "protocol": commit(repo, PROTOCOL, "rules\n", "2025-01-02T10:00:00+00:00", "protocol v2"),
        "engine": commit(repo, "src/kdlab/engine/loop.py", "v1\n", "2025-01-03T10:00:00+00:00", "engine v1"),
        "docs": commit(repo, "docs/notes.md", "notes\n", "2025-01-04T10:00:00+00:00", "notes"),
    }
    return repo, commits


def test_the_protocol_must_precede_every_run_both_orders(history):
    repo, commits = history
    after = provenance.RunStamp(commits["docs"], "2025-01-05T00:00:00+00:00")
    passed = provenance.check_protocol(repo, PROTOCOL, [after, after])
    assert (passed["status"], passed["commit"]) == (provenance.PASSED, commits["protocol"])
    assert passed["committed_at"] == "2025-01-02T10:00:00+00:00" and passed["problems"] == []
    early = provenance.RunStamp(commits["docs"], "2025-01-01T12:00:00+00:00")  # started before the protocol
    failed = provenance.check_protocol(repo, PROTOCOL, [after, early])
    assert failed["status"] == provenance.FAILED
    assert failed["text"] == (
        "1 run(s) started before the protocol was committed (2025-01-02T10:00:00+00:00), the first at "
        "2025-01-01T12:00:00+00:00"
    )
    old_code = provenance.RunStamp(
        commits["before"], "2025-01-05T00:00:00+00:00"
    )  # code older than the protocol
    failed = provenance.check_protocol(repo, PROTOCOL, [old_code])
    assert failed["status"] == provenance.FAILED
    assert f"whose code does not contain the protocol commit {commits['protocol'][:12]}" in failed["text"]
    unknown = provenance.check_protocol(repo, PROTOCOL, [provenance.RunStamp(None, None)])
    assert unknown["status"] == provenance.NOT_CHECKED
    assert unknown["problems"] == ["1 run(s) record no code commit", "1 run(s) record no start time"]
    outside = provenance.check_protocol(None, PROTOCOL, [after])
    assert outside["status"] == provenance.NOT_CHECKED and outside["commit"] is None
    assert provenance.deviations(None, None, [commits["docs"]]) == []


def test_an_uncommitted_edit_of_the_protocol_fails_the_check(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    sha = commit(repo, PROTOCOL, "rules\n", "2025-01-02T10:00:00+00:00", "protocol")
    (repo / PROTOCOL).write_text("rules, edited after the runs\n")
    result = provenance.check_protocol(
        repo, PROTOCOL, [provenance.RunStamp(sha, "2025-01-03T00:00:00+00:00")]
    )
    assert result["status"] == provenance.FAILED and "has changes that are not committed" in result["text"]


def test_deviations_are_the_commits_between_protocol_and_runs_that_touch_engine_recipes_or_rules(history):
    repo, commits = history
    found = provenance.deviations(
        repo, commits["protocol"], [commits["docs"], commits["docs"], None, "f" * 40]
    )
    assert found == [
        {
            "commit": commits["engine"],
            "time": "2025-01-03T10:00:00+00:00",
            "subject": "engine v1",
            "files": ["src/kdlab/engine/loop.py"],
        }
    ]  # fmt: skip  (the docs commit touches none of the paths; the unknown commit is skipped)
    assert provenance.deviations(repo, commits["protocol"], [commits["protocol"]]) == []


def test_every_committed_runs_csv_was_made_after_its_protocol():
    """Each committed docs/results/*/runs.csv: the protocol beside it was committed before every run it
    holds (its code contains the protocol commit, and started after it)."""
    root = provenance.repository(ROOT)
    if root is None:
        pytest.fail("the tests run from a git checkout: the committed reports' provenance is checked there")
    listed = provenance.git(root, "ls-files", "docs/results")
    for path in [Path(line) for line in (listed or "").splitlines() if line.endswith("/runs.csv")]:
        rows = parse_csv((root / path).read_text(), path)
        protocol = str(path.parent / "PROTOCOL.md")
        result = provenance.check_protocol(root, protocol, [provenance.RunStamp.of(row) for row in rows])
        assert result["status"] == provenance.PASSED, (path, result["text"])


def test_the_committed_small_report_is_recomputed_from_its_runs_csv(tmp_path):
    """docs/results/small: with a runs.csv, --rejudge writes its claims.json again byte for byte (its
    invocation block aside); without one it is protocol v1's report, and says so at its top."""
    folder = ROOT / "docs" / "results" / "small"
    claims = (folder / "claims.json").read_text()
    if not (folder / "runs.csv").is_file():
        assert "protocol_version" not in json.loads(claims)  # v1 wrote neither runs.csv nor a version
        top = (folder / "REPORT.md").read_text().splitlines()[:4]
        assert any("judged under protocol v1" in line and "replaced by the v2 run" in line for line in top)
        return
    reproduce(rejudge=folder / "runs.csv", out=tmp_path / "rejudged", log=lambda line: None)
    again = (tmp_path / "rejudged" / "claims.json").read_text()
    cut = claims.index('  "invocation": {')
    assert again[:cut] == claims[:cut]


# --- bad inputs of --rejudge -------------------------------------------------------------------------


def small_runs_csv(path: Path, preset: str = "tiny") -> Path:
    row = make_row({"folder": "main", "run": "ce-s0", "role": "student", "experiments": "grid", "preset": preset,
                    "status": "finished", "model": "mlp-64", "loss": "ce", "seed": 0, "test_acc_last": 80.0})  # fmt: skip
    path.write_text(csv_text([row]))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("header", "is not a runs.csv of this kdlab (its header is not the 43 columns kdlab writes)"),
        ("fields", "line 2 has 3 fields, not 43: the file is damaged"),
        ("number", "line 2, column test_acc_last holds 'high', not a number: the file is damaged"),
        ("preset", "holds runs of preset tiny, not small: drop --preset, or pass --preset tiny"),
        ("setting", "holds runs of setting mine: pass its setting file with --setting"),
        ("set", "--rejudge judges the runs a runs.csv holds: drop --set and --seeds, which change runs"),
    ],
)
def test_bad_rejudge_inputs_are_one_line_and_write_nothing(tmp_path, capsys, case, message):
    runs = small_runs_csv(tmp_path / "runs.csv")
    extra: list[str] = []
    if case == "missing":
        runs = tmp_path / "none.csv"
    elif case == "header":
        runs.write_text("a,b\n1,2\n")
    elif case == "fields":
        runs.write_text(runs.read_text().splitlines()[0] + "\nmain,ce-s0,student\n")
    elif case == "number":
        runs.write_text(runs.read_text().replace(",80.0,", ",high,"))
    elif case == "preset":
        extra = ["--preset", "small"]
    elif case == "setting":
        small_runs_csv(runs, preset="setting:mine")
    elif case == "set":
        extra = ["--set", "optim.epochs=2"]
    assert message in kdlab_error(capsys, "reproduce", "--rejudge", runs, "--out", tmp_path / "out", *extra)
    assert not (tmp_path / "out").exists()

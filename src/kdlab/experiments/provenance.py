"""Where a reproduce report's numbers come from, found and checked, never fixed text.

- the runs: the code commit each ran (and whether its tree was clean), torch, device, the first start,
  the last finish and the summed wall time (``runs_provenance``, from the rows of runs.csv);
- the protocol: the last commit of the protocol document, and the check that this commit precedes
  every run: it is an ancestor of each run's commit and its time precedes each run's start
  (``check_protocol``); a report that fails it says so at its top and on every verdict;
- the deviations: every commit between the protocol commit and a run's commit that touches the engine,
  the recipes or the rules (``DEVIATION_PATHS``), from ``git log`` (``deviations``).

Outside a git checkout (kdlab installed from a wheel) every commit is "unknown" and nothing fails.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kdlab.experiments.runtable import Row

# What a change after the protocol must be listed for: the training code, the recipes, the rules.
DEVIATION_PATHS = (
    "src/kdlab/engine",
    "src/kdlab/recipes",
    "src/kdlab/experiments/claims.py",
    "src/kdlab/experiments/regime.py",
    "src/kdlab/experiments/verdicts.py",  # the tests and verdict words, split from claims.py
    "src/kdlab/experiments/evidence.py",  # which runs a claim reads, split from claims.py
)
RULE_PATHS = DEVIATION_PATHS[2:]  # the rules a judging at a later commit may have changed
PASSED, FAILED, NOT_CHECKED = "passed", "FAILED", "not checked"


def source_root() -> Path:
    """The folder above ``src/kdlab``: the repository when kdlab runs from a checkout."""
    return Path(__file__).resolve().parents[3]


def git(root: Path | None, *args: str) -> str | None:
    """``git -C root ARGS``'s output (stripped), or None when git is missing, fails or times out."""
    if root is None:
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def repository(root: Path | None = None) -> Path | None:
    """The git work tree holding ``root`` (default: kdlab's sources), or None outside one."""
    found = git(root or source_root(), "rev-parse", "--show-toplevel")
    return Path(found) if found else None


def parse_time(text: str | None) -> datetime | None:
    """An ISO 8601 time (git's ``%cI``, a run's ``started_at``) with its offset; None if absent or not one."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


@dataclass(frozen=True)
class Commit:
    """One commit: its hash, its committer time (ISO 8601) and its subject."""

    sha: str
    time: str
    subject: str = ""


def commit_of(root: Path | None, path: str) -> Commit | None:
    """The last commit that changed ``path`` (relative to the repository), or None."""
    found = git(root, "log", "-1", "--format=%H%x09%cI%x09%s", "--", path)
    if not found:
        return None
    sha, time, subject = (found.split("\t", 2) + ["", ""])[:3]
    return Commit(sha, time, subject)


def is_known(root: Path | None, sha: str) -> bool:
    return git(root, "cat-file", "-e", f"{sha}^{{commit}}") is not None


def is_ancestor(root: Path | None, older: str, newer: str) -> bool:
    """Whether ``older`` is ``newer`` or one of its ancestors."""
    if root is None:
        return False
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "merge-base", "--is-ancestor", older, newer],
            capture_output=True, timeout=20, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@dataclass(frozen=True)
class RunStamp:
    """What a run recorded of its code and time (columns of runs.csv)."""

    commit: str | None
    started_at: str | None

    @classmethod
    def of(cls, row: Row) -> RunStamp:
        return cls(row.text("git_commit") or None, row.text("started_at") or None)


def check_protocol(root: Path | None, protocol: str, runs: Iterable[RunStamp]) -> dict[str, Any]:
    """The protocol document's last commit and whether it precedes every run: the commit must be an
    ancestor of the run's commit, and its time must precede the run's start. ``status`` is PASSED
    (every run checked), FAILED (naming each problem) or NOT_CHECKED (why)."""
    runs = list(runs)
    commit = commit_of(root, protocol)
    found: dict[str, Any] = {"path": protocol, "commit": commit.sha if commit else None,
                             "committed_at": commit.time if commit else None}  # fmt: skip
    if root is None or commit is None:
        reason = "not a git checkout" if root is None else f"{protocol} is not committed"
        return {
            **found,
            "status": NOT_CHECKED,
            "problems": [],
            "text": f"{reason}: the protocol's commit is unknown",
        }
    problems, unknown = [], []
    edited = git(root, "status", "--porcelain", "--", protocol)
    if edited:
        problems.append(
            f"{protocol} has changes that are not committed: the rules judged are not the committed ones"
        )
    by_commit: dict[str | None, int] = {}
    for run in runs:
        by_commit[run.commit] = by_commit.get(run.commit, 0) + 1
    for sha, count in sorted(by_commit.items(), key=lambda item: str(item[0])):
        if sha is None:
            unknown.append(f"{count} run(s) record no code commit")
        elif not is_known(root, sha):
            unknown.append(f"{count} run(s) at commit {sha[:12]}, which this repository does not hold")
        elif not is_ancestor(root, commit.sha, sha):
            problems.append(
                f"{count} run(s) at commit {sha[:12]}, whose code does not contain the protocol commit {commit.sha[:12]}"
            )
        elif (
            (made := parse_time(git(root, "show", "-s", "--format=%cI", sha))) is not None
            and (committed_at := parse_time(commit.time)) is not None
            and made < committed_at
        ):
            problems.append(f"{count} run(s) at commit {sha[:12]}, committed before the protocol commit")
    committed = parse_time(commit.time)
    starts = [(run, parse_time(run.started_at)) for run in runs]
    missing = sum(start is None for _, start in starts)
    if missing:
        unknown.append(f"{missing} run(s) record no start time")
    early = sorted(
        start for _, start in starts if start is not None and committed is not None and start <= committed
    )
    if early:
        problems.append(
            f"{len(early)} run(s) started before the protocol was committed ({commit.time}), the first at "
            f"{early[0].isoformat()}"
        )
    if problems:
        status, text = FAILED, "; ".join(problems)
    elif unknown:
        status, text = NOT_CHECKED, "; ".join(unknown)
    else:
        status = PASSED
        text = (
            f"the protocol commit {commit.sha[:12]} ({commit.time}) is an ancestor of every run's commit and "
            f"precedes every run's start ({len(runs)} runs)"
        )
    return {**found, "status": status, "problems": problems + unknown, "text": text}


def deviations(
    root: Path | None,
    since: str | None,
    commits: Iterable[str | None],
    paths: tuple[str, ...] = DEVIATION_PATHS,
) -> list[dict[str, Any]]:
    """Every commit after ``since`` (the protocol commit) up to each of ``commits`` (the runs') that
    touches ``paths``: ``{"commit", "time", "subject", "files"}``, oldest first. Commits the repository
    does not hold, or that do not descend from ``since``, are skipped (``check_protocol`` names them)."""
    if root is None or since is None:
        return []
    found: dict[str, dict[str, Any]] = {}
    for sha in sorted({sha for sha in commits if sha}):
        if not is_known(root, sha) or not is_ancestor(root, since, sha):
            continue
        log = git(root, "log", "--format=%x00%H%x09%cI%x09%s", "--name-only", f"{since}..{sha}", "--", *paths)
        for block in (log or "").split("\x00"):
            if not block.strip():
                continue
            head, *files = block.strip().split("\n")
            commit, time, subject = (head.split("\t", 2) + ["", ""])[:3]
            found.setdefault(commit, {"commit": commit, "time": time, "subject": subject,
                                      "files": sorted(f for f in files if f)})  # fmt: skip
    return sorted(found.values(), key=lambda entry: (entry["time"], entry["commit"]))


def runs_provenance(rows: list[Row]) -> dict[str, Any]:
    """The code, versions, devices and times of the runs, from runs.csv's rows (deterministic)."""
    commits: dict[str, dict[str, Any]] = {}
    for row in rows:
        sha = row.text("git_commit") or "unknown"
        entry = commits.setdefault(sha, {"commit": sha, "runs": 0, "clean": 0, "dirty": 0, "unknown": 0})
        entry["runs"] += 1
        flag = row.text("git_dirty")
        entry[{"false": "clean", "true": "dirty"}.get(flag, "unknown")] += 1
    starts = sorted(text for row in rows if (text := row.text("started_at")) and parse_time(text))
    finishes = sorted(text for row in rows if (text := row.text("finished_at")) and parse_time(text))
    elapsed = None
    if starts and finishes:
        elapsed = (parse_time(finishes[-1]) - parse_time(starts[0])).total_seconds()  # type: ignore[operator]
    walls = [row.metric("wall_time_s") for row in rows]
    return {
        "count": len(rows),
        "commits": sorted(commits.values(), key=lambda entry: (-entry["runs"], entry["commit"])),
        "torch": sorted({row.text("torch") or "unknown" for row in rows}),
        "devices": sorted({row.text("device") or "unknown" for row in rows}),
        "first_start": starts[0] if starts else None,
        "last_finish": finishes[-1] if finishes else None,
        "elapsed_s": elapsed,
        "summed_run_wall_time_s": sum(wall for wall in walls if wall == wall),
    }


def describe_commits(commits: list[dict[str, Any]]) -> str:
    """``abc123def456 (240 runs, clean)``, one per commit."""
    parts = []
    for entry in commits:
        states = [f"{entry[key]} {key}" for key in ("clean", "dirty", "unknown") if entry[key]]
        state = "clean" if states == [f"{entry['runs']} clean"] else ", ".join(states)
        parts.append(f"`{entry['commit'][:12]}` ({entry['runs']} runs, {state})")
    return "; ".join(parts) or "none"

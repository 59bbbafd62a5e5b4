"""Finished run folders as records: their resolved config and summary, found under a folder.

A run that diverged (its loss became NaN or inf; ``"status": "diverged"`` in its summary) is a
finished record too, so that reports name it instead of missing it; it holds no result
(``test_acc_last`` is None): :func:`split_diverged` keeps it out of every mean and test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlab.config import RunConfig, identity, loss_label
from kdlab.errors import UserError
from kdlab.identity import summary_sha256
from kdlab.runs import DIVERGED, FINISHED, RunFolder


@dataclass
class RunRecord:
    """One run folder: ``config`` as trained (``out`` = where it was written), ``summary`` its summary.json."""

    path: Path
    config: RunConfig
    summary: dict[str, Any]

    @property
    def status(self) -> str:
        """``finished`` or ``diverged`` (summaries written before kdlab recorded a status: finished)."""
        return str(self.summary.get("status", FINISHED))

    @property
    def diverged(self) -> bool:
        return self.status == DIVERGED

    @property
    def teacher_sha256(self) -> str | None:
        """The SHA-256 of each checkpoint the run read as its teacher, as it recorded them ('+' between
        an ensemble's members); None for a run without a teacher, or one that did not record them."""
        inputs = self.summary.get("inputs")
        recorded = inputs.get("teachers") if isinstance(inputs, dict) else None
        if not isinstance(recorded, list) or not recorded:
            return None
        hashes = [entry.get("sha256") if isinstance(entry, dict) else None for entry in recorded]
        return "+".join(hashes) if all(isinstance(digest, str) and digest for digest in hashes) else None

    def diverged_text(self) -> str:
        """Where and why a diverged run stopped, e.g. 'diverged at epoch 2, step 3: the loss became NaN
        or inf (last finite epoch 1)'."""
        summary = self.summary
        return (
            f"diverged at epoch {summary.get('diverged_epoch')}, step {summary.get('diverged_step')}: "
            f"{summary.get('reason', 'the loss became NaN or inf')} (last finite epoch "
            f"{summary.get('last_finite_epoch')})"
        )

    def metric(self, key: str) -> float:
        """A numeric summary value (NaN when absent); 'inf' strings become math.inf."""
        value = self.summary.get(key)
        if isinstance(value, str):
            return math.inf if value == "inf" else math.nan
        return math.nan if value is None else float(value)


def read_run(path: str | Path) -> RunRecord:
    """A finished (or diverged) run folder as a RunRecord, or a UserError saying what is missing."""
    run = RunFolder(path)
    if not run.is_finished():
        raise UserError(f"{run.path} is not a finished kdlab run (no summary.json): finish it with --resume")
    return RunRecord(run.path, run.read_config(), run.summary())


def find_runs(folder: str | Path) -> list[RunRecord]:
    """Every finished (or diverged) run folder under ``folder`` (itself included), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: pass a sweep folder or a run folder")
    paths = sorted(
        summary.parent
        for summary in folder.rglob("summary.json")
        if (summary.parent / "config.yaml").exists()  # read_run refuses one that is not a file
    )
    return [read_run(path) for path in paths]


def split_diverged(records: list[RunRecord]) -> tuple[list[RunRecord], list[RunRecord]]:
    """``(results, diverged)``: the runs that finished as asked, and those that diverged."""
    return [r for r in records if not r.diverged], [r for r in records if r.diverged]


def run_identity(record: RunRecord) -> str:
    """What tells a run from a copy of its folder: the run id drawn when it started (its summary's
    ``inputs``, kdlab.identity) or, for a run of a kdlab before run ids, the sha256 of its summary (a
    copy's is the same; two trainings' differ, if only in their wall time)."""
    inputs = record.summary.get("inputs")
    run_id = inputs.get("run_id") if isinstance(inputs, dict) else None
    return str(run_id) if run_id else f"summary:{summary_sha256(record.summary)}"


def without_copies(records: list[RunRecord]) -> tuple[list[RunRecord], list[tuple[RunRecord, RunRecord]]]:
    """``(records, copies)``: the records with every copy of a run left out, and ``(copy, original)``
    pairs. A copy is a folder holding the same run (:func:`run_identity`) with the same settings
    (:func:`kdlab.config.identity`; a copy resumed with more epochs is another run) as a folder
    earlier in path order: a backup (``cp -r``) is one run, not a second seed."""
    kept: dict[tuple[str, str], RunRecord] = {}
    copies = []
    for record in sorted(records, key=lambda r: str(r.path)):
        key = (run_identity(record), repr(sorted(identity(record.config).items())))
        if key in kept:
            copies.append((record, kept[key]))
        else:
            kept[key] = record
    return [record for record in records if all(record is not copy for copy, _ in copies)], copies


def run_label(config: RunConfig, with_model: bool = False) -> str:
    """A short human label from the loss's registration: 'CE', 'KL tau=20', 'KL alpha=0.5 tau=inf',
    'MSE', 'DKD tau=4' (model first if asked)."""
    label = loss_label(config.kd)
    return f"{config.model} {label}" if with_model else label

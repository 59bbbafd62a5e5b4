"""Finished run folders as records: their resolved config and summary, found under a folder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdlab.config import RunConfig, loss_label
from kdlab.errors import UserError
from kdlab.runs import RunFolder


@dataclass
class RunRecord:
    """One run folder: ``config`` as trained (``out`` = where it was written), ``summary`` its summary.json."""

    path: Path
    config: RunConfig
    summary: dict[str, Any]

    def metric(self, key: str) -> float:
        """A numeric summary value (NaN when absent); 'inf' strings become math.inf."""
        value = self.summary.get(key)
        if isinstance(value, str):
            return math.inf if value == "inf" else math.nan
        return math.nan if value is None else float(value)


def read_run(path: str | Path) -> RunRecord:
    """A finished run folder as a RunRecord, or a UserError saying what is missing."""
    run = RunFolder(path)
    if not run.is_finished():
        raise UserError(f"{run.path} is not a finished kdlab run (no summary.json): finish it with --resume")
    return RunRecord(run.path, run.read_config(), run.summary())


def find_runs(folder: str | Path) -> list[RunRecord]:
    """Every finished run folder under ``folder`` (itself included), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: pass a sweep folder or a run folder")
    paths = sorted(
        summary.parent
        for summary in folder.rglob("summary.json")
        if (summary.parent / "config.yaml").exists()  # read_run refuses one that is not a file
    )
    return [read_run(path) for path in paths]


def run_label(config: RunConfig, with_model: bool = False) -> str:
    """A short human label from the loss's registration: 'CE', 'KL tau=20', 'KL alpha=0.5 tau=inf',
    'MSE', 'DKD tau=4' (model first if asked)."""
    label = loss_label(config.kd)
    return f"{config.model} {label}" if with_model else label

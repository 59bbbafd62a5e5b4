"""The run folder: the unit every other part of kdlab reads and writes.

```
RUN/config.yaml          resolved configuration, plus versions and git commit
RUN/metrics.jsonl        one JSON object per finished epoch
RUN/summary.json         written last: its presence marks a finished run
RUN/checkpoints/last.pt  plain dicts, loadable with torch.load(weights_only=True)
RUN/checkpoints/best.pt
```
Every write goes to a temporary file in the same folder and is renamed into place, so an
interruption leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdlab.errors import UserError

if TYPE_CHECKING:
    from kdlab.config import RunConfig

CHECKPOINT_FORMAT = "kdlab-checkpoint-v1"


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise UserError(
                f"no space left on the device to write {path}: free some space, then --resume"
            ) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic_write(Path(path), lambda handle: handle.write(text))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    _atomic_write(Path(path), lambda handle: torch.save(obj, handle), mode="wb")


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def environment() -> dict[str, str | None]:
    """Versions and git commit recorded with every run."""
    import torchvision

    import kdlab

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "kdlab": kdlab.__version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
        "git_commit": commit,
    }


def unreadable_reason(path: Path, error: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in a few words a user can act on."""
    import pickle
    import zipfile

    if not zipfile.is_zipfile(path):
        return "not a PyTorch zip archive: truncated or corrupt"
    if isinstance(error, pickle.UnpicklingError):
        return "it holds objects other than tensors and plain containers, which weights-only loading refuses"
    text = str(error).strip()
    return text.splitlines()[0][:120] if text else type(error).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A kdlab checkpoint dict, or a UserError for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: pass a run folder or a .pt file written by kdlab")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise UserError(
            f"cannot read checkpoint {path} ({unreadable_reason(path, error)}): use another checkpoint "
            "(a run's checkpoints/best.pt, or the teacher run again), or --overwrite to start the run again"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{path} is not a kdlab checkpoint (no '{CHECKPOINT_FORMAT}' marker): pass a kdlab run folder or "
            "checkpoint; for torchvision weights use --teacher torchvision:MODEL=PATH"
        )
    return checkpoint


class RunFolder:
    """Paths and atomic reads/writes of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    def is_finished(self) -> bool:
        return self.summary_path.is_file()

    def has_content(self) -> bool:
        return self.config_path.exists() or self.last_checkpoint.exists() or self.is_finished()

    def summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text())

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(
            self.metrics_path, "".join(json.dumps(row, default=_json_default) + "\n" for row in rows)
        )

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_path, summary)

    def write_config(self, config: RunConfig, run_info: dict[str, Any] | None = None) -> None:
        """``config.yaml``: the resolved config, then a ``run_info`` block (versions, commit, world)."""
        import yaml

        from kdlab.config import to_yaml

        extra = yaml.safe_dump({"run_info": run_info}, sort_keys=False) if run_info is not None else ""
        atomic_write_text(self.config_path, to_yaml(config) + extra)

    def read_config(self) -> RunConfig:
        """The RunConfig in ``config.yaml`` (its ``run_info`` block dropped); a UserError when the
        file is missing or is not a kdlab config."""
        import yaml

        from kdlab.config import from_dict

        if not self.config_path.is_file():
            raise UserError(f"{self.path} has no config.yaml: pass a kdlab run folder")
        try:
            stored = yaml.safe_load(self.config_path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            raise UserError(f"{self.config_path} is not valid YAML: the run folder is damaged") from None
        if not isinstance(stored, dict):
            raise UserError(
                f"{self.config_path} does not hold a mapping of config keys: the run folder is damaged"
            )
        stored.pop("run_info", None)
        return from_dict(stored)


def resolve_checkpoint(spec: str | Path) -> Path:
    """A run folder -> its ``checkpoints/last.pt`` (it must be finished); a file -> itself."""
    path = Path(spec)
    if path.is_dir():
        run = RunFolder(path)
        if not run.last_checkpoint.is_file():
            raise UserError(
                f"{path} holds no checkpoints/last.pt: it is not a kdlab run folder, or it never started"
            )
        if not run.is_finished():
            raise UserError(
                f"run {path} is unfinished (no summary.json): finish it with `kdlab train ... --out {path} "
                "--resume`, or pass a checkpoint file explicitly"
            )
        return run.last_checkpoint
    if not path.exists():
        raise UserError(f"{path} does not exist: pass a finished run folder or a checkpoint file")
    return path

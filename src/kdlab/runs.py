"""The run folder: the unit every other part of kdlab reads and writes.

```
RUN/kdlab-run.json       the marker: kdlab created this folder (format version, kdlab version)
RUN/config.yaml          resolved configuration, plus versions and git commit
RUN/metrics.jsonl        one JSON object per finished epoch
RUN/summary.json         written last: its presence marks a finished run
RUN/inputs.json          the run's id and the identity of every input it reads (kdlab.identity)
RUN/checkpoints/last.pt  plain dicts, loadable with torch.load(weights_only=True)
RUN/checkpoints/best.pt
RUN/.kdlab-run.lock      while a process writes the folder: its pid (removed when it is done)
```
Every write goes to a temporary file in the same folder and is renamed into place, so an
interruption leaves either the old file or the new one, never half of one; files get the mode
``open()`` would give them (0666 less the umask).

What kdlab promises about a user's files (docs/errors.md):

- a folder is a run folder only when it holds the marker, which only kdlab writes;
- ``--overwrite`` removes only kdlab's own file names (``OWN_FILES``, TensorBoard events, the
  temporary files of its atomic writes) inside a marked folder, never the folder itself, never a
  folder without the marker, and never the working folder or one that holds it;
- nothing is written before every input is checked (:meth:`RunFolder.check_out` writes nothing);
- one process writes a run folder at a time (:meth:`RunFolder.lock`, an ``fcntl.flock``); a file
  of the user's under the lock's name (anything but a process id) is refused, never overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import platform
import re
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdlab.errors import UserError, first_line, shown

try:
    import fcntl
except ImportError:  # Windows: no run-folder lock (one writer per folder is then up to you)
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from kdlab.config import RunConfig

CHECKPOINT_FORMAT = "kdlab-checkpoint-v1"
RUN_FORMAT = "kdlab-run-v1"
MARKER_NAME = "kdlab-run.json"
LOCK_NAME = ".kdlab-run.lock"
# Every file name kdlab writes in a run folder (relative paths): all that --overwrite may remove,
# with the temporary files of their atomic writes and TensorBoard's event files (OWN_PATTERNS).
OWN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "summary.json",
    "label_noise.json",
    "selection.json",
    "inputs.json",
    "checkpoints/last.pt",
    "checkpoints/best.pt",
)
OWN_FOLDERS = ("checkpoints", "tensorboard")
OWN_PATTERNS = {"tensorboard": "events.out.tfevents.*"}

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask (reading it means setting it: the two calls are serialised)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; open() would honour the umask
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:  # the temporary file is ours: never leave it behind
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise UserError(
                f"no space left on the device to write {path}: free some space, then --resume"
            ) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic_write(Path(path), lambda handle: handle.write(text))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    _atomic_write(Path(path), lambda handle: torch.save(obj, handle), mode="wb")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda handle: handle.write(data), mode="wb")


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    return first_line(error, 120)


# What every kdlab checkpoint holds (and the types), what it may hold (None or that type: image
# models record in_channels and image_size; input_shape, one sample's shape, since models may be any
# nn.Module), and what --resume needs on top.
_MODEL_KEYS = {"model_name": str, "num_classes": int, "model": dict}
_DATA_KEYS = {"in_channels": int, "image_size": int, "input_shape": list}
_RESUME_KEYS = {
    "optimizer": dict,
    "epoch": int,
    "test_acc_best": float,
    "best_epoch": int,
    "rng_cpu": torch.Tensor,
}


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", resume: bool = False
) -> dict[str, Any]:
    """A kdlab checkpoint dict, or a UserError for a missing, corrupt, foreign or incomplete file.

    ``resume=True`` also requires what continuing a run needs (optimizer state, epoch, RNG state).
    """
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
    required = {**_MODEL_KEYS, **(_RESUME_KEYS if resume else {})}
    for key, kind in required.items():
        value = checkpoint.get(key)
        valid = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float:
            valid = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind is int and valid:
            valid = value >= (0 if key in ("epoch", "best_epoch") else 1)
        if not valid:
            need = (
                "--resume needs it"
                if key in _RESUME_KEYS
                else "the file is damaged or was not written by kdlab"
            )
            raise UserError(
                f"{path} has no valid '{key}' (found {shown(value)}): {need}; use another checkpoint, or "
                "--overwrite to start the run again"
            )
    for key, kind in _DATA_KEYS.items():
        value = checkpoint.get(key)
        if value is None:
            continue
        items = value if kind is list and isinstance(value, list) else [value]
        if not isinstance(value, kind) or not all(
            isinstance(item, int) and not isinstance(item, bool) and item >= 1 for item in items
        ):
            raise UserError(
                f"{path} has an invalid '{key}' (found {shown(value)}): the file is damaged or was not written by "
                "kdlab; use another checkpoint"
            )
    return checkpoint


def load_model_state(model: nn.Module, state: dict[str, Any], source: str | Path, what: str) -> None:
    """``model.load_state_dict(state)`` with a one-line UserError naming the first key that differs.

    ``what`` describes the model the checkpoint claims to hold, e.g. ``"convnet-4 with 10 classes"``.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    problem = ""
    if missing:
        problem = f"lacks {shown(missing[0])}"
    elif unexpected:
        problem = f"has an unexpected key {shown(unexpected[0])}"
    else:
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                problem = f"holds a {type(value).__name__} under {shown(key)}, not a tensor"
            elif value.shape != expected[key].shape:
                problem = f"holds {shown(key)} of shape {list(value.shape)}, but a {what} has {list(expected[key].shape)}"
            if problem:
                break
    if problem:
        raise UserError(
            f"{source} {problem}: its weights do not match the model it names; use another checkpoint"
        )
    model.load_state_dict(state)


class RunFolder:
    """Paths and atomic reads/writes of one run folder, its marker and its lock."""

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

    @property
    def marker_path(self) -> Path:
        return self.path / MARKER_NAME

    def is_finished(self) -> bool:
        return self.summary_path.is_file()

    def summary(self) -> dict[str, Any]:
        summary = _read_json(self.summary_path)
        if not isinstance(summary, dict):
            raise UserError(
                f"{self.summary_path} is damaged (truncated, or not a JSON object): delete it, then run the "
                f"same command with --resume (it rewrites the summary of {self.path})"
            )
        return summary

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        rows = []
        for number, line in enumerate(self.metrics_path.read_bytes().splitlines(), start=1):
            row = _read_json(self.metrics_path, line) if line.strip() else {}
            if not isinstance(row, dict):
                raise UserError(
                    f"{self.metrics_path} is damaged at line {number} (truncated, or not a JSON object): "
                    f"--resume {self.path} rewrites it from its checkpoint"
                )
            if row:
                rows.append(row)
        return rows

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
        file is missing or is not a kdlab config (read with kdlab.config.load_yaml's bounds)."""
        from kdlab.config import from_dict, load_yaml

        if not self.config_path.is_file():
            raise UserError(f"{self.path} has no config.yaml: pass a kdlab run folder")
        stored = load_yaml(self.config_path)
        stored.pop("run_info", None)
        return from_dict(stored)

    # -- the marker, the checks before writing, clearing, the lock ---------------------------

    def is_marked(self) -> bool:
        """True when the folder holds kdlab's marker: a regular file (not a link) naming RUN_FORMAT."""
        try:
            if not stat.S_ISREG(self.marker_path.lstat().st_mode):
                return False
        except OSError:
            return False
        marker = _read_json(self.marker_path, limit=4096)
        return isinstance(marker, dict) and marker.get("format") == RUN_FORMAT

    def write_marker(self) -> None:
        if not self.is_marked():
            import kdlab

            atomic_write_json(
                self.marker_path,
                {
                    "format": RUN_FORMAT,
                    "kdlab": kdlab.__version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )

    def own_files(self) -> list[Path]:
        """kdlab's files present in the folder: ``OWN_FILES``, TensorBoard event files, and the
        temporary files (``.NAME.*.tmp``) an interrupted atomic write of one of them left."""
        found = []
        for folder in (self.path, *(self.path / name for name in OWN_FOLDERS)):
            if not _is_real_dir(folder):
                continue
            relative = folder.relative_to(self.path)
            names = {Path(name).name for name in OWN_FILES if Path(name).parent == relative}
            patterns = [*names, *(f".{name}.*.tmp" for name in names), OWN_PATTERNS.get(str(relative), "")]
            found += [
                entry
                for entry in sorted(folder.iterdir())
                if any(fnmatch.fnmatchcase(entry.name, p) for p in patterns if p) and not _is_real_dir(entry)
            ]
        return found

    def check_out(self, resume: bool, overwrite: bool, protected: Sequence[str | Path] = ()) -> bool:
        """Check that this folder may be written as asked, writing nothing; True when there is a
        checkpoint to resume from. ``protected`` are paths the run reads (its teachers): --overwrite
        never clears a folder that holds one of them."""
        path = self.path
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                kind = "a file" if path.is_file() else "not a folder"
                raise UserError(
                    f"--out {path} is {kind}: name a folder for the run (it is created if missing)"
                )
        else:
            _check_creatable(path)
        for name in (*OWN_FOLDERS, *OWN_FILES, MARKER_NAME, LOCK_NAME):
            if (path / name).is_symlink():
                raise UserError(
                    f"--out {path}: {name} is a symbolic link; kdlab writes only real files in a run folder, "
                    "so that it never writes or deletes elsewhere: remove the link or choose another --out"
                )
        holder = self.holder()
        if holder is not None:
            raise UserError(_held_message(path, holder))
        own = self.own_files()
        if own and not self.is_marked() and not (resume and not overwrite and self.last_checkpoint.is_file()):
            names = ", ".join(str(file.relative_to(path)) for file in own[:3])
            action = "--overwrite deletes nothing there" if overwrite else "kdlab will not write into it"
            raise UserError(
                f"--out {path} holds {names} but no {MARKER_NAME}, so it is not a run folder kdlab created and "
                f"{action}: choose another --out (or move those files away yourself)"
            )
        if overwrite and path.exists():
            _check_clearable(path, protected)
        elif own and not resume:
            state = "a finished run" if self.is_finished() else "an unfinished run"
            raise UserError(
                f"--out {path} already holds {state}: pass --resume to continue it, --overwrite to start "
                "again, or choose another --out"
            )
        return resume and not overwrite and self.last_checkpoint.is_file()

    def remove_temporaries(self) -> None:
        """Remove the temporary files (``.NAME.*.tmp``) of kdlab's writes that a process killed
        mid-write left; only while holding the lock, when no write of ours can be under way."""
        for file in self.own_files():
            if file.name.startswith(".") and file.name.endswith(".tmp"):
                file.unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove kdlab's own files (see ``own_files``) and its emptied sub-folders; nothing else."""
        for file in self.own_files():
            file.unlink(missing_ok=True)
        for name in OWN_FOLDERS:
            folder = self.path / name
            if _is_real_dir(folder) and not any(folder.iterdir()):
                folder.rmdir()

    def holder(self) -> str | None:
        """What the lock file says (a pid) when another process holds the lock; None when it is free.
        Takes the lock for an instant only to look, and creates nothing."""
        if fcntl is None or os.path.realpath(self.path) in _HELD:
            return None
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 32, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)  # also releases the shared lock
        return None

    @contextlib.contextmanager
    def lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the folder's exclusive lock (created with the folder if missing) while the block runs.

        Another process holding it: a UserError naming its pid (or, ``wait=True``, wait for it). The
        kernel drops the lock when its process dies, so a lock file left by ``kill -9`` is taken
        over; re-entrant within one process. A folder this call created is removed again if the
        block fails before anything was written into it.
        """
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        created = _make_folder(self.path)
        try:
            fd = _acquire(self.path / LOCK_NAME, self.path, wait)
        except BaseException:
            _remove_empty(created)
            raise
        _HELD[key] = 1
        try:
            yield
        except BaseException:
            _release(self.path / LOCK_NAME, fd)
            _remove_empty(created)
            raise
        else:
            _release(self.path / LOCK_NAME, fd)
        finally:
            del _HELD[key]


_HELD: dict[str, int] = {}  # run folders whose lock this process holds (real path -> depth)


def _read_json(path: Path, line: bytes | None = None, limit: int | None = None) -> Any:
    """The JSON value in ``path`` (or in one ``line`` of it); None when it cannot be parsed."""
    try:
        data = line if line is not None else path.read_bytes() if limit is None else _read_head(path, limit)
        return json.loads(data)
    except (OSError, ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def _read_head(path: Path, limit: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(limit)


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _check_creatable(path: Path) -> None:
    """A UserError when ``path`` (missing) cannot be created: its nearest existing parent is not a
    writable folder."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(
            f"--out {path} cannot be created: {parent} is a file, not a folder; choose another --out"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(
            f"--out {path} cannot be created: {parent} is not writable; choose a folder you can write"
        )


def _check_clearable(path: Path, protected: Sequence[str | Path]) -> None:
    """--overwrite never clears the working folder, a folder holding it, the home folder, or a
    folder holding a file the run reads."""
    real = Path(os.path.realpath(path))
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents or real == Path.home().resolve():
        raise UserError(
            f"--overwrite will not clear {path} ({real}): it is the working folder, a folder holding it, "
            "or the home folder; name the run's own folder instead"
        )
    for item in protected:
        resolved = Path(os.path.realpath(item))
        if resolved == real or real in resolved.parents:
            raise UserError(
                f"--overwrite will not clear {path}: the run reads {item} from it (its teacher); "
                "choose another --out"
            )


def _make_folder(path: Path) -> list[Path]:
    """Create ``path`` and missing parents; returns the folders created, deepest first."""
    missing = []
    folder = path.absolute()
    while not folder.exists() and not folder.is_symlink():
        missing.append(folder)
        folder = folder.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"--out {path} cannot be created ({error.strerror}): choose a folder you can write"
        ) from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: kdlab created it and wrote nothing into it


def _acquire(lock_path: Path, folder: Path, wait: bool) -> int:
    """An open descriptor of ``lock_path`` holding its exclusive flock, with our pid written in it
    (without fcntl, on Windows, an open descriptor and no lock)."""
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise UserError(
                f"cannot write into --out {folder} ({error.strerror}): choose a folder you can write"
            ) from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as error:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(
                    f"cannot lock --out {folder} ({error.strerror}): choose a local folder"
                ) from None
            raise UserError(_held_message(folder, holder)) from None
        try:  # the holder before us may have removed the file as it released it: lock the new one
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        if not _holds_a_pid(fd):  # a file of the user's under our name: never overwritten nor removed
            os.close(fd)
            raise UserError(
                f"--out {folder} holds a file {LOCK_NAME} that kdlab did not write (kdlab's holds a process id "
                "only), and kdlab overwrites only its own files: move it away or choose another --out"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd


def _holds_a_pid(fd: int) -> bool:
    """Whether the lock file is one kdlab writes: empty (just created) or a process id."""
    return os.fstat(fd).st_size <= 32 and re.fullmatch(rb"\d*\n?", os.pread(fd, 32, 0)) is not None


def _held_message(folder: Path, holder: str) -> str:
    if not holder.isdigit():
        return f"--out {folder} is being written by another kdlab process: wait for it to finish, or choose another --out"
    try:
        os.kill(int(holder), 0)
        alive = True
    except ProcessLookupError:
        alive = False
    except PermissionError:
        alive = True
    if alive:
        return (
            f"--out {folder} is being written by another kdlab process (pid {holder}): wait for it to finish, "
            "stop it, or choose another --out"
        )
    return (
        f"--out {folder} is locked by pid {holder}, which is no longer running, but a process it started (a "
        "data-loading worker) still holds the lock: wait a few seconds and try again"
    )


def _release(lock_path: Path, fd: int) -> None:
    """Remove the lock file while still holding it (a waiter then finds it gone and retries), unless
    the name no longer leads to the file we locked: a file put there meanwhile is not ours."""
    with contextlib.suppress(OSError):
        if os.path.samestat(os.fstat(fd), os.lstat(lock_path)):
            lock_path.unlink()
    os.close(fd)


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

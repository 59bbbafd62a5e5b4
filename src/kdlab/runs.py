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

Every other folder kdlab writes (reports, analyses, reproduce's outputs and published copies, a
sweep's manifest, the demo's results, cache sidecars, exports) is an :class:`OutputFolder`: the same
rules, with a manifest (``kdlab-outputs.json``: each file kdlab wrote there and the SHA-256 of its
bytes) in place of the marker, so that kdlab writes only over its own, unedited outputs. No write
goes through a symbolic link or replaces a FIFO, device or folder (``_atomic_write`` refuses them).
The one file of the user's that kdlab rewrites, when asked (``--readme``), is edited in place by
:func:`rewrite_user_file`.

What kdlab reads (:func:`open_regular`, :func:`read_regular`, :func:`check_regular`): regular files
only. Every file is opened without blocking (``O_NONBLOCK``: a FIFO would otherwise wait for a
writer forever), checked with ``fstat`` on the open descriptor, and refused with a one-line
UserError when it is a FIFO, a socket, a device or a folder; text read whole (configs, recipes, a
run's JSON files) is read up to a bound. Symbolic links are followed, to regular files only, for
the inputs a user names (``--config``, a recipe, a dataset file, a teacher checkpoint or weights
file, the logit cache) and for a run's ``config.yaml``, ``summary.json`` and ``metrics.jsonl``,
which kdlab only reads through them; never for the two files that grant something: the marker (it
lets ``--overwrite`` delete) and the lock (kdlab writes into it), opened with ``O_NOFOLLOW``. A run
folder in which one of kdlab's names is a link or not a regular file is not written
(:meth:`RunFolder.check_files`).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import io
import json
import os
import platform
import re
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

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
# summary.json's "status": a run that ended as asked, or one whose loss became NaN or inf (its summary
# says where and why; its last.pt is its last finite checkpoint). Both count as finished runs.
FINISHED, DIVERGED = "finished", "diverged"
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


# Errors of a write that the user can act on (a folder they cannot write, a file where a folder goes):
# one line, as for any bad input.
_WRITE_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


def _atomic_write(
    path: Path, write: Callable[[Any], None], mode: str = "w", like: os.stat_result | None = None
) -> None:
    """Write ``path`` through a temporary file in its folder renamed into place. A target that is a
    symbolic link or not a regular file (a folder, FIFO, device) is refused, never replaced. The new
    file gets the mode ``open()`` would give it, or, with ``like``, that file's mode and owner."""
    refusal = not_a_regular_file(path)
    if refusal:
        raise UserError(
            f"{path} {refusal}; kdlab writes only regular files, never through a link: move it away, or "
            "choose another output folder"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        if error.errno not in _WRITE_ERRORS:
            raise
        raise UserError(f"cannot write {path} ({error.strerror}): choose a folder you can write") from None
    try:
        if like is None:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; open() would honour the umask
        else:  # a file rewritten in place keeps its permissions (and owner, where we may set it)
            os.fchmod(fd, stat.S_IMODE(like.st_mode))
            with contextlib.suppress(OSError):
                os.fchown(fd, like.st_uid, like.st_gid)
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


def not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` may not be written or replaced ("is a symbolic link", "is a FIFO", ...); None
    when it is missing or a regular file. Looks at the name itself (``lstat``), never follows it."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket"}
    kind = next((name for test, name in kinds.items() if test(mode)), "a device")
    return f"is {kind}, not a regular file"


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic_write(Path(path), lambda handle: handle.write(text))


def json_text(data: Any) -> str:
    """How kdlab writes a JSON file: indented, keys in insertion order, tensors and paths converted."""
    return json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json_text(data))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    _atomic_write(Path(path), lambda handle: torch.save(obj, handle), mode="wb")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda handle: handle.write(data), mode="wb")


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open_regular(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- reading: regular files only (see the module docstring) ------------------------------------

RUN_FILE_MAX_BYTES = 64 << 20  # a run's summary.json or metrics.jsonl: KBs, even after thousands of epochs
_KINDS = (
    (stat.S_ISREG, "a file"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words: 'a file', 'a folder', 'a FIFO (named pipe)', 'a socket', ..."""
    return next((name for is_kind, name in _KINDS if is_kind(mode)), "a special file")


class NotARegularFile(UserError):
    """A path kdlab was to read is a FIFO, a socket, a device or a folder (or a link it does not follow)."""


def open_regular(
    path: str | Path,
    follow_links: bool = True,
    fix: str = "replace it with a regular file, or give another path",
) -> BinaryIO:
    """``open(path, "rb")``, for a regular file only; anything else is a :class:`NotARegularFile`
    (``"PATH is a FIFO (named pipe), not a regular file: kdlab reads only regular files; FIX"``).

    Opened with ``O_NONBLOCK`` (so that a FIFO cannot block the open) and checked with ``fstat`` on
    the descriptor, so the file read is the file checked; ``follow_links=False`` adds ``O_NOFOLLOW``.
    A missing file or a permission problem is left as the ``OSError`` for the caller to word.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except OSError as error:  # ELOOP: a link under O_NOFOLLOW; ENXIO: a socket
        try:
            mode = path.stat().st_mode if follow_links else path.lstat().st_mode
        except OSError:
            raise error from None
        if stat.S_ISREG(mode):
            raise
        raise NotARegularFile(
            f"{path} is {file_kind(mode)}, not a regular file: kdlab reads only regular files; {fix}"
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(
                f"{path} is {file_kind(mode)}, not a regular file: kdlab reads only regular files; {fix}"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file never blocks; plain reads from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(
    path: str | Path,
    limit: int | None = None,
    follow_links: bool = True,
    fix: str = "replace it with a regular file, or give another path",
) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`); with ``limit``, at most ``limit + 1``
    of them, so that the caller can tell a file over its bound."""
    with open_regular(path, follow_links, fix) as handle:
        return handle.read() if limit is None else handle.read(limit + 1)


def check_regular(
    path: str | Path,
    follow_links: bool = True,
    fix: str = "replace it with a regular file, or give another path",
) -> None:
    """A :class:`NotARegularFile` unless ``path`` is a regular file, for readers that take a path
    and cannot take an open file (``np.load`` of a memory map)."""
    with open_regular(path, follow_links, fix):
        pass


def environment() -> dict[str, str | bool | None]:
    """Versions, git commit and whether kdlab's sources differ from it, recorded with every run.

    ``git_dirty``: True when ``git status`` lists a change under the package folder (a modified, added,
    deleted or untracked file, ignored ones aside), so the commit alone does not name the code that
    ran; None outside a git checkout."""
    import torchvision

    import kdlab

    package = Path(__file__).parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD") or None
    status = git("status", "--porcelain", "--", ".") if commit else None
    return {
        "kdlab": kdlab.__version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
    }


def unreadable_reason(source: Path | BinaryIO, error: Exception) -> str:
    """Why ``torch.load(source, weights_only=True)`` failed, in a few words a user can act on
    (``source``: the path, or the open file that was read)."""
    import pickle
    import zipfile

    if not zipfile.is_zipfile(source):
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
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist: pass a run folder or a .pt file written by kdlab")
    fix = "use another checkpoint (a run's checkpoints/best.pt, or the teacher run again), or --overwrite to start the run again"
    try:
        handle = open_regular(path, fix="pass a run folder or a .pt file written by kdlab")
    except OSError as error:
        raise UserError(f"cannot read checkpoint {path} ({error.strerror}): {fix}") from None
    with handle:
        try:
            checkpoint = torch.load(handle, map_location=map_location, weights_only=True)
        except Exception as error:  # torch raises many types for a damaged file
            raise UserError(
                f"cannot read checkpoint {path} ({unreadable_reason(handle, error)}): {fix}"
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
        """Whether ``summary.json`` is there (whatever it is: :meth:`summary` refuses a FIFO or a
        folder in its place, rather than taking the run for unfinished)."""
        return self.summary_path.exists()

    def summary(self) -> dict[str, Any]:
        summary = _read_json(self.summary_path, limit=RUN_FILE_MAX_BYTES)
        if not isinstance(summary, dict):
            raise UserError(
                f"{self.summary_path} is damaged (truncated, or not a JSON object): delete it, then run the "
                f"same command with --resume (it rewrites the summary of {self.path})"
            )
        return summary

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        data = read_regular(self.metrics_path, RUN_FILE_MAX_BYTES)
        rows = []
        for number, line in enumerate(data.splitlines(), start=1):
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

    def run_info(self) -> dict[str, Any]:
        """The ``run_info`` block of config.yaml (versions, commit, device, start time); {} if none."""
        from kdlab.config import load_yaml

        if not self.config_path.is_file():
            return {}
        try:
            info = load_yaml(self.config_path).get("run_info")
        except UserError:
            return {}
        return info if isinstance(info, dict) else {}

    def read_config(self) -> RunConfig:
        """The RunConfig in ``config.yaml`` (its ``run_info`` block dropped); a UserError when the
        file is missing or is not a kdlab config (read with kdlab.config.load_yaml's bounds)."""
        from kdlab.config import from_record, load_yaml

        if not self.config_path.exists():
            raise UserError(f"{self.path} has no config.yaml: pass a kdlab run folder")
        check_regular(self.config_path, fix=_RUN_FILE_FIX)
        stored = load_yaml(self.config_path)
        stored.pop("run_info", None)
        return from_record(stored)

    # -- the marker, the checks before writing, clearing, the lock ---------------------------

    def is_marked(self) -> bool:
        """True when the folder holds kdlab's marker: a regular file (not a link) naming RUN_FORMAT."""
        try:
            if not stat.S_ISREG(self.marker_path.lstat().st_mode):
                return False
        except OSError:
            return False
        marker = _read_json(self.marker_path, limit=4096, follow_links=False)
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
        self.check_files()
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

    def check_files(self) -> None:
        """A UserError when one of kdlab's names in the folder is a symbolic link, or is not what
        kdlab writes there (a regular file; a folder for ``checkpoints/`` and ``tensorboard/``): a
        FIFO would block a reader forever, and kdlab replaces only its own files. Writes nothing."""
        for name in (*OWN_FOLDERS, *OWN_FILES, MARKER_NAME, LOCK_NAME):
            try:
                mode = (self.path / name).lstat().st_mode
            except OSError:  # missing, or under a missing folder
                continue
            if stat.S_ISLNK(mode):
                raise UserError(
                    f"--out {self.path}: {name} is a symbolic link; kdlab writes only real files in a run folder, "
                    "so that it never writes or deletes elsewhere: remove the link or choose another --out"
                )
            folder = name in OWN_FOLDERS
            if not (stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode)):
                raise UserError(
                    _not_kdlabs(self.path, name, mode, "a folder" if folder else "a regular file")
                )

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
        try:  # never blocks: not on a FIFO, not through a link (check_files refuses both with a reason)
            fd = os.open(self.path / LOCK_NAME, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
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
        with _folder_lock(self.path, LOCK_NAME, os.path.realpath(self.path), wait):
            yield


_HELD: dict[str, int] = {}  # folders whose lock this process holds (their key -> depth)


@contextlib.contextmanager
def _folder_lock(folder: Path, lock_name: str, key: str, wait: bool) -> Iterator[None]:
    """Hold the exclusive flock of ``folder/lock_name`` (folder created if missing) while the block
    runs; re-entrant per ``key``; a folder created here is removed again if the block fails before
    anything was written into it."""
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    created = _make_folder(folder)
    try:
        fd = _acquire(folder / lock_name, folder, wait)
    except BaseException:
        _remove_empty(created)
        raise
    _HELD[key] = 1
    try:
        yield
    except BaseException:
        _release(folder / lock_name, fd)
        _remove_empty(created)
        raise
    else:
        _release(folder / lock_name, fd)
    finally:
        del _HELD[key]


# --- every other output folder: reports, analyses, published copies, sweep manifests, caches ------

OUTPUTS_FORMAT = "kdlab-outputs-v1"
OUTPUTS_MANIFEST = "kdlab-outputs.json"
OUTPUTS_LOCK = ".kdlab-outputs.lock"
_MANIFEST_LIMIT = 1 << 22  # 4 MiB: tens of thousands of entries; anything larger is not ours


class OutputFolder:
    """A folder of kdlab outputs other than a run's own files: reports, analyses, published copies,
    sweep manifests, the demo's results, teacher-logit cache sidecars, exports.

    ``FOLDER/kdlab-outputs.json`` (the manifest) lists every file kdlab wrote there: its path
    relative to the folder, the SHA-256 of the bytes written and the writer (``kind``). Every write
    follows the run folder's rules:

    - regular files only: a target, or a folder on its way, that is a symbolic link, a FIFO, a
      device or a folder is refused, never written through or replaced;
    - only over kdlab's own files: an existing target must be listed in the manifest and still hold
      the bytes kdlab wrote (or already hold exactly the bytes to be written: replacing them loses
      nothing). Anything else is the user's, or was edited by the user, and is refused;
    - atomically (temporary file + rename in the same folder), the manifest rewritten the same way
      after each file;
    - one process at a time: an exclusive ``flock`` on ``FOLDER/.kdlab-outputs.lock`` while writing
      (``wait=True``: wait for it, for writers that share a folder, such as sweep shards);
    - :meth:`check` validates the folder and the names, writing and creating nothing, so callers
      check before any work and :meth:`write_files` checks all its files before the first write.

    ``flag`` names the folder in messages (``--out``, ``--publish``, ``kd.cache_dir``).
    """

    def __init__(
        self, path: str | Path, kind: str = "outputs", flag: str = "--out", wait: bool = False
    ) -> None:
        self.path = Path(path)
        self.kind = kind
        self.flag = flag
        self.wait = wait

    @property
    def manifest_path(self) -> Path:
        return self.path / OUTPUTS_MANIFEST

    def check(self, names: Iterable[str] = (), contents: Mapping[str, bytes] | None = None) -> None:
        """A one-line UserError unless every name may be written: the folder is a writable real
        folder or can be created; each target is absent or kdlab's unchanged output (or holds
        ``contents[name]`` already). A name ending in ``/`` is a subfolder: absent or a real folder."""
        self._check_folder()
        manifest = self._manifest()
        for name in names:
            self._check_target(name, manifest, (contents or {}).get(name))

    def write_files(self, files: Mapping[str, bytes]) -> list[Path]:
        """Write each ``name -> bytes`` atomically, in order, after checking them all; returns the paths."""
        self.check(files, files)  # before the lock creates the folder
        written = []
        with self.lock():
            manifest = self._manifest()
            for name, data in files.items():  # again, now that no other kdlab process writes here
                self._check_target(name, manifest, data)
            for name, data in files.items():
                target = self._make_parents(name)
                _atomic_write(target, lambda handle, data=data: handle.write(data), mode="wb")
                manifest[name] = {"sha256": hashlib.sha256(data).hexdigest(), "kind": self.kind}
                self._write_manifest(manifest)
                written.append(target)
        return written

    def write_bytes(self, name: str, data: bytes) -> Path:
        return self.write_files({name: data})[0]

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode())

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json_text(data))

    def copy_file(self, name: str, source: str | Path) -> Path:
        """Copy a regular file (never a FIFO or device) to ``name``."""
        return self.write_bytes(name, read_regular_file(Path(source)))

    def savefig(self, name: str, fig: Any, **options: Any) -> Path:
        """A matplotlib figure rendered in memory (format from the name's suffix), then written."""
        buffer = io.BytesIO()
        fig.savefig(buffer, format=Path(name).suffix.lstrip(".") or "png", **options)
        return self.write_bytes(name, buffer.getvalue())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's exclusive lock (the folder is created if missing; see ``RunFolder.lock``)."""
        self._check_folder()
        lock_path = self.path / OUTPUTS_LOCK
        if lock_path.is_symlink():
            raise UserError(
                f"{lock_path} is a symbolic link; kdlab writes only regular files, never through a link: "
                f"remove the link, or choose another {self.flag}"
            )
        with _folder_lock(self.path, OUTPUTS_LOCK, os.path.realpath(lock_path), self.wait):
            yield

    def _check_folder(self) -> None:
        path, flag = self.path, self.flag
        if path.is_symlink() and not path.exists():
            raise UserError(
                f"{flag} {path} is a symbolic link that leads nowhere (dangling, or a loop): remove it, or "
                f"choose another {flag}"
            )
        if not path.exists():
            _check_creatable(path, flag)
        elif not path.is_dir():
            kind = "a file" if path.is_file() else "not a folder"
            raise UserError(f"{flag} {path} is {kind}: name a folder (it is created if missing)")
        elif not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {path} is not writable: choose a folder you can write")

    def _check_target(self, name: str, manifest: dict[str, Any], data: bytes | None) -> None:
        relative = PurePosixPath(name)
        if (
            relative.is_absolute()
            or ".." in relative.parts
            or relative.name in (OUTPUTS_MANIFEST, OUTPUTS_LOCK)
        ):
            raise ValueError(f"not a name kdlab writes in an output folder: {name!r}")
        fix = f"move it away, or choose another {self.flag}"
        folder = self.path
        for part in relative.parts if name.endswith("/") else relative.parts[:-1]:
            folder = folder / part
            if folder.is_symlink():
                raise UserError(
                    f"{folder} is a symbolic link; kdlab writes only real files and folders, never through "
                    f"a link: {fix}"
                )
            if folder.exists() and not folder.is_dir():
                raise UserError(f"{folder} is a file where kdlab puts a folder of its outputs: {fix}")
        if name.endswith("/"):
            return
        target = self.path / relative
        refusal = not_a_regular_file(target)
        if refusal:
            raise UserError(
                f"{target} {refusal}; kdlab writes only regular files, never through a link: {fix}"
            )
        if not target.exists() or (data is not None and _holds(target, data)):
            return
        entry = manifest.get(name)
        if entry is None:
            raise UserError(
                f"{target} exists and kdlab did not write it (it is not listed in {OUTPUTS_MANIFEST}), and "
                f"kdlab overwrites only its own outputs: {fix}"
            )
        if file_sha256(target) != entry["sha256"]:
            raise UserError(
                f"{target} has changed since kdlab wrote it (its SHA-256 is not the one in {OUTPUTS_MANIFEST}), "
                f"and kdlab does not overwrite your edits: {fix}"
            )

    def listed(self) -> dict[str, Any]:
        """The files kdlab wrote here, ``{relative name: {"sha256", "kind"}}`` (the manifest)."""
        return self._manifest()

    def _manifest(self) -> dict[str, Any]:
        """``{relative name: {"sha256", "kind"}}`` from the manifest; empty when there is none."""
        path = self.manifest_path
        refusal = not_a_regular_file(path)
        if refusal:
            raise UserError(
                f"{path} {refusal}, not kdlab's list of its outputs: move it away, or choose another {self.flag}"
            )
        if not path.exists():
            return {}
        document = _read_json(path, limit=_MANIFEST_LIMIT)
        files = document.get("files") if isinstance(document, dict) else None
        valid = (
            isinstance(files, dict)
            and document.get("format") == OUTPUTS_FORMAT
            and all(
                isinstance(entry, dict) and isinstance(entry.get("sha256"), str) for entry in files.values()
            )
        )
        if not valid:
            raise UserError(
                f"{path} is not a list of outputs kdlab wrote (damaged, or not kdlab's): move it away (kdlab "
                f"then takes every file in {self.path} for yours), or choose another {self.flag}"
            )
        return dict(files)

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        present = {name: entry for name, entry in sorted(manifest.items()) if (self.path / name).is_file()}
        atomic_write_text(self.manifest_path, json_text({"format": OUTPUTS_FORMAT, "files": present}))

    def _make_parents(self, name: str) -> Path:
        """Create the subfolders on ``name``'s way (checked real folders or absent); its full path."""
        folder = self.path
        for part in PurePosixPath(name).parts[:-1]:
            folder = folder / part
            with contextlib.suppress(FileExistsError):
                folder.mkdir()
        return self.path / name


def read_regular_file(path: Path) -> bytes:
    """:func:`read_regular`, with a missing or unreadable file as a one-line UserError too."""
    try:
        return read_regular(path)
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror})") from None


def _holds(path: Path, data: bytes) -> bool:
    """Whether the regular file ``path`` holds exactly ``data``."""
    return path.stat().st_size == len(data) and read_regular_file(path) == data


def read_user_file(path: Path, flag: str, limit: int = 1 << 24) -> tuple[str, os.stat_result]:
    """The UTF-8 text and ``lstat`` of a file of the user's that kdlab is asked to rewrite in place
    (``--readme``); a one-line UserError unless it is a regular file (not a link, FIFO or device)
    with a single name (no other hard link), that kdlab may replace (file and folder writable)."""
    refusal = not_a_regular_file(path)
    if refusal:
        raise UserError(
            f"{flag} {path} {refusal}; kdlab rewrites only a regular file in place, never through a link: "
            "pass the file itself"
        )
    if not path.exists():
        raise UserError(f"{flag} {path} does not exist: pass the file to rewrite")
    status = os.lstat(path)
    if status.st_nlink > 1:
        raise UserError(
            f"{flag} {path} has {status.st_nlink} hard links, and rewriting it would leave the others as they "
            "are: pass a file with one name"
        )
    folder = path.absolute().parent
    if not os.access(path, os.W_OK) or not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} {path} cannot be rewritten (kdlab replaces it through a temporary file in {folder}, which "
            "must be writable, as must the file): fix the permissions, or pass another file"
        )
    if status.st_size > limit:
        raise UserError(f"{flag} {path} is larger than {limit >> 20} MiB: pass the file to rewrite")
    try:
        return read_regular_file(path).decode("utf-8"), status
    except UnicodeDecodeError:
        raise UserError(f"{flag} {path} is not UTF-8 text: pass the file to rewrite") from None


def rewrite_user_file(path: Path, before: str, after: str, flag: str) -> None:
    """Replace the text ``before`` of the user's file ``path`` by ``after``, atomically, in place: the
    same checks as :func:`read_user_file`, then a temporary file with the file's mode (and owner)
    renamed over it; refused if the file changed since it was read as ``before``."""
    text, status = read_user_file(path, flag)
    if text != before:
        raise UserError(f"{flag} {path} changed while kdlab ran: run the command again")
    _atomic_write(path, lambda handle: handle.write(after.encode()), mode="wb", like=status)


def _read_json(
    path: Path, line: bytes | None = None, limit: int = RUN_FILE_MAX_BYTES, follow_links: bool = True
) -> Any:
    """The JSON value in ``path`` (or in one ``line`` of it); None when it cannot be read or parsed,
    or is over ``limit`` bytes. A FIFO, socket, device or folder: :class:`NotARegularFile`."""
    try:
        data = line if line is not None else read_regular(path, limit, follow_links, _RUN_FILE_FIX)
        return json.loads(data) if len(data) <= limit else None
    except NotARegularFile:
        raise
    except (OSError, ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


_RUN_FILE_FIX = "remove it (kdlab writes that name itself), or choose another run folder"


def _not_kdlabs(folder: Path, name: str, mode: int, wanted: str) -> str:
    return (
        f"--out {folder}: {name} is {file_kind(mode)}, not {wanted}; kdlab reads and writes only its own "
        "regular files in a run folder: remove it or choose another --out"
    )


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _check_creatable(path: Path, flag: str = "--out") -> None:
    """A UserError when ``path`` (missing) cannot be created: its nearest existing parent is not a
    writable folder, or a missing part of it is a symbolic link that leads nowhere."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():
            raise UserError(
                f"{flag} {path} cannot be created: {parent} is a symbolic link that leads nowhere (dangling, "
                f"or a loop); remove it, or choose another {flag}"
            )
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(
            f"{flag} {path} cannot be created: {parent} is a file, not a folder; choose another {flag}"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} {path} cannot be created: {parent} is not writable; choose a folder you can write"
        )
    # Names the file system cannot hold, refused before any of the missing folders is made.
    longest = max(path.absolute().relative_to(parent).parts, key=len, default="")
    name_max = os.pathconf(parent, "PC_NAME_MAX")
    if len(os.fsencode(longest)) > name_max or len(os.fsencode(path.absolute())) >= os.pathconf(
        parent, "PC_PATH_MAX"
    ):
        shown = str(path) if len(str(path)) <= 120 else f"{str(path)[:60]}...{str(path)[-40:]}"
        raise UserError(
            f"{flag} {shown} cannot be created: its names are too long for the file system (at most "
            f"{name_max} bytes per name); choose a shorter {flag}"
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
    # O_NONBLOCK: a FIFO there must not block the open; O_NOFOLLOW: never through a link.
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    while True:
        try:
            fd = os.open(lock_path, flags, 0o666)
        except OSError as error:
            with contextlib.suppress(OSError):
                mode = lock_path.lstat().st_mode
                if not stat.S_ISREG(mode):  # ELOOP: a link; ENXIO: a socket; EISDIR: a folder
                    raise UserError(_not_kdlabs(folder, LOCK_NAME, mode, "a regular file")) from None
            raise UserError(
                f"cannot write into --out {folder} ({error.strerror}): choose a folder you can write"
            ) from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # a FIFO or a device: opened without blocking, now refused
            os.close(fd)
            raise UserError(_not_kdlabs(folder, LOCK_NAME, mode, "a regular file"))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
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
                f"--out {folder} holds a file {lock_path.name} that kdlab did not write (kdlab's holds a process id "
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
    """A run folder -> its ``checkpoints/last.pt`` (it must have finished, not diverged); a file ->
    itself. A diverged run has no final weights: its ``last.pt`` is the last finite epoch's, which a
    teacher, ``analyze``, ``eval`` or ``export`` reads only when named as a file."""
    path = Path(spec)
    if path.is_dir():
        run = RunFolder(path)
        if not run.last_checkpoint.exists():
            raise UserError(
                f"{path} holds no checkpoints/last.pt: it is not a kdlab run folder, or it never started"
            )
        if not run.is_finished():
            raise UserError(
                f"run {path} is unfinished (no summary.json): finish it with `kdlab train ... --out {path} "
                "--resume`, or pass a checkpoint file explicitly"
            )
        summary = run.summary()
        if summary.get("status") == DIVERGED:
            raise UserError(
                f"run {path} diverged (its summary.json: last finite epoch {summary.get('last_finite_epoch')}), "
                f"so it has no final weights: train it again with other settings, or pass "
                f"{run.last_checkpoint} to read its last finite epoch"
            )
        return run.last_checkpoint
    if not path.exists():
        raise UserError(f"{path} does not exist: pass a finished run folder or a checkpoint file")
    return path

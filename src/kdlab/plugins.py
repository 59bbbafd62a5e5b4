"""Plugins: your own models, datasets and losses, imported before kdlab resolves any name.

A plugin is a Python module you can import (``my_package.kd``) or a ``.py`` file, which registers
entries with the decorators kdlab uses for its own::

    from kdlab.models import MODELS             # @MODELS.register("my-net") on a factory
    from kdlab.data import DATASETS             # @DATASETS.register("my-data") on a loader
    from kdlab.losses import register_loss      # @register_loss("rkl", label="RKL", params=("tau",))
    from kdlab.config import declare_hyperparameter   # a new kd.NAME for your loss

It enters through ``--import MODULE_OR_FILE`` (repeatable, on every command) or ``imports: [...]`` in
any YAML document kdlab reads (a ``--config`` file, a recipe, a setting). A run folder records its
imports in ``config.yaml`` (files as absolute paths, with each plugin's SHA-256 in ``run_info``), so
every later reader of the run (``--resume``, a sweep's worker processes, ``kdlab report``,
``analyze``, ``export``, a student reading it as its teacher) imports them again first.

Safe by construction: kdlab imports the modules and files you name, as Python would; no value in a
YAML document is ever executed or turned into an object. Each file is imported once per process,
under a module name derived from its absolute path, so a plugin's registrations never run twice.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import stat
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path

from kdlab.errors import UserError, first_line

_IMPORTED: dict[str, str] = {}  # resolved spec -> module name (imported in this process)


def is_file_spec(spec: str) -> bool:
    """A file path (``./my_models.py``, ``plugins/losses.py``) rather than a module name."""
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def resolve_import(spec: str, base: str | Path | None = None) -> str:
    """``spec`` as recorded: a file as its absolute path (relative paths are taken from ``base``, the
    folder of the YAML that names it, or the working folder), a module name as given."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(
            f"imports: {spec!r} is not a module name or a .py file: name one, e.g. --import ./my_models.py"
        )
    spec = spec.strip()
    if not is_file_spec(spec):
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = Path(base or Path.cwd()) / path
    return os.path.abspath(path)


def import_plugins(specs: Iterable[str], base: str | Path | None = None) -> list[str]:
    """Import each module or file of ``specs`` (once per process); returns them as recorded
    (:func:`resolve_import`). A UserError, one line, for a spec that cannot be imported."""
    resolved = []
    for spec in specs:
        spec = resolve_import(spec, base)
        if spec not in _IMPORTED:
            _IMPORTED[spec] = _import_file(spec) if is_file_spec(spec) else _import_module(spec)
        resolved.append(spec)
    return resolved


def imported() -> list[str]:
    """The plugins this process imported, in order."""
    return list(_IMPORTED)


def _import_module(name: str) -> str:
    if not all(part.isidentifier() for part in name.split(".")):
        raise UserError(
            f"--import {name}: not a module name or a .py file: pass a module (my_package.losses) or a file (./losses.py)"
        )
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and (name == error.name or name.startswith(error.name + ".")):
            local = Path(name.replace(".", "/") + ".py")
            hint = (
                f"pass the file: --import ./{local}" if local.is_file() else "install it, or pass a .py file"
            )
            raise UserError(f"--import {name}: no module named {error.name!r}: {hint}") from None
        raise _failed(name, error) from None
    except BaseException as error:  # noqa: BLE001 - the user's code may raise anything, SystemExit too
        if isinstance(error, KeyboardInterrupt):
            raise
        raise _failed(name, error) from None
    return name


def _import_file(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError as error:
        raise UserError(
            f"--import {path}: {error.strerror.lower()}: check the path of the plugin file"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"--import {path} is not a regular file: name a .py file (or a module)")
    if not path.endswith(".py"):
        raise UserError(f"--import {path} is not a .py file: name a Python file (or a module)")
    digest = hashlib.sha256(path.encode()).hexdigest()[:12]
    name = f"kdlab_plugin_{''.join(c if c.isalnum() else '_' for c in Path(path).stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"--import {path}: Python cannot import this file: name a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look the module up
    folder = str(Path(path).parent)
    if folder not in sys.path:  # as for a script: the plugin may import the modules beside it
        sys.path.append(folder)
    try:
        spec.loader.exec_module(module)
    except BaseException as error:  # noqa: BLE001 - the user's code may raise anything, SystemExit too
        del sys.modules[name]
        if isinstance(error, KeyboardInterrupt):
            raise
        raise _failed(path, error) from None
    return name


def _failed(spec: str, error: BaseException) -> UserError:
    """One line for an exception raised while importing the plugin: its type, message and the
    plugin's line that raised it."""
    own = str(Path(__file__).parent)
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith(("<", own))
    ]
    where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
    return UserError(
        f"--import {spec}: importing it failed{where}: {type(error).__name__}: {first_line(error)}; fix the plugin"
    )


def plugin_hashes(specs: Iterable[str]) -> dict[str, str | None]:
    """``{spec: digest}`` of each plugin, recorded with every run so that a plugin changed after the
    run can be told apart; None for a module without a file.

    The digest is the SHA-256 of the plugin's file (a module: its ``__file__``) when that file is all
    of its own code that is loaded. A plugin that imported modules of its own (a file plugin: modules
    under its folder, which it imports as a script would; a module of a package: the package's other
    loaded modules) gets ``FILE+N files:LIST``: its file's SHA-256, then the count and the SHA-256 of
    the list of them all (each file's path relative to the plugin's folder and its SHA-256), so that a
    change to a helper is a change of the plugin. Other plugins, kdlab and installed packages are never
    counted. A helper imported only later (inside a function) may be loaded in one process and not in
    another: :func:`same_plugin` then compares the plugin's files alone."""
    hashes: dict[str, str | None] = {}
    for spec in specs:
        main = _plugin_file(spec)
        try:
            hashes[spec] = _digest(main, *_own_modules(spec, main)) if main else None
        except OSError:
            hashes[spec] = None
    return hashes


def same_plugin(then: str, now: str) -> bool:
    """Whether two digests of :func:`plugin_hashes` are of the same plugin: equal when both list the
    helpers; the plugin's own file's SHA-256 when either does not (a run recorded before helpers
    counted, or a helper not yet loaded in one of the two processes)."""
    if HELPERS in then and HELPERS in now:
        return then == now
    return then.partition("+")[0] == now.partition("+")[0]


HELPERS = " files:"  # in a digest that lists the plugin's helper modules


def _plugin_file(spec: str) -> Path | None:
    path = spec if is_file_spec(spec) else getattr(sys.modules.get(spec), "__file__", None)
    return Path(path).resolve() if path else None


def _digest(main: Path, root: Path, helpers: list[Path]) -> str:
    own = hashlib.sha256(main.read_bytes()).hexdigest()
    if not helpers:
        return own
    listing = "".join(
        f"{path.relative_to(root).as_posix()}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n"
        for path in sorted([main, *helpers])
    )
    return f"{own}+{len(helpers) + 1}{HELPERS}{hashlib.sha256(listing.encode()).hexdigest()}"


def _own_modules(spec: str, main: Path) -> tuple[Path, list[Path]]:
    """``(root, files)``: the plugin's own folder (a module in a package: the top package's folder)
    and the files of the modules loaded from under it, other than ``main``: not kdlab's, not an
    installed package's, not another plugin file's (each of those is recorded on its own), not the
    script Python runs (``__main__``)."""
    if is_file_spec(spec):
        root = main.parent
    else:
        top = sys.modules.get(spec.partition(".")[0])
        folders = list(getattr(top, "__path__", None) or [])
        if not folders:
            return main.parent, []  # a module of its own, not in a package: its file is its code
        root = Path(folders[0]).resolve()
    if root not in main.parents:
        return main.parent, []
    key = (root, main, len(sys.modules))  # modules are loaded at import: one scan per plugin, mostly
    if key not in _OWN_MODULES:
        _OWN_MODULES[key] = _modules_under(root, main)
    return root, _OWN_MODULES[key]


_OWN_MODULES: dict[tuple[Path, Path, int], list[Path]] = {}


def _modules_under(root: Path, main: Path) -> list[Path]:
    installed = _installed_folders()
    excluded = {Path(__file__).resolve().parent, *(Path(folder).resolve() for folder in installed)}
    prefixes = tuple(f"{folder}{os.sep}" for folder in installed)  # skipped before resolving
    found = set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not path.endswith(".py") or path.startswith(prefixes):
            continue
        if not os.path.isabs(path) or not os.path.isfile(path):  # torch._classes: "_classes.py"
            continue
        if name == "__main__" or name.startswith("kdlab_plugin_"):
            continue
        resolved = Path(path).resolve()
        if resolved != main and root in resolved.parents and not excluded.intersection(resolved.parents):
            found.add(resolved)
    return sorted(found)


def _installed_folders() -> list[str]:
    import site
    import sysconfig

    folders = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
    folders.update(value for value in sysconfig.get_paths().values() if value)
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        folders.add(site.getusersitepackages())
    return sorted(folders)

"""User-facing errors: a bad input is reported as one line, exit code 2, no traceback."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable
from typing import Any


class UserError(ValueError):
    """A mistake in the user's input. The message names the problem and the fix."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest valid name, or '' when none is close."""
    close = difflib.get_close_matches(value, list(choices), n=2, cutoff=0.5)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 60
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxtuple = 2, 4, 4, 4


def shown(value: Any) -> str:
    """``repr(value)`` bounded to about 60 characters whatever its size or depth, for error messages
    that echo what the user gave (a YAML alias bomb must not become a gigabyte-long line)."""
    text = _SHOWN.repr(value)
    return text if len(text) <= 80 else text[:60] + "..."


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, at most ``limit`` characters (its type's name when
    the message is empty): what a one-line error quotes of a library's multi-line message."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


class RunInterrupted(Exception):
    """SIGTERM or SIGINT stopped a run after it saved a checkpoint; the CLI exits ``128 + signal``.

    Not a KeyboardInterrupt: typer would turn that into a silent exit 130 before ``kdlab.cli.main``
    could print where the checkpoint is.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message, signum)  # both in args: a sweep worker's exception is pickled back
        self.message, self.signum, self.exit_code = message, signum, 128 + signum

    def __str__(self) -> str:
        return self.message

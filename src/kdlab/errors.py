"""User-facing errors: a bad input is reported as one line, exit code 2, no traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """A mistake in the user's input. The message names the problem and the fix."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest valid name, or '' when none is close."""
    close = difflib.get_close_matches(value, list(choices), n=2, cutoff=0.5)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


class RunInterrupted(Exception):
    """SIGTERM or SIGINT stopped a run after it saved a checkpoint; the CLI exits ``128 + signal``.

    Not a KeyboardInterrupt: typer would turn that into a silent exit 130 before ``kdlab.cli.main``
    could print where the checkpoint is.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum

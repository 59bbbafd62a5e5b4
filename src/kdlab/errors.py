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

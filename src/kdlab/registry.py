"""One small generic registry: models, losses and datasets are all found by name here."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Generic, TypeVar

from kdlab.errors import UserError, did_you_mean

T = TypeVar("T")


def _key(name: str) -> str:
    """How names are compared: case-insensitively (``WRN-16-2`` finds ``wrn-16-2``), for storing and
    looking up alike, so that a name registered as ``Foo`` is found as ``Foo`` and as ``foo``."""
    return name.casefold()


class Registry(Generic[T]):
    """Maps names (or name patterns such as ``wrn-{depth}-{width}``) to factories.

    ``register("resnet20")`` registers one exact name; ``register("wrn-{depth}-{width}",
    examples=[...])`` registers a family whose integer fields are parsed from the name and passed to
    the factory as keyword arguments. Names are kept as registered and compared case-insensitively.
    A second registration of a name (or of a name an existing family already answers) is refused
    unless ``replace=True``: a plugin cannot silently swap out one of kdlab's entries.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._exact: dict[str, tuple[str, Callable[..., T]]] = {}  # key -> (name as registered, factory)
        self._patterns: list[tuple[re.Pattern[str], str, Callable[..., T], list[str]]] = []

    def register(
        self, name: str, examples: list[str] | None = None, replace: bool = False
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(
                f"a {self.kind} name must be a non-empty string without surrounding spaces: {name!r}"
            )

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if "{" in name:
                regex = re.escape(name)
                for field in re.findall(r"\{(\w+)\}", name):
                    regex = regex.replace(re.escape("{" + field + "}"), f"(?P<{field}>\\d+)")
                same = [entry for entry in self._patterns if _key(entry[1]) == _key(name)]
                if same and not replace:
                    raise ValueError(self._taken(name, same[0][1]))
                self._patterns = [entry for entry in self._patterns if entry not in same]
                compiled = re.compile(f"^{regex}$", re.IGNORECASE)
                self._patterns.append((compiled, name, factory, list(examples or [])))
            else:
                taken = self._exact.get(_key(name), (None,))[0] or self._family_of(name)
                if taken is not None and not replace:
                    raise ValueError(self._taken(name, taken))
                self._exact[_key(name)] = (name, factory)
            return factory

        return decorator

    def _taken(self, name: str, existing: str) -> str:
        return (
            f"{self.kind} '{name}' is already registered (as '{existing}'): choose another name, or pass "
            "replace=True to replace it on purpose"
        )

    def _family_of(self, name: str) -> str | None:
        return next((pattern for regex, pattern, _, _ in self._patterns if regex.match(name)), None)

    def names(self) -> list[str]:
        """Exact names plus the examples given for each pattern (what a user can type)."""
        listed = [name for name, _ in self._exact.values()]
        for _, _, _, examples in self._patterns:
            listed.extend(examples)
        return sorted(set(listed))

    def registered(self) -> list[str]:
        """Exact names in registration order, as registered."""
        return [name for name, _ in self._exact.values()]

    def unregister(self, name: str) -> None:
        """Remove an exact name or a pattern (for tests and plugins that register a temporary entry)."""
        self._exact.pop(_key(name), None)
        self._patterns = [entry for entry in self._patterns if _key(entry[1]) != _key(name)]

    def patterns(self) -> list[str]:
        return [pattern for _, pattern, _, _ in self._patterns]

    def __contains__(self, name: str) -> bool:
        return self._lookup(name) is not None

    def canonical(self, name: str) -> str:
        """The name as registered (``Foo`` for ``foo``); pattern names are returned as given."""
        entry = self._exact.get(_key(name))
        return entry[0] if entry is not None else name

    def _lookup(self, name: str) -> tuple[Callable[..., T], dict[str, int]] | None:
        if not isinstance(name, str):
            return None
        entry = self._exact.get(_key(name))
        if entry is not None:
            return entry[1], {}
        for regex, pattern, factory, _ in self._patterns:
            match = regex.match(name)
            if match:
                fields = match.groupdict()
                long = next((field for field, digits in fields.items() if len(digits) > 30), None)
                if long is not None:  # int() refuses 4,300 digits; no size needs more than 30
                    raise UserError(
                        f"{self.kind} '{name[:40]}...': its {long} has {len(fields[long])} digits: "
                        f"give {pattern} fields of a sensible size"
                    )
                return factory, {k: int(v) for k, v in fields.items()}
        return None

    def resolve(self, name: str) -> tuple[Callable[..., T], dict[str, int]]:
        """``(factory, pattern fields)`` for ``name``; a UserError naming valid names otherwise."""
        found = self._lookup(name)
        if found is None:
            valid = self.names()
            shown = ", ".join(valid[:20]) + (", ..." if len(valid) > 20 else "")
            families = f"; families: {', '.join(self.patterns())}" if self._patterns else ""
            raise UserError(
                f"unknown {self.kind} '{str(name)[:80]}'{did_you_mean(str(name), valid)}: choose one of "
                f"{shown}{families} (or register your own and pass --import FILE)"
            )
        return found

    def get(self, name: str) -> Callable[..., T]:
        """The factory for ``name`` with pattern fields bound."""
        factory, fields = self.resolve(name)
        if not fields:
            return factory
        return lambda *args, **kwargs: factory(*args, **fields, **kwargs)

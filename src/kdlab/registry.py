"""One small generic registry: models, losses and datasets are all found by name here."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Generic, TypeVar

from kdlab.errors import UserError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names (or name patterns such as ``wrn-{depth}-{width}``) to factories.

    ``register("resnet20")`` registers one exact name; ``register("wrn-{depth}-{width}",
    examples=[...])`` registers a family whose integer fields are parsed from the name
    and passed to the factory as keyword arguments.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._exact: dict[str, Callable[..., T]] = {}
        self._patterns: list[tuple[re.Pattern[str], str, Callable[..., T], list[str]]] = []

    def register(
        self, name: str, examples: list[str] | None = None
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if "{" in name:
                regex = re.escape(name)
                for field in re.findall(r"\{(\w+)\}", name):
                    regex = regex.replace(re.escape("{" + field + "}"), f"(?P<{field}>\\d+)")
                self._patterns.append((re.compile(f"^{regex}$"), name, factory, list(examples or [])))
            else:
                self._exact[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        """Exact names plus the examples given for each pattern (what a user can type)."""
        listed = list(self._exact)
        for _, _, _, examples in self._patterns:
            listed.extend(examples)
        return sorted(set(listed))

    def registered(self) -> list[str]:
        """Exact names in registration order."""
        return list(self._exact)

    def unregister(self, name: str) -> None:
        """Remove an exact name (for tests that register a temporary entry)."""
        self._exact.pop(name.lower(), None)

    def patterns(self) -> list[str]:
        return [pattern for _, pattern, _, _ in self._patterns]

    def __contains__(self, name: str) -> bool:
        return self._lookup(name) is not None

    def _lookup(self, name: str) -> tuple[Callable[..., T], dict[str, int]] | None:
        key = name.lower()
        if key in self._exact:
            return self._exact[key], {}
        for regex, _, factory, _ in self._patterns:
            match = regex.match(key)
            if match:
                return factory, {k: int(v) for k, v in match.groupdict().items()}
        return None

    def resolve(self, name: str) -> tuple[Callable[..., T], dict[str, int]]:
        """``(factory, pattern fields)`` for ``name``; a UserError naming valid names otherwise."""
        found = self._lookup(name)
        if found is None:
            valid = self.names()
            shown = ", ".join(valid[:20]) + (", ..." if len(valid) > 20 else "")
            families = f"; families: {', '.join(self.patterns())}" if self._patterns else ""
            raise UserError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, valid)}: choose one of {shown}{families}"
            )
        return found

    def get(self, name: str) -> Callable[..., T]:
        """The factory for ``name`` with pattern fields bound."""
        factory, fields = self.resolve(name)
        if not fields:
            return factory
        return lambda *args, **kwargs: factory(*args, **fields, **kwargs)

"""kdlab: knowledge distillation with the losses of Kim et al. (IJCAI 2021), done exactly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_student"]

if TYPE_CHECKING:
    from kdlab.export import load_student


def __getattr__(name: str) -> Any:
    # Lazy: `import kdlab` stays cheap (no torch) until kdlab.load_student is used.
    if name == "load_student":
        from kdlab.export import load_student

        return load_student
    raise AttributeError(f"module 'kdlab' has no attribute {name!r}")

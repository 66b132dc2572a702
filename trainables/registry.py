"""Registries for every plug-in kind.

One registry per kind; items register with a decorator at import time. Duplicate names and
unknown names raise at once, the latter listing the valid names (timm / detectron2 style).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Raised for an unknown or duplicate plug-in name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry:
    """A name -> object mapping for one plug-in kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, object] = {}

    def register(self, name: str) -> Callable[[T], T]:
        if not name or not name.replace("_", "").isalnum() or name.lower() != name:
            raise ValueError(f"{self.kind} name {name!r} must be lower_snake_case")

        def deco(obj: T) -> T:
            if name in self._items:
                raise RegistryError(
                    f"duplicate {self.kind} {name!r}: already registered by "
                    f"{_where(self._items[name])}, now again by {_where(obj)}"
                )
            self._items[name] = obj
            if isinstance(obj, type) and hasattr(obj, "plugin_kind"):  # Configurable: kind and name label errors
                obj.plugin_kind, obj.plugin_name = self.kind, name
            return obj

        return deco

    def get(self, name: str):
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; valid {self.kind} names: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def summary(self, name: str) -> str:
        """First docstring line of an item, for `mtl list`."""
        doc = (getattr(self.get(name), "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""


def _where(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


DATASETS = Registry("dataset")
TASKS = Registry("task")
BACKBONES = Registry("backbone")
HEADS = Registry("head")
ARCHITECTURES = Registry("architecture")
BALANCERS = Registry("balancer")
REGULARISERS = Registry("regulariser")

register_dataset = DATASETS.register
register_task = TASKS.register
register_backbone = BACKBONES.register
register_head = HEADS.register
register_architecture = ARCHITECTURES.register
register_balancer = BALANCERS.register
register_regulariser = REGULARISERS.register

REGISTRIES: Dict[str, Registry] = {
    r.kind: r for r in (DATASETS, TASKS, BACKBONES, HEADS, ARCHITECTURES, BALANCERS, REGULARISERS)
}

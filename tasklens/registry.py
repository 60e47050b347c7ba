"""One registry per kind of plug-in: scorers, metrics, selections, interventions.

Every name a user can type (on the CLI, in a run's TOML, in Python) is looked up
in one of these registries, so a plug-in registered in the user's own module
works by name everywhere. Plug-ins arrive three ways:

- ``register_*`` in Python (a decorator), e.g. ``@register_metric("my_metric")``;
- ``plugins = ["my_module"]`` in a run's TOML, or ``--plugin my_module`` on the CLI
  (`load_plugins` imports the modules, which register on import);
- a package entry point in the group ``tasklens.plugins`` naming a module, loaded
  the first time a name is not found.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from tasklens.errors import TasklensError

T = TypeVar("T")
ENTRY_POINT_GROUP = "tasklens.plugins"
_entry_points_loaded = False


class Registry(Generic[T]):
    """Named plug-ins of one kind.

    Args:
        kind: what the plug-ins are (``"scorer"``, ``"metric"``...), used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | T | None = None, obj: T | None = None, *, overwrite: bool = False):
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        ``name`` defaults to the object's ``name`` attribute (scorer classes have
        one) or its ``__name__``; ``register(obj)`` registers under that default.
        """
        if name is not None and not isinstance(name, str):
            name, obj = None, name

        def add(item: T) -> T:
            key = name or getattr(item, "name", None) or getattr(item, "__name__", None)
            if not isinstance(key, str) or not key:
                raise TasklensError(f"Cannot register {item!r} as a {self.kind}: give it a name")
            if key in self._items and self._items[key] is not item and not overwrite:
                raise TasklensError(
                    f"A {self.kind} named {key!r} is already registered; choose another name "
                    "or pass overwrite=True"
                )
            self._items[key] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """The plug-in called ``name``; unknown names list the known ones."""
        if name not in self._items:
            _load_entry_points()
        if name not in self._items:
            raise TasklensError(
                f"Unknown {self.kind} {name!r}; choose one of {self.names()} "
                f"(or register your own with tasklens.register_{self.kind})"
            )
        return self._items[name]

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        _load_entry_points()
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        """(name, plug-in) pairs, in registration order."""
        return [(name, self._items[name]) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def load_plugins(modules: Iterable[str]) -> list[str]:
    """Import modules that register plug-ins (e.g. a run's ``plugins`` list).

    Returns:
        The modules imported.
    """
    loaded = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise TasklensError(
                f"Could not import plug-in module {module!r} ({error}); give an importable module "
                "name (on the Python path, e.g. a file my_plugins.py in the working folder)"
            ) from error
        loaded.append(module)
    return loaded


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        point.load()


def describe(registry: Registry[Any], doc: Callable[[Any], str] | None = None) -> dict[str, str]:
    """Name -> first docstring line of every plug-in (for ``tasklens list``)."""
    doc = doc or (lambda item: (getattr(item, "__doc__", "") or "").strip().split("\n")[0])
    return {name: doc(registry.get(name)) for name in registry.names()}

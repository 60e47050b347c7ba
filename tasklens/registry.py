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
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from tasklens.errors import TasklensError, TasklensWarning

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

    Each is a module name (found on the Python path or in the working folder) or the path of
    a ``.py`` file, imported under its file name.

    Returns:
        The modules imported.
    """
    loaded = []
    for module in modules:
        if module.endswith(".py") or "/" in module or os.sep in module:
            _import_file(module)
        else:
            _import_module(module)
        loaded.append(module)
    return loaded


def _import_module(module: str) -> None:
    working = os.getcwd()
    if working not in sys.path and "" not in sys.path:
        # the console script does not put the working folder on the path as `python -m` does
        sys.path.append(working)
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name and module.split(".")[0] != error.name.split(".")[0]:
            raise _failed(module, error) from error
        raise TasklensError(
            f"Could not import plug-in module {module!r}: no module of that name on the Python path or in "
            "the working folder; give an importable module name (e.g. my_plugins for a file my_plugins.py "
            "in the working folder) or the path of a .py file"
        ) from error
    except _IMPORT_FAILURES as error:
        raise _failed(module, error) from error


def _import_file(module: str) -> None:
    path = Path(module)
    if path.suffix != ".py" or not path.is_file():
        problem = "is not a .py file" if path.exists() else "does not exist"
        raise TasklensError(
            f"Plug-in {module!r} {problem}; give the path of a .py file or an importable module name"
        )
    name = path.stem
    if not name.isidentifier():
        raise TasklensError(
            f"Plug-in file {module!r} cannot be imported as a module; rename it to a valid Python name "
            "(letters, digits, underscores, e.g. my_plugins.py)"
        )
    resolved = path.resolve()
    present = sys.modules.get(name)
    if present is not None:
        if Path(getattr(present, "__file__", "") or "").resolve() == resolved:
            return
        raise TasklensError(
            f"Plug-in file {module!r} is named like the module {name!r} already imported; rename the file"
        )
    spec = importlib.util.spec_from_file_location(name, resolved)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    try:
        spec.loader.exec_module(loaded)
    except _IMPORT_FAILURES as error:
        del sys.modules[name]
        raise _failed(module, error) from error


#: what a plug-in's import may raise without ending tasklens: ``sys.exit()`` in a module (a
#: script's ``main()`` run on import) raises SystemExit, which would end the process silently
_IMPORT_FAILURES = (Exception, SystemExit)


def _failed(module: str, error: BaseException) -> TasklensError:
    where, detail = "", str(error)
    if isinstance(error, SyntaxError):
        where, detail = f" at {error.filename}:{error.lineno}", error.msg
    elif isinstance(error, SystemExit):
        detail = f"it called sys.exit({error.code!r}) while being imported"
    return TasklensError(
        f"Plug-in module {module!r} failed while importing{where} ({type(error).__name__}: {detail}); "
        "fix the module or leave it out"
    )


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except _IMPORT_FAILURES as error:
            package = f" of package {point.dist.name!r}" if point.dist is not None else ""
            warnings.warn(
                f"Skipped the {ENTRY_POINT_GROUP} entry point {point.name!r} = {point.value!r}{package}: "
                f"it failed to load ({type(error).__name__}: {error}); fix or uninstall that package",
                TasklensWarning,
                stacklevel=2,
            )


def describe(registry: Registry[Any], doc: Callable[[Any], str] | None = None) -> dict[str, str]:
    """Name -> first docstring line of every plug-in (for ``tasklens list``)."""
    doc = doc or (lambda item: (getattr(item, "__doc__", "") or "").strip().split("\n")[0])
    return {name: doc(registry.get(name)) for name in registry.names()}

"""An analysis's output folder: tables (CSV + JSON), figures (PNG), findings and provenance.

Every file is written atomically, so an interrupted run leaves complete files
only; the folder remembers what it wrote (`OutputDir.written`), which a
`tasklens.runs.RunFolder` turns into the run's manifest. A `Ledger` lists the
files tasklens wrote into the folder, so a file of the user's with the same
name as one tasklens writes is never overwritten.
"""

from __future__ import annotations

import io
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from tasklens._version import __version__
from tasklens.data.provenance import plain
from tasklens.errors import TasklensError
from tasklens.io import (
    MARKER,
    MARKER_KIND,
    atomic_write_bytes,
    atomic_write_text,
    file_sha256,
    read_marker,
    unchanged,
    write_json,
)

MANIFEST = MARKER


def command_line() -> str:
    """The command that is running, without machine paths (``tasklens locate -t x``)."""
    program = Path(sys.argv[0]).name if sys.argv else "python"
    if program in ("__main__.py", "-c", ""):
        program = "tasklens"
    return shlex.join([program, *sys.argv[1:]])


def inside(folder: Path, name: str) -> Path | None:
    """``folder / name`` if ``name`` is a plain relative path (no ``..``, not absolute) that stays
    inside ``folder`` once symlinks are resolved; otherwise None."""
    if not isinstance(name, str) or not name or "\\" in name:
        return None
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or str(pure) != name:
        return None
    path = folder / name
    return path if path.resolve().is_relative_to(folder.resolve()) else None


class Ledger:
    """The files tasklens wrote into a folder, by name, with their SHA-256.

    A name may be written when no file is there, or when the file there is one tasklens
    wrote (listed in ``owned``) and still has the recorded hash; anything else is the
    user's and refused. Each name is entered in ``pending`` (None until its hash is known)
    and ``save`` is called before the file is written, so the files of a run killed half
    way are still known as tasklens's. A file is hashed at the next `claim` after it was
    written, or (``later``: the caller writes it, when is not known) at `settle`.

    Args:
        folder: the folder the names are relative to.
        owned: name -> SHA-256 (or None) of the files tasklens wrote there before; None when
            another process writes (ranks other than 0 under torchrun): nothing is checked.
        pending: where the names being written are entered (part of what ``save`` writes).
        save: writes the record down.
        fix: the fix a refusal names.
    """

    def __init__(
        self,
        folder: Path,
        owned: dict[str, str | None] | None,
        pending: dict[str, str | None] | None = None,
        save: Callable[[], None] | None = None,
        fix: str = "move it away or choose another --out",
    ) -> None:
        self.folder = folder
        self.owned = owned
        self.pending = pending if pending is not None else {}
        self.save = save
        self.fix = fix
        self.claimed: list[str] = []
        self.later: set[str] = set()

    @classmethod
    def of_folder(cls, folder: Path) -> Ledger:
        """A standalone folder's ledger, kept in its ``manifest.json``."""
        file = folder / MANIFEST
        data: Any = {"kind": MARKER_KIND, "files": {}}
        if file.exists() or file.is_symlink():
            files = read_marker(folder)
            if files is None or not all(inside(folder, name) for name in files):
                raise TasklensError(
                    f"{str(file)!r} is not the list of files tasklens wrote into {str(folder)!r}; "
                    "choose another output folder"
                )
            data["files"] = files
        return cls(
            folder,
            data["files"],
            data["files"],
            lambda: write_json(file, data),
            "choose another output folder",
        )

    def check(self, name: str) -> Path:
        """The path of ``name``, if tasklens may write it; else a `TasklensError` naming the file."""
        path = inside(self.folder, name)
        if path is None:
            raise TasklensError(
                f"{name!r} is not a file name inside {str(self.folder)!r}; name the output plainly"
            )
        if self.owned is None or name in self.claimed or not (path.exists() or path.is_symlink()):
            return path
        if name not in self.owned or not unchanged(path, self.owned[name]):
            raise TasklensError(
                f"{str(path)!r} exists and tasklens did not write it (or it was changed since), so tasklens "
                f"will not overwrite it; {self.fix}"
            )
        return path

    def claim(self, name: str, later: bool = False) -> Path:
        """Check ``name`` (`check`) and enter it as being written now (``later``: at some
        point before `settle`); returns its path."""
        path = self.check(name)
        if self.owned is None:
            return path
        self._hash_written()
        if name not in self.claimed:
            self.claimed.append(name)
        if later:
            self.later.add(name)
        self.owned[name] = self.pending[name] = None
        if self.save is not None:
            self.save()
        return path

    def settle(self) -> None:
        """Enter the hashes of the claimed files, all written now, and save the record."""
        if self.owned is not None:
            self._hash_written(everything=True)
            if self.save is not None:
                self.save()

    def _hash_written(self, everything: bool = False) -> None:
        for name in self.claimed:
            path = self.folder / name
            if (
                (everything or name not in self.later)
                and self.pending.get(name) is None
                and unchanged(path, None)
            ):
                self.owned[name] = self.pending[name] = file_sha256(path)


class OutputDir:
    """A folder collecting one run's outputs.

    Args:
        path: the folder (created if missing).
        config: the run's parameters, saved as ``config.json`` with provenance when
            the run closes (`close`), so a failed run leaves no config claiming otherwise.
        write_config: write ``config.json`` on `close` (run folders keep their configs
            in the manifest instead).
        ledger: the files tasklens wrote there before (default: the folder's own
            ``manifest.json``); a file of the user's is never overwritten.
    """

    def __init__(
        self,
        path: str | Path,
        config: dict[str, Any],
        write_config: bool = True,
        ledger: Ledger | None = None,
    ) -> None:
        self.path = Path(path)
        self.ledger = ledger if ledger is not None else Ledger.of_folder(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.write_config = write_config
        self.findings: list[str] = []
        self.written: list[Path] = []
        self.timings: list[dict[str, Any]] = []

    def _target(self, name: str, later: bool = False) -> Path:
        """The path to write ``name`` to (refused if a file of the user's is there)."""
        path = self.ledger.claim(name, later)
        self.written.append(path)
        return path

    def provenance(self) -> dict[str, Any]:
        return {
            **plain(self.config),
            "tasklens_version": __version__,
            "python": platform.python_version(),
            "command": command_line(),
        }

    def file(self, name: str) -> Path:
        """The path of a file the caller then writes itself (e.g. `NeuronScores.save`), which
        belongs to the run; call it before writing (a file of the user's there is refused)."""
        return self._target(name, later=True)

    def json(self, name: str, data: Any) -> Path:
        """Write ``name.json``."""
        path = self._target(f"{name}.json")
        write_json(path, plain(data))
        return path

    def table(self, name: str, frame: pd.DataFrame, index: bool = True) -> pd.DataFrame:
        """Write ``name.csv`` and ``name.json``."""
        atomic_write_text(self._target(f"{name}.csv"), frame.to_csv(index=index))
        data = json.loads(
            frame.reset_index().to_json(orient="records") if index else frame.to_json(orient="records")
        )
        self.json(name, data)
        return frame

    def figure(self, name: str, fig) -> Path:
        """Write a matplotlib figure as ``name.png`` and close it."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        path = self._target(f"{name}.png")
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def finding(self, text: str) -> None:
        """Record (and print) one line of the run's findings."""
        self.findings.append(text)
        print(text, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage of the run (printed; ``timings.csv`` and a finding when the run closes)."""
        print(f"[{name}]", flush=True)
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.timings.append(dict(stage=name, seconds=round(seconds, 1)))
        print(f"[{name}] done in {seconds:.0f} s", flush=True)

    def close(self) -> None:
        """Write ``findings.md`` (and ``config.json``, ``timings.csv``): the run finished."""
        if self.timings:
            self.table("timings", pd.DataFrame(self.timings), index=False)
            self.finding(
                "seconds per stage: " + ", ".join(f"{t['stage']} {t['seconds']:.0f}" for t in self.timings)
            )
        if self.findings:
            atomic_write_text(self._target("findings.md"), "\n".join(f"- {f}" for f in self.findings) + "\n")
        if self.write_config:
            write_json(self._target("config.json"), self.provenance())
        self.ledger.settle()

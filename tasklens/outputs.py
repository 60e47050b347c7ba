"""An analysis's output folder: tables (CSV + JSON), figures (PNG), findings and provenance.

Every file is written atomically, so an interrupted run leaves complete files
only; the folder remembers what it wrote (`OutputDir.written`), which a
`tasklens.runs.RunFolder` turns into the run's manifest.
"""

from __future__ import annotations

import io
import json
import platform
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

import tasklens
from tasklens.io import atomic_write_bytes, atomic_write_text, write_json
from tasklens.provenance import plain


def command_line() -> str:
    """The command that is running, without machine paths (``tasklens locate -t x``)."""
    program = Path(sys.argv[0]).name if sys.argv else "python"
    if program in ("__main__.py", "-c", ""):
        program = "tasklens"
    return shlex.join([program, *sys.argv[1:]])


class OutputDir:
    """A folder collecting one run's outputs.

    Args:
        path: the folder (created if missing).
        config: the run's parameters, saved as ``config.json`` with provenance when
            the run closes (`close`), so a failed run leaves no config claiming otherwise.
        write_config: write ``config.json`` on `close` (run folders keep their configs
            in the manifest instead).
    """

    def __init__(self, path: str | Path, config: dict[str, Any], write_config: bool = True) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.write_config = write_config
        self.findings: list[str] = []
        self.written: list[Path] = []
        self.timings: list[dict[str, Any]] = []

    def _written(self, path: Path) -> Path:
        self.written.append(path)
        return path

    def provenance(self) -> dict[str, Any]:
        return {
            **plain(self.config),
            "tasklens_version": tasklens.__version__,
            "python": platform.python_version(),
            "command": command_line(),
        }

    def file(self, name: str) -> Path:
        """Record that a file the caller writes itself (e.g. `NeuronScores.save`) belongs to the run."""
        return self._written(self.path / name)

    def json(self, name: str, data: Any) -> Path:
        """Write ``name.json``."""
        path = self.path / f"{name}.json"
        write_json(path, plain(data))
        return self._written(path)

    def table(self, name: str, frame: pd.DataFrame, index: bool = True) -> pd.DataFrame:
        """Write ``name.csv`` and ``name.json``."""
        atomic_write_text(self.path / f"{name}.csv", frame.to_csv(index=index))
        self._written(self.path / f"{name}.csv")
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
        path = self.path / f"{name}.png"
        atomic_write_bytes(path, buffer.getvalue())
        return self._written(path)

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
            path = self.path / "findings.md"
            atomic_write_text(path, "\n".join(f"- {f}" for f in self.findings) + "\n")
            self._written(path)
        if self.write_config:
            write_json(self.path / "config.json", self.provenance())
            self._written(self.path / "config.json")

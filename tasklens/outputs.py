"""An analysis's output folder: tables (CSV + JSON), figures (PNG), findings and provenance.

Every file is written atomically, so an interrupted run leaves complete files only.
"""

from __future__ import annotations

import io
import json
import platform
import sys
from pathlib import Path
from typing import Any

import pandas as pd

import tasklens
from tasklens.io import atomic_write_bytes, atomic_write_text, write_json


class OutputDir:
    """A folder collecting one run's outputs.

    Args:
        path: the folder (created if missing).
        config: the run's parameters, saved as ``config.json`` with provenance.
    """

    def __init__(self, path: str | Path, config: dict[str, Any]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.config = config
        write_json(
            self.path / "config.json",
            {
                **config,
                "tasklens_version": tasklens.__version__,
                "python": platform.python_version(),
                "command": " ".join(sys.argv),
            },
        )
        self.findings: list[str] = []

    def table(self, name: str, frame: pd.DataFrame, index: bool = True) -> pd.DataFrame:
        """Write ``name.csv`` and ``name.json``."""
        atomic_write_text(self.path / f"{name}.csv", frame.to_csv(index=index))
        data = json.loads(
            frame.reset_index().to_json(orient="records") if index else frame.to_json(orient="records")
        )
        write_json(self.path / f"{name}.json", data)
        return frame

    def figure(self, name: str, fig) -> Path:
        """Write a matplotlib figure as ``name.png`` and close it."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        path = self.path / f"{name}.png"
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def finding(self, text: str) -> None:
        """Record (and print) one line of the run's findings."""
        self.findings.append(text)
        print(text, flush=True)

    def close(self) -> None:
        atomic_write_text(self.path / "findings.md", "\n".join(f"- {f}" for f in self.findings) + "\n")

"""Every notebook runs top to bottom, is stored without outputs, and shows its figures."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_the_quickstart_asks_the_verdict_and_rounds_what_it_prints():
    book = nbformat.read(NOTEBOOKS[0], as_version=4)
    code = "\n".join(cell.source for cell in book.cells if cell.cell_type == "code")
    assert ".specificity()" in code and "VerdictTable(" in code
    assert "accuracy(model, held_out):.2f" in code


def test_the_notebooks_are_numbered_in_order():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, len(NOTEBOOKS) + 1)]
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_is_stored_clean(path):
    book = nbformat.read(path, as_version=4)
    code = [cell for cell in book.cells if cell.cell_type == "code"]
    assert all(not cell.get("outputs") for cell in code)
    NotebookClient(
        book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors, errors[0].get("evalue") if errors else ""
    streams = "".join(o.get("text", "") for cell in code for o in cell.outputs if o.output_type == "stream")
    assert "IProgress not found" not in streams  # the notebook bar works (ipywidgets)
    # a cell tagged "figure" must show its figure as an image (in Jupyter, not just in a file)
    figures = [cell for cell in code if "figure" in cell.metadata.get("tags", [])]
    for cell in figures:
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(images) == 1, f"figure cell shows {len(images)} images:\n{cell.source}"

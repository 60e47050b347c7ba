"""docs/finetuning.md's and the README's fine-tuning tables are the ones `continual_learning.py
--summary` derives from the committed results' CSVs, line for line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def script():
    if "analyses_continual_learning" not in sys.modules:
        sys.path.insert(0, str(ROOT / "analyses"))
        spec = importlib.util.spec_from_file_location(
            "analyses_continual_learning", ROOT / "analyses" / "continual_learning.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["analyses_continual_learning"] = module
        spec.loader.exec_module(module)
    return sys.modules["analyses_continual_learning"]


def lines_in(written: str, page: str) -> None:
    rows = [line for line in written.splitlines() if line.strip()]
    page_lines = page.splitlines()
    start = page_lines.index(rows[0])
    assert [line for line in page_lines[start:] if line.strip()][: len(rows)] == rows


def test_the_docs_and_readme_tables_are_derived_from_the_results_csvs():
    module = script()
    derived = module.summarise(module.RESULTS)
    summary = module.SUMMARY
    assert (summary / "docs_tables.md").read_text(encoding="utf-8") == derived["docs"]
    assert (summary / "readme_table.md").read_text(encoding="utf-8") == derived["readme"]
    lines_in(derived["docs"], (ROOT / "docs" / "finetuning.md").read_text(encoding="utf-8"))
    lines_in(derived["readme"], (ROOT / "README.md").read_text(encoding="utf-8"))
    family = derived["tests"].family.iloc[0]
    assert family.endswith("of docs/finetuning.md") and derived["tests"].p_value.min() > 0

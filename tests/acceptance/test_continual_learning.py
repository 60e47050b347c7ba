"""analyses/continual_learning.py end to end on the organism: every condition over seeds and draws,
tests under one error control, and the summary that writes the docs' tables from the CSVs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> str:
    command = [sys.executable, str(ROOT / "analyses" / "continual_learning.py"), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=ROOT / "analyses")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_analysis_tests_every_claim_and_the_summary_writes_the_tables(tmp_path):
    out = tmp_path / "organism"
    run(
        "--out", str(out), "--tasks", "continent_code", "subtraction", "smaller_number", "--seeds", "2",
        "--random-draws", "3", "--lrs", "3e-3", "1e-2", "--steps", "20", "--test-prompts", "16",
        "--validation-prompts", "8", "--transfer-tasks", "continent_code", "subtraction", "smaller_number",
        "last_item",
    )  # fmt: skip
    search = pd.read_csv(out / "lr_search.csv")
    assert set(search.lr) == {3e-3, 1e-2} and search.groupby(["method", "neurons"]).chosen.sum().eq(1).all()
    cells = pd.read_csv(out / "cells.csv")
    random = cells[(cells.method == "NCFT") & (cells.neurons == "random")]
    assert set(random.draw) == {0, 1, 2} and set(random.seed) == {0, 1}
    assert set(cells[cells.method == "alone"].neurons) == {"full", "task"}
    tests = pd.read_csv(out / "tests.csv")
    assert len(tests) == 2 * 3 + 2 + 3  # two methods x three outcomes vs random, two vs SeqFT, three measures
    assert (tests.p_value >= tests.p_floor - 1e-12).all() and (tests.p_value > 0).all()
    assert tests.family.nunique() == 1 and "over the 11 tests of findings.md" in tests.family[0]
    vs_random = tests[tests.test == "random draws"]
    assert vs_random.verdict.str.startswith("underpowered: 3 random draws cannot give p < 0.05").all()
    pairs = pd.read_csv(out / "transfer_pairs.csv")
    assert len(pairs) == 4 * 3 and {"jaccard", "mean_similarity", "exclusive_similarity"} <= set(
        pairs.columns
    )
    findings = (out / "findings.md").read_text()
    assert "error control: Benjamini-Hochberg (q = 0.05) over the 11 tests of findings.md" in findings

    summary = tmp_path / "summary"
    run("--summary", "--results", str(out), "--out", str(summary))
    docs = (summary / "docs_tables.md").read_text()
    assert "over the 11 tests of docs/finetuning.md" in docs and "| NCFT, random neurons (3 draws) |" in docs
    assert "Leng & Xiong, Llama-2-7B (the paper's setting; not comparable in scale)" in docs
    readme = (summary / "readme_table.md").read_text()
    assert readme.count("\n| ") == 11  # a row per claim

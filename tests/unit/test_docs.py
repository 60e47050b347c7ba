"""The README is a front page with the set-up commands CI runs; the docs site builds offline."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAX_README_LINES = 250


def ci_test_command() -> str:
    """The line of `.ci/run` that sets up the first environment and runs the tests."""
    lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.startswith("python3 -m venv .venv &&")
    ]
    assert len(lines) == 1, lines
    return lines[0]


def test_readme_is_a_front_page():
    n_lines = len(README.splitlines())
    assert n_lines <= MAX_README_LINES, f"README.md has {n_lines} lines; move detail into docs/"


def test_readme_has_the_ci_test_command_and_the_demo_command_verbatim():
    test_command = ci_test_command()
    assert test_command.endswith('pip install -q -e ".[test]" && python -m pytest')
    demo_command = test_command.replace(
        'pip install -q -e ".[test]" && python -m pytest', "pip install -q -e . && tasklens demo"
    )
    code_lines = set(README.splitlines())
    assert test_command in code_lines
    assert demo_command in code_lines


def test_readme_python_imports_exist():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    imports = re.findall(r"^from (\S+) import (.+?)(?:\s+#.*)?$", "\n".join(blocks), flags=re.M)
    assert imports
    for module, names in imports:
        loaded = importlib.import_module(module)
        for name in names.split(","):
            assert hasattr(loaded, name.strip()), f"{module} has no {name.strip()}"


def test_docs_build_strict_offline(tmp_path):
    for module in ("mkdocs", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f'{module} is not installed: pip install -e ".[test]" installs it')
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "api" / "tasklens.scoring" / "index.html").exists()
    assert "tasklens.scoring.GradientAttribution" in (
        tmp_path / "site" / "api" / "tasklens.scoring" / "index.html"
    ).read_text(encoding="utf-8")

"""Every runnable script under analyses/ and benchmarks/ explains itself and names what it needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.reliability, pytest.mark.slow]  # each case starts a fresh Python process

ROOT = Path(__file__).parents[2]
SCRIPTS = sorted(  # the runnable ones: shared modules such as analyses/common.py have no main
    str(p.relative_to(ROOT))
    for folder in ("analyses", "benchmarks")
    for p in (ROOT / folder).glob("*.py")
    if '__name__ == "__main__"' in p.read_text()
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_explains_itself(script):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-500:]


def test_the_performance_benchmark_names_the_extra_it_needs(tmp_path):
    import subprocess
    import sys

    (tmp_path / "captum").mkdir()
    (tmp_path / "captum/__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "benchmarks/performance.py"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert result.returncode != 0 and 'pip install -e ".[test]"' in result.stderr

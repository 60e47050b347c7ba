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


ANALYSES = [s for s in SCRIPTS if s.startswith("analyses/")]
#: per script, a bad argument of its own (the in-process matrix is tests/unit/test_script_arguments.py)
BAD = {
    "analyses/continual_learning.py": (["--tasks", "nosuch_task"], "--tasks: unknown task 'nosuch_task'"),
    "analyses/ladder.py": (["--model", "organism", "--batch-size", "0"], "--batch-size must be at least 1"),
    "analyses/multitask_neurons.py": (["--metric", "nosuch"], "Unknown metric 'nosuch'"),
    "analyses/relation_neurons.py": (["--relations", "nosuch_task"], "--relations: unknown task"),
    "analyses/specificity.py": (["--percents", "-5"], "--percents is a share of the neurons"),
    "analyses/task_neurons_cgvst.py": (["--model", "nosuch"], "Could not load 'nosuch'"),
}


def test_every_analysis_script_has_a_bad_argument_case():
    assert sorted(BAD) == ANALYSES


@pytest.mark.parametrize("script", ANALYSES)
def test_a_bad_argument_is_one_line_and_exit_code_2_in_a_process_of_its_own(script, tmp_path):
    import subprocess
    import sys

    args, message = BAD[script]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, script, "--out", str(tmp_path / "out"), *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert result.stdout == "" and not (tmp_path / "out").exists()

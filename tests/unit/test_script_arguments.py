"""The analysis scripts keep the CLI's error contract: bad input is one line on stderr and exit
code 2, found before any work (no model loaded, nothing written), never a traceback.

Each script's ``main`` is run in this process with the arguments a user would type (its module
imported once); tests/unit/test_scripts.py runs the same cases as separate processes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.reliability

ANALYSES = Path(__file__).parents[2] / "analyses"
#: per script: a whole-number option, the option naming metrics, percentages and tasks (None: none)
SCRIPTS = {
    "specificity": ("--batch-size", "--metrics", "--percents", "--tasks"),
    "relation_neurons": ("--detection-prompts", "--metric", "--percent", "--relations"),
    "multitask_neurons": ("--eval-prompts", "--metric", "--percent", "--tasks"),
    "task_neurons_cgvst": ("--detection-prompts", "--metric", "--percent", "--tasks"),
    "continual_learning": ("--steps", None, "--percent", "--tasks"),
    "ladder": ("--batch-size", None, None, None),
}


def script(name: str):
    """The script's module, imported once (as ``analyses_<name>``)."""
    key = f"analyses_{name}"
    if key not in sys.modules:
        sys.path.insert(0, str(ANALYSES))
        spec = importlib.util.spec_from_file_location(key, ANALYSES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def cases():
    for name, (count, metric, percent, tasks) in SCRIPTS.items():
        yield name, [count, "0"], f"{count} must be at least 1, got 0"
        if metric:
            yield name, [metric, "nosuch"], "Unknown metric 'nosuch'"
        if percent:
            yield name, [percent, "-5"], f"{percent} is a share of the neurons, in percent"
        if tasks:
            yield name, [tasks, "nosuch_task"], f"{tasks}: unknown task 'nosuch_task'"
    yield "specificity", ["--controls", "1"], "--controls must be at least 2, got 1"
    yield "specificity", ["--percents"], "--percents was given without a value"
    yield "specificity", ["--settled", "0"], "--settled must be at least 1, got 0"
    yield (
        "specificity",
        ["--settled", "200"],
        "give 1 <= --stop-after <= --settled <= --controls, got 5, 200, 159",
    )
    yield "relation_neurons", ["--min-known", "500"], "--min-known 500 can never be reached"
    yield "ladder", ["--model", "nosuch"], "argument --model: invalid choice: 'nosuch'"
    yield "ladder", ["--controls", "1"], "--controls must be at least 2, got 1"
    yield (
        "ladder",
        ["--model", "organism", "--settled", "30"],
        "give 1 <= --settled <= --controls, got 30 and 19",
    )
    yield "specificity", ["--generic-ratio", "-1"], "--generic-ratio must be a positive number, got -1"
    yield "continual_learning", ["--lrs", "-1"], "--lrs must be positive numbers, got -1"
    yield "continual_learning", ["--random-draws", "-1"], "--random-draws must be at least 0, got -1"
    yield "continual_learning", ["--seeds", "0"], "--seeds must be at least 1, got 0"
    yield "continual_learning", ["--transfer-tasks", "a", "nosuch"], "--transfer-tasks: unknown task 'a'"
    yield "continual_learning", ["--tasks", "subtraction"], "--tasks needs at least two distinct tasks"
    yield "continual_learning", ["--alpha", "2"], "alpha must be a number between 0 and 1"
    yield (
        "continual_learning",
        ["--summary", "--results", "nowhere"],
        "--results: 'nowhere' holds no cells.csv",
    )
    yield "continual_learning", ["--methods", "nosuch"], "argument --methods: invalid choice: 'nosuch'"


def run(name: str, args: list[str], monkeypatch, capsys, loads: bool = False) -> tuple[int, str]:
    """Run the script's main with ``args`` (a model load fails the test unless ``loads``)."""
    module = script(name)

    def no_model(*a, **k):
        raise AssertionError("the arguments must be checked before the model loads")

    if not loads:
        monkeypatch.setattr(module, "load_model", no_model)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    with pytest.raises(SystemExit) as exit_:
        module.run_main(module.main)
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return exit_.value.code, lines[0]


def with_out(name: str, out: Path) -> list[str]:
    return ["--out", str(out)] + (["--model", "organism"] if name == "ladder" else [])


@pytest.mark.parametrize(
    "name, args, message", list(cases()), ids=lambda v: " ".join(v) if isinstance(v, list) else v
)
def test_bad_arguments_end_in_one_line_before_any_work(name, args, message, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, line = run(name, [*with_out(name, out), *args], monkeypatch, capsys)
    assert code == 2 and message in line
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_an_unknown_model_ends_in_one_line_with_nothing_written(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    if name == "ladder":  # its models are a fixed list
        code, line = run(name, ["--model", "nosuch", "--out", str(out)], monkeypatch, capsys)
        assert code == 2 and "invalid choice: 'nosuch'" in line
    else:
        code, line = run(name, ["--model", "nosuch", "--out", str(out)], monkeypatch, capsys, loads=True)
        assert code == 2 and "Could not load 'nosuch'" in line
    assert not out.exists()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_an_out_that_is_a_file_a_read_only_folder_or_the_users_folder(
    name, tmp_path, monkeypatch, capsys, read_only
):
    (tmp_path / "file.txt").write_text("mine")
    code, line = run(name, with_out(name, tmp_path / "file.txt"), monkeypatch, capsys)
    assert code == 2 and "'file.txt' is a file, not a folder" in line.replace(str(tmp_path) + "/", "")
    assert (tmp_path / "file.txt").read_text() == "mine"

    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)
    code, line = run(name, with_out(name, locked / "out"), monkeypatch, capsys)
    assert code == 2 and f"'{locked}' is not a writable folder" in line
    assert list(locked.iterdir()) == []

    users = tmp_path / "users"
    stage = users / "known" if name == "ladder" else users  # the ladder writes beside: its stages are whole
    for relative in ("notes.txt", "config.json", "sub/deeper/r.csv"):
        (stage / relative).parent.mkdir(parents=True, exist_ok=True)
        (stage / relative).write_text(f"mine: {relative}")
    before = snapshot(users)
    code, line = run(name, with_out(name, users), monkeypatch, capsys)
    assert code == 2 and "holds files tasklens did not write (config.json, notes.txt, sub/)" in line
    assert snapshot(users) == before


def test_the_ladder_summary_refuses_a_summary_folder_of_the_users(tmp_path, monkeypatch, capsys):
    (tmp_path / "smollm2-135m").mkdir()
    (tmp_path / "summary" / "mine").mkdir(parents=True)
    (tmp_path / "summary" / "mine" / "table.csv").write_text("a,b\n")
    code, line = run("ladder", ["--summary", "--root", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "holds files tasklens did not write (mine/)" in line
    assert sorted(p.name for p in (tmp_path / "summary").iterdir()) == ["mine"]


def test_the_ladder_summary_refuses_a_root_without_results(tmp_path, monkeypatch, capsys):
    """`ladder.py --summary --root <typo>` exited 0 and created the folder."""
    typo = tmp_path / "resutls"
    code, line = run("ladder", ["--summary", "--root", str(typo)], monkeypatch, capsys)
    assert code == 2 and f"--root '{typo}' is not a folder" in line and not typo.exists()
    (tmp_path / "other").mkdir()
    code, line = run("ladder", ["--summary", "--root", str(tmp_path / "other")], monkeypatch, capsys)
    assert code == 2 and "holds no ladder results (no folder named after any of" in line
    assert list((tmp_path / "other").iterdir()) == []


def test_a_second_run_on_a_held_out_stops_at_once_naming_the_first(tmp_path, monkeypatch, capsys):
    """Two specificity.py runs on one --out had no lock; the second died late with a misleading message."""
    import subprocess
    import time

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from tasklens.io import hold_folder; hold_folder(sys.argv[1], 'a run'); "
         "print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.perf_counter()
        code, line = run("specificity", ["--out", str(out)], monkeypatch, capsys)
        assert code == 2 and time.perf_counter() - start < 10
        assert f"is in use: another run holds this folder (tasklens pid {holder.pid} on" in line
        assert "wait for it to finish or choose another --out" in line
    finally:
        holder.kill()
        holder.wait()
    from tasklens.io import LOCK

    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing of the second run's


def test_a_killed_runs_leftovers_are_removed_and_older_ones_named(tmp_path, monkeypatch):
    """kill -9 left a hidden temporary folder, which the next run refused as the user's."""
    import subprocess

    from common import lock_out

    from tasklens.errors import TasklensError, TasklensWarning
    from tasklens.io import LOCK, atomic_write_text, hold_folder, host_name, release_folder, write_marker

    out = tmp_path / "out"
    out.mkdir()
    atomic_write_text(out / "findings.md", "- a finding\n")
    write_marker(out)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = f"{host_name()}.{gone.pid}"
    (out / f".result_A.json.{dead}.k2j4h5g6").write_text("half")
    (out / f".stage.{dead}.abcd1234").mkdir()
    (out / f".stage.{dead}.abcd1234" / "scores.json").write_text("half")
    (out / f".kept.{host_name()}.{os.getpid()}.abcd1234").write_text("a live run's")
    (out / ".result_B.json.q1w2e3r4").write_text("an older tasklens's")
    try:
        with pytest.raises(
            TasklensError, match=r"\.kept\..*\.result_B\.json\.q1w2e3r4 look like the leftovers"
        ):
            lock_out(out)
        (out / f".kept.{host_name()}.{os.getpid()}.abcd1234").unlink()
        (out / ".result_B.json.q1w2e3r4").unlink()
        lock_out(out)
    finally:
        release_folder(out)
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK, "findings.md", "manifest.json"])
    # beside a folder's whole outputs (the ladder's stages) an older tasklens's leftover is named
    stages = tmp_path / "stages"
    (stages / ".known.q1w2e3r4").mkdir(parents=True)
    try:
        with pytest.warns(
            TasklensWarning, match=r"leftovers of an interrupted tasklens run \(\.known\.q1w2e3r4\)"
        ):
            hold_folder(stages, "the ladder's stages")
    finally:
        release_folder(stages)
    assert (stages / ".known.q1w2e3r4").is_dir()

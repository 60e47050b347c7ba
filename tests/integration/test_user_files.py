"""No tasklens command deletes, renames or overwrites a path it did not create, anywhere.

A folder of the user's files is put where each command that writes puts its output; the
command may refuse (exit code 2, one line) or write beside them, and every file of the
user's is still there afterwards: the same file (inode), byte for byte, in the same folder.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tasklens import io
from tasklens.cli import app
from tasklens.runs.pipeline import RunConfig, locate

pytestmark = pytest.mark.reliability

BESIDE = {  # names no command writes, at every depth
    "notes.txt": b"my notes\n",
    "data/results.json": b'{"accuracy": 0.93}\n',
    "scores/mine.txt": b"scores I computed elsewhere\n",
    "sets/old/deeper/mine.json": b'{"mine": 1}\n',
}
USER = {**BESIDE, "report.html": b"<html>my own report</html>\n"}
FAST = ["--max-prompts", "8"]


def plant(folder: Path, files: dict[str, bytes]) -> dict[str, tuple[bytes, int]]:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return snapshot(folder, files)


def snapshot(folder: Path, files: dict[str, bytes]) -> dict[str, tuple[bytes, int]]:
    paths = {".": folder, **{name: folder / name for name in files}}
    return {name: (b"" if name == "." else p.read_bytes(), p.stat().st_ino) for name, p in paths.items()}


def run(*args: str, expect: tuple[int, ...] = (0, 2)):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code in expect, result.output
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert len(result.output.strip().splitlines()) == 1, result.output
    return result


def located(tmp_path: Path, organism, tasks=("continent_of",)) -> Path:
    config = RunConfig.from_dict(
        dict(tasks=list(tasks), out=str(tmp_path / "run"), max_prompts=8, method="activation_stats")
    )
    locate(config, organism)
    return tmp_path / "run"


@pytest.mark.parametrize("clash", [None, "sets/continent_of.json", "config.toml"])
def test_locate(tmp_path, clash):
    files = USER if clash is None else {**USER, clash: b"mine\n"}
    before = plant(tmp_path / "out", files)
    run("locate", "-t", "continent_of", "--out", str(tmp_path / "out"), "--method", "activation_stats", *FAST,
        expect=(0,) if clash is None else (2,))  # fmt: skip
    assert snapshot(tmp_path / "out", files) == before


@pytest.mark.parametrize(
    "command, clash",
    [
        (["ablate", "--controls", "1", *FAST], "matrix.csv"),
        (["compare", "--no-cumulativity", "--no-interference", *FAST], "overlap.png"),
        (["report"], "report.html"),
    ],
)
def test_a_later_stage(organism, tmp_path, command, clash):
    folder = located(tmp_path, organism)
    files = {**USER, clash: b"mine\n"}
    before = plant(folder, files)
    where = [str(folder)] if command[0] == "report" else ["--out", str(folder)]
    run(command[0], *where, *command[1:], expect=(2,))
    assert snapshot(folder, files) == before


def test_every_stage_and_a_new_locate_write_beside_the_users_files(organism, tmp_path):
    folder = located(tmp_path, organism, ("continent_of", "larger_number"))
    before = plant(folder, BESIDE)
    run("ablate", "--out", str(folder), "--controls", "1", *FAST, expect=(0,))
    run("compare", "--out", str(folder), "--no-cumulativity", "--no-interference", *FAST, expect=(0,))
    run("report", str(folder), expect=(0,))
    run("locate", "-t", "addition", "--out", str(folder), "--method", "activation_stats", *FAST, expect=(0,))
    assert snapshot(folder, BESIDE) == before
    assert not (folder / "report.html").exists() and not (folder / "sets/continent_of.json").exists()


def test_run(tmp_path):
    before = plant(tmp_path / "out", USER)
    toml = tmp_path / "run.toml"
    toml.write_text(
        f'tasks = ["continent_of"]\nout = "{tmp_path / "out"}"\nmax_prompts = 8\ncontrols = 1\n'
        'method = "activation_stats"\ncumulativity = false\ninterference = false\n'
    )
    run("run", str(toml), expect=(2,))
    assert snapshot(tmp_path / "out", USER) == before


def test_finetune_checkpoint_dir(tmp_path):
    before = plant(tmp_path / "checkpoints", USER)
    options = ["--scope", "full", "--steps", "4", "--checkpoint-every", "2", "--test-prompts", "8"]
    run("finetune", "continent_code", *options, "--checkpoint-dir", str(tmp_path / "checkpoints"))
    assert snapshot(tmp_path / "checkpoints", USER) == before


def test_organism_train(tmp_path):
    before = plant(tmp_path / "organism", USER)
    run("organism", "train", "--out", str(tmp_path / "organism"), "--steps", "2")
    assert snapshot(tmp_path / "organism", USER) == before


def test_models_download_refuses_a_users_folder_before_any_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setenv("TASKLENS_HOME", str(tmp_path))
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(subprocess, "run", no_network)
    monkeypatch.setattr(subprocess, "Popen", no_network)
    folder = tmp_path / "models" / "smollm2-135m"
    before = plant(folder, USER)
    run("models", "download", "smollm2", expect=(2,))
    assert snapshot(folder, USER) == before


DEEP = {  # the user's files in a folder tasklens wrote before, at every depth
    "NOTES.txt": b"my notes on this model\n",
    "my_results/r.csv": b"task,accuracy\naddition,0.9\n",
    "my_results/deeper/plot.png": b"\x89PNG not really\n",
}


def test_organism_retrain_keeps_the_users_files(tmp_path, monkeypatch):
    """The issue's reproduction: re-training into a folder tasklens trained into earlier, into
    which the user then put files, replaced the whole folder (exit 0, the files gone)."""
    import functools

    from tasklens.organism import suite
    from tasklens.organism.train import check_replaceable

    # the model card's evaluation on 4 prompts per task and split (the command's own is 300)
    monkeypatch.setattr(suite, "evaluate_suite", functools.partial(suite.evaluate_suite, max_prompts=4))
    folder = tmp_path / "organism"
    run("organism", "train", "--out", str(folder), "--steps", "2", expect=(0,))
    check_replaceable(folder)  # tasklens's own folder, the model card included: a re-run replaces it
    before = plant(folder, DEEP)
    model = snapshot(folder, {"model.safetensors": b""})
    result = run("organism", "train", "--out", str(folder), "--steps", "2", expect=(2,))
    assert "holds files tasklens did not write (NOTES.txt, my_results/)" in result.output
    assert snapshot(folder, DEEP) == before and snapshot(folder, {"model.safetensors": b""}) == model


def ladder(out: Path, *extra: str) -> subprocess.CompletedProcess:
    import sys

    root = Path(__file__).parents[2]
    return subprocess.run(
        [sys.executable, "analyses/ladder.py", "--model", "organism", "--out", str(out), "--stages", "known",
         *extra],
        cwd=root, capture_output=True, text=True,
    )  # fmt: skip


def test_a_ladder_stage_never_replaces_the_users_folder(tmp_path):
    """The issue's reproduction: ``DIR/known/`` of the user's (config.json, notes.txt) was replaced
    by the stage (exit 0, notes.txt gone): a stage counted a folder holding config.json as its own."""
    users = {"known/config.json": b'{"mine": true}\n', "known/notes.txt": b"my notes\n",
             "known/sub/more.txt": b"more\n"}  # fmt: skip
    before = plant(tmp_path / "L", users)
    result = ladder(tmp_path / "L")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"error: '{tmp_path / 'L' / 'known'}' holds files tasklens did not write (config.json, notes.txt, "
        "sub/); tasklens replaces the folder it writes, so move them away or choose a new or empty "
        "folder for the ladder stage known"
    ]
    assert "[known]" not in result.stdout  # refused before any work
    assert snapshot(tmp_path / "L", users) == before


def test_a_ladder_stage_writes_beside_the_users_files_and_keeps_them_on_reruns(tmp_path):
    beside = {"notes.txt": b"mine\n", "data/results.json": b"{}\n"}
    before = plant(tmp_path / "L", beside)
    first = ladder(tmp_path / "L")
    assert first.returncode == 0, first.stderr[-2000:]
    stage = tmp_path / "L" / "known"
    assert io.foreign_files(stage) == [] and "findings.md" in io.read_marker(stage)
    inside = plant(stage, {"my_notes.txt": b"notes on the stage\n"})  # a finished stage: kept as it is
    again = ladder(tmp_path / "L")
    assert again.returncode == 0 and "kept from an earlier run" in again.stdout, again.stderr[-2000:]
    assert snapshot(stage, {"my_notes.txt": b""}) == inside
    (stage / "findings.md").write_text("my own findings\n")  # not the stage's any more: refused
    edited = snapshot(stage, {"my_notes.txt": b"", "findings.md": b""})
    third = ladder(tmp_path / "L")
    assert third.returncode == 2 and "findings.md" in third.stderr, third.stderr[-2000:]
    assert snapshot(stage, {"my_notes.txt": b"", "findings.md": b""}) == edited
    assert snapshot(tmp_path / "L", beside) == before


def test_report_on_a_read_only_run_folder_is_one_line(organism, tmp_path, read_only):

    folder = located(tmp_path, organism)
    before = snapshot(folder, {})
    read_only(folder)
    result = run("report", str(folder), expect=(2,))
    assert "is read-only" in result.output and ".tasklens.lock" not in result.output
    assert snapshot(folder, {}) == before and not (folder / "report.html").exists()

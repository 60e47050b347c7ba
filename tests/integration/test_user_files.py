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

from tasklens.cli import app
from tasklens.runs.pipeline import RunConfig, locate

pytestmark = pytest.mark.reliability

BESIDE = {  # names no command writes
    "notes.txt": b"my notes\n",
    "data/results.json": b'{"accuracy": 0.93}\n',
    "scores/mine.txt": b"scores I computed elsewhere\n",
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

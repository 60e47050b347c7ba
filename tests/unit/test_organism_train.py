"""Training the organism never replaces a folder tasklens did not write, and checks its step count first."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from tasklens.cli import app
from tasklens.errors import TasklensError
from tasklens.tasks.builtin import load_builtin

pytestmark = pytest.mark.reliability


def test_organism_training_never_replaces_a_foreign_folder(tmp_path):
    from tasklens.models import ORGANISM_DIR
    from tasklens.organism.train import OrganismConfig, check_replaceable, train_organism

    foreign = tmp_path / "organism"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(TasklensError, match=r"holds files tasklens did not write \(notes.txt\)"):
        train_organism([load_builtin("addition", "train")], foreign, OrganismConfig(steps=5))
    assert (foreign / "notes.txt").read_text() == "keep"
    (tmp_path / "file").write_text("x")
    with pytest.raises(TasklensError, match="is a file"):
        check_replaceable(tmp_path / "file")
    train_organism([load_builtin("addition", "train")], tmp_path / "old_organism", OrganismConfig(steps=1))
    check_replaceable(tmp_path / "old_organism")  # a checkpoint tasklens wrote may be replaced
    shutil.copytree(ORGANISM_DIR, tmp_path / "unmarked")  # no marker lists its files: refused
    with pytest.raises(TasklensError, match="holds files tasklens did not write"):
        check_replaceable(tmp_path / "unmarked")
    check_replaceable(tmp_path / "new")
    for steps in (0, -3):
        with pytest.raises(TasklensError, match="at least 1 step"):
            train_organism([load_builtin("addition", "train")], tmp_path / "new", OrganismConfig(steps=steps))


def test_organism_train_cli_keeps_a_foreign_folder(tmp_path):
    foreign = tmp_path / "organism"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    result = CliRunner().invoke(app, ["organism", "train", "--out", str(foreign), "--steps", "5"])
    assert result.exit_code == 2 and "holds files tasklens did not write (notes.txt)" in result.output
    assert (foreign / "notes.txt").read_text() == "keep"

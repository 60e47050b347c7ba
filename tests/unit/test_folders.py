"""A folder is tasklens's only when tasklens's marker lists every file in it, unchanged; a folder
tasklens replaces whole (`tasklens.io.atomic_dir`) is refused, before any work, when it holds
anything else, at any depth, and the refusal names the user's files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import filelock
import pytest

from tasklens import io
from tasklens.errors import TasklensError
from tasklens.io import atomic_dir, check_own_folder, foreign_files, read_marker, write_marker
from tasklens.runs import RunFolder

pytestmark = pytest.mark.reliability

WHAT = "a test folder"


def written(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def ours(tmp_path: Path) -> Path:
    """A folder tasklens wrote whole: two files at depth 0 and 2, listed by its marker."""
    with atomic_dir(tmp_path / "out", WHAT) as tmp:
        written(tmp, {"a.json": "{}", "deep/er/b.bin": "bytes"})
    return tmp_path / "out"


def test_the_marker_lists_every_file_a_replaced_folder_holds(tmp_path):
    folder = ours(tmp_path)
    assert set(read_marker(folder)) == {"a.json", "deep/er/b.bin"}
    assert read_marker(folder)["deep/er/b.bin"] == io.file_sha256(folder / "deep/er/b.bin")
    assert foreign_files(folder) == []
    with atomic_dir(folder, WHAT) as tmp:  # tasklens's own folder is replaced on a re-run
        written(tmp, {"c.json": "[]"})
    assert sorted(p.name for p in folder.iterdir()) == ["c.json", "manifest.json"]


@pytest.mark.parametrize(
    "user, named",
    [
        ({"notes.txt": "mine"}, "notes.txt"),
        ({"deep/er/mine.csv": "1,2"}, "deep/er/mine.csv"),  # beside a listed file, two levels down
        ({"my_results/r.csv": "x"}, "my_results/"),  # a folder of the user's, named as one
        ({"a.json": '{"edited": true}'}, "a.json"),  # a listed file the user changed
    ],
)
def test_anything_else_at_any_depth_is_the_users_and_the_folder_is_refused(tmp_path, user, named):
    folder = written(ours(tmp_path), user)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert named in foreign_files(folder)
    with pytest.raises(TasklensError, match=rf"holds files tasklens did not write \(.*{named}"):
        check_own_folder(folder, WHAT)
    with pytest.raises(TasklensError, match="holds files tasklens did not write"):
        with atomic_dir(folder, WHAT) as tmp:
            raise AssertionError(f"work started in {tmp}")
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_folder_without_a_marker_or_with_a_users_manifest_is_the_users(tmp_path):
    plain = written(tmp_path / "plain", {"config.json": "{}", "notes.txt": "mine"})  # the ladder's old test
    assert foreign_files(plain) == ["config.json", "notes.txt"]
    own_manifest = written(tmp_path / "manifest", {"manifest.json": '{"mine": 1}'})
    assert foreign_files(own_manifest) == ["manifest.json"]
    with pytest.raises(TasklensError, match=r"\(manifest.json\)"):
        check_own_folder(own_manifest, WHAT)
    assert check_own_folder(tmp_path / "new", WHAT) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert check_own_folder(tmp_path / "empty", WHAT) == tmp_path / "empty"


def test_the_marker_is_extended_by_files_added_later(tmp_path):
    folder = ours(tmp_path)
    (folder / "README.md").write_text("card")
    assert foreign_files(folder) == ["README.md"]
    write_marker(folder, ["README.md"])
    assert foreign_files(folder) == [] and len(read_marker(folder)) == 3


def test_links_files_and_read_only_parents_get_their_own_messages(tmp_path, read_only):
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(TasklensError, match=r"is a symbolic link .*not a folder of its own.*real folder"):
        check_own_folder(tmp_path / "link", WHAT)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(TasklensError, match=r"is a symbolic link \(to '.*nowhere', which does not exist\)"):
        check_own_folder(tmp_path / "dangling", WHAT)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TasklensError, match="is a file, not a folder"):
        check_own_folder(tmp_path / "file", WHAT)
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)
    with pytest.raises(TasklensError, match=rf"'{locked}' is not a writable folder"):
        check_own_folder(locked / "new" / "deeper", WHAT)


def test_a_replaced_folder_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        folder = ours(tmp_path)
    finally:
        os.umask(umask)
    modes = {p.relative_to(folder).as_posix(): p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]}
    assert modes == {".": 0o755, "a.json": 0o644, "deep": 0o755, "deep/er": 0o755,
                     "deep/er/b.bin": 0o644, "manifest.json": 0o644}  # fmt: skip


def test_a_run_folder_held_by_another_run_says_so(tmp_path):
    run = RunFolder(tmp_path / "run")
    with run.lock():
        with pytest.raises(filelock.Timeout):  # the lock is filelock's: any filelock user sees it
            filelock.FileLock(str(tmp_path / "run" / ".tasklens.lock"), timeout=0).acquire()
        held = rf"another run holds this folder \(tasklens pid {os.getpid()} on [\w-]+\)"
        with pytest.raises(TasklensError, match=held):
            run.check_writable(["sets/x.json"])
    run.check_writable(["sets/x.json"])  # free again


def test_a_run_folder_never_truncates_a_lock_file_it_did_not_write(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".tasklens.lock").write_text("my own notes on locks\n")
    with pytest.raises(TasklensError, match="is not tasklens's lock file"):
        with RunFolder(folder).lock():
            raise AssertionError("the lock was taken")
    assert (folder / ".tasklens.lock").read_text() == "my own notes on locks\n"
    (tmp_path / "elsewhere").write_text("keep")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / ".tasklens.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(TasklensError, match="a link or a folder"):
        with RunFolder(tmp_path / "linked").lock():
            raise AssertionError("the lock was taken")
    assert (tmp_path / "elsewhere").read_text() == "keep"


def test_a_read_only_run_folder_is_refused_in_one_sentence(tmp_path, read_only):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"kind": "tasklens-run", "stages": {}}))
    read_only(folder)
    with pytest.raises(TasklensError, match=r"is read-only: .*make it writable"):
        RunFolder(folder).check_writable(["report.html"])


def test_a_dangling_or_file_link_as_a_run_folder_is_named_as_a_link(tmp_path):
    from tasklens.runs import check_out_folder

    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(TasklensError, match=r"a symbolic link to '.*nowhere', which does not exist; create"):
        check_out_folder(tmp_path / "dangling")
    (tmp_path / "file").write_text("x")
    (tmp_path / "to_file").symlink_to(tmp_path / "file")
    with pytest.raises(TasklensError, match=r"\(a symbolic link to '.*file'\) is a file, not a folder"):
        check_out_folder(tmp_path / "to_file")
    (tmp_path / "folder").mkdir()
    (tmp_path / "to_folder").symlink_to(tmp_path / "folder")
    assert check_out_folder(tmp_path / "to_folder") == tmp_path / "to_folder"  # runs write into the folder


@pytest.mark.parametrize(
    "command",
    [
        ["organism", "train", "--steps", "2", "--out"],
        ["finetune", "currency_code", "--steps", "2", "--checkpoint-dir"],
    ],
)
def test_a_read_only_parent_of_a_swapped_in_folder_is_refused(command, tmp_path, monkeypatch, read_only):
    """Organism training and fine-tuning checkpoints write a temporary folder beside their own
    (then swap it in): a read-only parent is refused before any training, in one line."""
    from typer.testing import CliRunner

    import tasklens.models
    from tasklens.cli import app

    def no_model(*args, **kwargs):
        raise AssertionError("the folder must be checked before the model loads")

    monkeypatch.setattr(tasklens.models, "load_model", no_model)
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)
    result = CliRunner().invoke(app, [*command, str(locked / "out")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"'{locked}' is not a writable folder" in result.output and list(locked.iterdir()) == []

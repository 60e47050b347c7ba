"""A run folder: the files each stage wrote, named in a manifest written last, under a lock.

Guarantees, for every stage (``locate``, ``ablate``, ``compare``, ...):

- one writer at a time: a stage holds an exclusive lock on the folder, so two
  processes cannot interleave their files;
- all or nothing: a stage's files are listed (with their SHA-256) in its record in
  ``manifest.json`` only once the stage has finished; readers use only the files
  the records name, so stale sets from an earlier run or the partial output of a
  killed run are never picked up (a running stage lists the files it is writing
  under ``unfinished``, so a later run knows them as tasklens's);
- a stage's record holds its own configuration, written only on success;
- re-running a stage replaces its record and deletes the files of its previous
  record that it did not write again; the records of the stages after it (which
  used the old files) are dropped;
- nothing tasklens did not write is ever deleted or overwritten: a file is deleted or
  replaced only if it lies inside the folder, a record names it and it still has the
  recorded hash; a manifest naming a path outside the folder is refused as damaged.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasklens._version import __version__
from tasklens.errors import TasklensError, TasklensWarning
from tasklens.io import (
    LOCK,
    FolderInUse,
    file_sha256,
    folder_lock,
    lock_holder,
    remove_stale,
    unwritable_ancestor,
    write_json,
)
from tasklens.runs.outputs import Ledger, OutputDir, inside, unchanged

MANIFEST = "manifest.json"
#: the stages, in the order a run goes through them
STAGES = ("locate", "ablate", "compare", "report")
#: the stages each stage reads: re-running a stage removes the results of those that read it
READS_FROM = {"locate": (), "ablate": ("locate",), "compare": ("locate",), "report": STAGES[:3]}


def readers(stage: str) -> tuple[str, ...]:
    """The stages that read ``stage``'s files, directly or through another stage.

    >>> readers("locate"), readers("ablate")
    (('ablate', 'compare', 'report'), ('report',))
    """
    found: list[str] = []
    for later in STAGES:
        if any(read == stage or read in found for read in READS_FROM.get(later, ())):
            found.append(later)
    return tuple(found)


def check_out_folder(path: str | Path) -> Path:
    """``path`` as a run folder that can be created and written, or a clear error."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise TasklensError(
            f"--out {str(path)!r} is a symbolic link to {os.readlink(path)!r}, which does not exist; "
            "create that folder or choose another --out"
        )
    if path.exists() and not path.is_dir():
        link = f" (a symbolic link to {os.readlink(path)!r})" if path.is_symlink() else ""
        raise TasklensError(f"--out {str(path)!r}{link} is a file, not a folder; choose a folder for the run")
    parent = unwritable_ancestor(path)
    if parent is not None:
        raise TasklensError(
            f"Cannot write the run folder {str(path)!r}: {str(parent)!r} is not writable; "
            "choose another --out"
        )
    return path


class RunFolder:
    """One run's folder (see the module docstring for what it guarantees).

    Args:
        path: the folder; created by the first stage.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # --- reading ----------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        file = self.path / MANIFEST
        if not file.exists() and not file.is_symlink():
            return {"kind": "tasklens-run", "stages": {}}
        try:
            data = json.loads(file.read_text(encoding="utf-8")) if unchanged(file, None) else None
        except ValueError as error:
            raise TasklensError(
                f"{str(file)!r} is damaged ({error}); choose another --out for a new run"
            ) from error
        if not isinstance(data, dict) or data.get("kind") != "tasklens-run":
            raise TasklensError(
                f"{str(file)!r} is not a tasklens run manifest; choose another --out for the run"
            )
        problem = self._problem(data)
        if problem:
            raise TasklensError(f"{str(file)!r} is damaged ({problem}); choose another --out for a new run")
        return data

    def _problem(self, data: dict[str, Any]) -> str | None:
        """What is wrong with a manifest's structure, or None."""
        stages, unfinished = data.get("stages"), data.get("unfinished", {})
        if not isinstance(stages, dict) or not isinstance(unfinished, dict):
            return "it has no table of stages"
        lists = [(s, r.get("files") if isinstance(r, dict) else None, False) for s, r in stages.items()]
        lists += [(s, files, True) for s, files in unfinished.items()]
        for stage, files, partial in lists:
            if not isinstance(files, dict):
                return f"stage {stage!r} has no table of files"
            for name, digest in files.items():
                if inside(self.path, name) is None:
                    return f"stage {stage!r} names {name!r}, which is not a file inside the run folder"
                if not (isinstance(digest, str) or (partial and digest is None)):
                    return f"stage {stage!r} has no hash for {name!r}"
        return None

    def owned(self, manifest: dict[str, Any]) -> dict[str, str | None]:
        """Every file a manifest says tasklens wrote (name -> SHA-256, None while being written)."""
        owned: dict[str, str | None] = {}
        for files in manifest.get("unfinished", {}).values():
            owned.update(files)
        for record in manifest["stages"].values():
            owned.update(record["files"])
        return owned

    def check_writable(self, names: list[str]) -> None:
        """Refuse, before any work, a folder tasklens cannot write, one another run holds, or a file
        of the user's where a stage writes one of ``names``."""
        if self.path.is_dir():
            self._check_access()
            self._check_free()
            ledger = Ledger(self.path, self.owned(self.manifest()))
            for name in names:
                ledger.check(name)

    def _read_only(self) -> TasklensError:
        return TasklensError(
            f"Run folder {str(self.path)!r} is read-only: a stage writes its lock, manifest and files "
            "there; make it writable (chmod u+w) or copy the run to a writable folder"
        )

    def _check_access(self) -> None:
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise self._read_only()

    def _in_use(self, holder: str) -> TasklensError:
        return TasklensError(
            f"Run folder {str(self.path)!r} is in use: another run holds this folder ({holder}); wait "
            "for it to finish or choose another --out"
        )

    def _check_free(self) -> None:
        """Refuse if another process holds the folder's lock (taken and given back at once)."""
        file = self.path / LOCK
        if file.is_symlink() or not file.is_file():
            return
        with self.lock():
            pass

    def record(self, stage: str) -> dict[str, Any]:
        """The finished stage's record (config, files), or a clear error if it has none."""
        if self.path.exists() and not self.path.is_dir():
            raise TasklensError(
                f"{str(self.path)!r} is a file, not a run folder; give the folder a run wrote "
                "(its --out), which holds manifest.json"
            )
        if not self.path.is_dir():
            raise TasklensError(f"Run folder {str(self.path)!r} does not exist; run `tasklens locate` first")
        record = self.manifest()["stages"].get(stage)
        if record is None:
            leftovers = any((self.path / d).is_dir() for d in ("scores", "sets"))
            detail = " (it holds files of an unfinished or older run, which are ignored)" if leftovers else ""
            raise TasklensError(
                f"Run folder {str(self.path)!r} has no finished `{stage}` stage{detail}; "
                f"run `tasklens {stage}` first"
            )
        return record

    def files(self, stage: str, prefix: str = "", suffix: str = "") -> list[Path]:
        """The files a finished stage wrote (checked against their hashes), filtered by prefix/suffix."""
        record = self.record(stage)
        out = []
        for name, digest in sorted(record["files"].items()):
            if not (name.startswith(prefix) and name.endswith(suffix)):
                continue
            path = inside(self.path, name)
            if path is None:
                raise TasklensError(
                    f"{str(self.path / MANIFEST)!r} is damaged ({name!r} is not inside the run folder); "
                    "choose another --out for a new run"
                )
            if not unchanged(path, digest):
                raise TasklensError(
                    f"{str(path)!r}, written by `{stage}`, is missing or was changed since; "
                    f"re-run `tasklens {stage}`"
                )
            out.append(path)
        return out

    # --- writing ----------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's exclusive lock (`tasklens.io.folder_lock`: fails at once, naming the
        holder, if another process holds it); leftovers of killed runs in it are removed."""
        try:
            with folder_lock(self.path, "a run", "choose another --out"):
                remove_stale(self.path)
                yield
        except FolderInUse as error:
            raise self._in_use(lock_holder(self.path)) from error
        except TasklensError as error:
            if "read-only" in str(error) and self.path.is_dir() and not os.access(self.path, os.W_OK):
                raise self._read_only() from error
            raise

    @contextmanager
    def stage(self, stage: str, config: dict[str, Any], names: list[str] = ()) -> Iterator[OutputDir]:
        """Run one stage: yields an `OutputDir` whose written files become the stage's record
        when the block finishes without error. ``names``: files it will write, checked first."""
        from tasklens.distributed import barrier, is_main

        if not is_main():  # under torchrun rank 0 writes; the others wait for its record
            yield OutputDir(self.path, config, write_config=False, ledger=Ledger(self.path, None))
            barrier()
            return
        with self.lock():
            manifest = self.manifest()
            pending = manifest.setdefault("unfinished", {}).setdefault(stage, {})
            ledger = Ledger(
                self.path, self.owned(manifest), pending, lambda: write_json(self.path / MANIFEST, manifest)
            )
            for name in names:
                ledger.check(name)
            out = OutputDir(self.path, config, write_config=False, ledger=ledger)
            yield out
            self._commit(stage, config, out.written)
        barrier()

    def _commit(self, stage: str, config: dict[str, Any], written: list[Path]) -> None:
        manifest = self.manifest()
        stages, unfinished = manifest["stages"], manifest.pop("unfinished", {})
        files = {str(p.relative_to(self.path)): file_sha256(p) for p in sorted(set(written))}
        stale = {**unfinished.pop(stage, {}), **stages.get(stage, {}).get("files", {})}
        dropped: dict[str, list[str]] = {}
        for later in readers(stage):  # made from the files this stage replaces
            stale.update(unfinished.pop(later, {}))
            record = stages.pop(later, None)
            if record is not None:
                stale.update(record.get("files", {}))
                dropped[later] = sorted(record.get("files", {}))
        stages[stage] = {
            "config": config,
            "files": files,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tasklens_version": __version__,
        }
        if unfinished:  # other stages' killed runs: their files stay known as tasklens's
            manifest["unfinished"] = unfinished
        write_json(self.path / MANIFEST, manifest)
        kept = self.owned(manifest)
        removed = set()
        for name, digest in stale.items():  # only files tasklens wrote and nobody changed since
            path = inside(self.path, name)
            if name not in kept and path is not None and digest is not None and unchanged(path, digest):
                path.unlink()
                removed.add(name)
        if dropped:
            warnings.warn(_dropped_message(stage, dropped, removed), TasklensWarning, stacklevel=3)


def _dropped_message(stage: str, dropped: dict[str, list[str]], removed: set[str]) -> str:
    """What re-running ``stage`` removed: the later stages made from its old files, and theirs."""
    parts = []
    for later, files in dropped.items():
        gone = [f for f in files if f in removed]
        shown = ", ".join(gone[:4]) + (f" and {len(gone) - 4} more" if len(gone) > 4 else "")
        parts.append(f"`{later}` ({shown or 'no files'})")
    again = " and ".join(f"`tasklens {later}`" for later in dropped)
    return (
        f"re-running `{stage}` removed the results made from its earlier files: {'; '.join(parts)}; "
        f"run {again} again for them"
    )

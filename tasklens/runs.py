"""A run folder: the files each stage wrote, named in a manifest written last, under a lock.

Guarantees, for every stage (``locate``, ``ablate``, ``compare``, ...):

- one writer at a time: a stage holds an exclusive lock on the folder, so two
  processes cannot interleave their files;
- all or nothing: a stage's files are listed (with their SHA-256) in
  ``manifest.json`` only once the stage has finished; readers use only the files
  the manifest names, so stale sets from an earlier run or the partial output of a
  killed run are never picked up;
- a stage's record holds its own configuration, written only on success;
- re-running a stage replaces its record and deletes the files of its previous
  record that it did not write again; the records of the stages after it (which
  used the old files) are dropped;
- nothing tasklens did not write is ever deleted.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tasklens
from tasklens.errors import TasklensError
from tasklens.io import file_sha256, write_json
from tasklens.outputs import OutputDir

MANIFEST = "manifest.json"
LOCK = ".tasklens.lock"
#: each stage reads what the stages before it wrote
STAGES = ("locate", "ablate", "compare", "report")


def check_out_folder(path: str | Path) -> Path:
    """``path`` as a run folder that can be created and written, or a clear error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TasklensError(f"--out {str(path)!r} is a file, not a folder; choose a folder for the run")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
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
        if not file.is_file():
            return {"kind": "tasklens-run", "stages": {}}
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except ValueError as error:
            raise TasklensError(f"{str(file)!r} is damaged ({error}); re-run `tasklens locate`") from error
        if data.get("kind") != "tasklens-run" or not isinstance(data.get("stages"), dict):
            raise TasklensError(f"{str(file)!r} is not a tasklens run manifest")
        return data

    def record(self, stage: str) -> dict[str, Any]:
        """The finished stage's record (config, files), or a clear error if it has none."""
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
            path = self.path / name
            if not path.is_file() or file_sha256(path) != digest:
                raise TasklensError(
                    f"{str(path)!r}, written by `{stage}`, is missing or was changed since; "
                    f"re-run `tasklens {stage}`"
                )
            out.append(path)
        return out

    # --- writing ----------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's exclusive lock (fails at once if another process holds it)."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK, "a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise TasklensError(
                    f"Run folder {str(self.path)!r} is in use by {holder}; wait for it to finish or "
                    "choose another --out"
                ) from error
            handle.seek(0)
            handle.truncate()
            handle.write(f"tasklens pid {os.getpid()}")
            handle.flush()
            yield
        finally:
            handle.close()

    @contextmanager
    def stage(self, stage: str, config: dict[str, Any]) -> Iterator[OutputDir]:
        """Run one stage: yields an `OutputDir` whose written files become the stage's record
        when the block finishes without error."""
        from tasklens.distributed import barrier, is_main

        if not is_main():  # under torchrun rank 0 writes; the others wait for its record
            yield OutputDir(self.path, config, write_config=False)
            barrier()
            return
        with self.lock():
            out = OutputDir(self.path, config, write_config=False)
            yield out
            self._commit(stage, config, out.written)
        barrier()

    def _commit(self, stage: str, config: dict[str, Any], written: list[Path]) -> None:
        manifest = self.manifest()
        stages = manifest["stages"]
        files = {str(p.relative_to(self.path)): file_sha256(p) for p in sorted(set(written))}
        previous = stages.get(stage, {}).get("files", {})
        later = STAGES[STAGES.index(stage) + 1 :] if stage in STAGES else ()
        stale = [n for n in previous if n not in files]
        for dropped in later:
            stale += [n for n in stages.pop(dropped, {}).get("files", {}) if n not in files]
        stages[stage] = {
            "config": config,
            "files": files,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tasklens_version": tasklens.__version__,
        }
        write_json(self.path / MANIFEST, manifest)
        for name in stale:  # tasklens wrote these (they were in its manifest)
            (self.path / name).unlink(missing_ok=True)

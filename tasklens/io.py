"""Files: atomic writes (a file or folder appears whole or not at all) and artifacts
(a tensor as safetensors beside its JSON provenance, bound by the tensor file's hash)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from tasklens.errors import TasklensError

#: the file in which tasklens lists the files it wrote into a folder (name -> SHA-256)
MARKER = "manifest.json"
MARKER_KIND = "tasklens-output"


def unchanged(path: Path, digest: str | None) -> bool:
    """``path`` is a plain file (not a link) with the SHA-256 ``digest`` (None: any content)."""
    return not path.is_symlink() and path.is_file() and (digest is None or file_sha256(path) == digest)


def read_marker(folder: str | Path) -> dict[str, str | None] | None:
    """The files tasklens's marker in ``folder`` lists (name -> SHA-256, None while being
    written), or None when there is no marker or the file there is not one."""
    file = Path(folder) / MARKER
    if file.is_symlink() or not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) and data.get("kind") == MARKER_KIND else None
    if not isinstance(files, dict) or not all(isinstance(d, str | None) for d in files.values()):
        return None
    return files


def foreign_files(folder: str | Path, listed: dict[str, str | None] | None = None) -> list[str]:
    """What in ``folder``, at any depth, tasklens's marker does not list with its current content
    (links, folders no listed file lies in, and a ``manifest.json`` that is not a marker included):
    the user's. Empty for a folder that is tasklens's alone. ``listed``: the files tasklens wrote
    there (name -> SHA-256, None: any content), for a folder that lists them in a file of its own.

    Example:
        >>> import tempfile; folder = Path(tempfile.mkdtemp())
        >>> (folder / "notes.txt").write_text("mine") and foreign_files(folder)
        ['notes.txt']
    """
    folder = Path(folder)
    skip, foreign = None, []
    if listed is None:
        skip, listed = MARKER, read_marker(folder)
        foreign = [] if listed is not None or not (folder / MARKER).exists() else [MARKER]
        listed = listed or {}
    parents = {str(parent) for name in listed for parent in PurePosixPath(name).parents}
    for root, dirs, files in os.walk(folder):
        here = Path(root).relative_to(folder)
        for name in list(dirs):
            relative = (here / name).as_posix()
            if (Path(root) / name).is_symlink() or relative not in parents:
                foreign.append(relative + ("" if (Path(root) / name).is_symlink() else "/"))
                dirs.remove(name)
        for name in files:
            relative = (here / name).as_posix()
            if relative == skip:
                continue
            if relative not in listed or not unchanged(Path(root) / name, listed[relative]):
                foreign.append(relative)
    return sorted(foreign)


def write_marker(folder: str | Path, names: list[str] | None = None) -> None:
    """List files in ``folder``'s marker with their SHA-256: ``names`` (added to what it lists
    already), or every file there (``None``: a folder tasklens has just written whole)."""
    folder = Path(folder)
    if names is None:
        files = {}
        names = sorted(
            p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER
        )
    else:
        files = read_marker(folder) or {}
    for name in names:
        files[name] = file_sha256(folder / name)
    write_json(folder / MARKER, {"kind": MARKER_KIND, "files": dict(sorted(files.items()))})


def check_folder_path(path: str | Path, what: str) -> Path:
    """``path`` resolved, if a folder for ``what`` can be made there: not a file or a link, not the
    working folder, and in a folder that can be written (tasklens writes beside it first)."""
    path = Path(path).expanduser().absolute()
    if path.is_symlink():
        target = os.readlink(path)
        state = "which does not exist" if not path.exists() else "not a folder of its own"
        raise TasklensError(
            f"{str(path)!r} is a symbolic link (to {target!r}, {state}); tasklens does not write "
            f"through links: give a real folder for {what}"
        )
    if path.exists() and not path.is_dir():
        raise TasklensError(f"{str(path)!r} is a file, not a folder; choose a new or empty folder for {what}")
    if path == Path.cwd() or path in Path.cwd().parents:
        raise TasklensError(
            f"{str(path)!r} is the working folder (or holds it); choose a new or empty folder for {what}"
        )
    parent = unwritable_ancestor(path.parent)
    if parent is not None:
        raise TasklensError(
            f"Cannot write {what} at {str(path)!r}: {str(parent)!r} is not a writable folder; "
            "choose another folder"
        )
    return path


def unwritable_ancestor(path: Path) -> Path | None:
    """The nearest existing one of ``path`` and its parents, if it is not a folder tasklens may
    create things in (a file, or read-only); None when creating ``path`` can go ahead."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return None if path.is_dir() and os.access(path, os.W_OK | os.X_OK) else path


def check_replaceable(path: str | Path, owned: Callable[[Path], bool], what: str) -> Path:
    """``path`` resolved, if tasklens may replace it: missing, an empty folder, or a folder for
    which ``owned`` says tasklens wrote it. Anything else (a file, a link, the user's own folder,
    the working folder, a folder in a read-only one) raises a `TasklensError` naming ``what`` the
    folder was meant to hold (with its article: ``"an organism checkpoint"``)."""
    path = check_folder_path(path, what)
    if path.exists() and any(path.iterdir()) and not owned(path):
        raise TasklensError(
            f"{str(path)!r} already holds files and is not {what} written by tasklens; tasklens "
            "replaces the folder it writes, so choose a new or empty folder"
        )
    return path


def _listing(names: list[str], most: int = 3) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def check_own_folder(
    path: str | Path,
    what: str,
    is_kind: Callable[[Path], bool] | None = None,
    foreign: Callable[[Path], list[str]] = foreign_files,
) -> Path:
    """``path`` resolved, if tasklens may replace it: missing, empty, or a folder whose every file
    tasklens's marker lists unchanged (``foreign``, by default `foreign_files`, finds none) and, if
    given, ``is_kind`` recognises as ``what``. Anything else raises a `TasklensError` naming the
    user's files, before any work.

    Example:
        >>> import tempfile; folder = Path(tempfile.mkdtemp()) / "out"
        >>> check_own_folder(folder, "an output") == folder
        True
    """
    path = check_folder_path(path, what)
    if not path.exists() or not any(path.iterdir()):
        return path
    found = foreign(path)
    if found:
        raise TasklensError(
            f"{str(path)!r} holds files tasklens did not write ({_listing(found)}); tasklens replaces "
            f"the folder it writes, so move them away or choose a new or empty folder for {what}"
        )
    if is_kind is not None and not is_kind(path):
        raise TasklensError(
            f"{str(path)!r} holds tasklens output that is not {what}; choose a new or empty folder for {what}"
        )
    return path


@contextmanager
def atomic_dir(
    path: str | Path,
    what: str,
    is_kind: Callable[[Path], bool] | None = None,
    foreign: Callable[[Path], list[str]] | None = None,
) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``, with a marker
    (`MARKER`) listing every file in it (``foreign`` given: the folder lists its files itself, and
    ``foreign`` finds what it does not list).

    ``path`` is checked first with `check_own_folder` (so only a missing or empty folder, or one
    whose every file tasklens's marker lists, is ever replaced), and again before the swap. On an
    exception (or interruption) the temporary folder is removed and any existing ``path`` is
    left as it was.
    """
    marked, foreign = foreign is None, foreign or foreign_files
    path = check_own_folder(path, what, is_kind, foreign)
    if not _writes():
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if marked:
            write_marker(tmp)
        default_permissions(tmp)
        check_own_folder(path, what, is_kind, foreign)  # it may have changed while the content was made
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _writes() -> bool:
    """Only rank 0 writes under torchrun (the others' results are the same)."""
    from tasklens.distributed import is_main

    return is_main()


def default_permissions(folder: Path) -> None:
    """Give ``folder`` and everything in it the usual umask permissions (mkdtemp and mkstemp
    create private ones)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for item in folder.rglob("*"):
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


@contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[tuple[Path, ...]]:
    """Yield temporary file paths beside ``paths``; on success each is renamed into place.

    Every temporary file is complete before the first rename, so a reader sees the
    old files, the new ones, or (if the process dies between two renames) a mix
    that a content hash can detect; never a half-written file.
    """
    targets = [Path(p) for p in paths]
    if not _writes():
        with tempfile.TemporaryDirectory() as scratch:
            yield tuple(Path(scratch) / f"{i}{p.suffix}" for i, p in enumerate(targets))
        return
    temps = []
    try:
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            os.close(fd)
            temps.append(Path(name))
        yield tuple(temps)
        umask = os.umask(0)
        os.umask(umask)
        for tmp, path in zip(temps, targets, strict=True):
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success it is renamed to ``path``."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def artifact_paths(path: str | Path) -> tuple[Path, Path]:
    """The ``.safetensors`` and ``.json`` files of the artifact at ``path`` (either suffix, or none)."""
    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def save_artifact(path: str | Path, tensor: Tensor, meta: dict[str, Any]) -> Path:
    """Write an artifact: ``tensor`` as safetensors and ``meta`` as its JSON sidecar.

    Both files are complete before either is renamed into place, and the JSON names the
    tensor file's SHA-256, so `load_artifact` never pairs halves of two writes."""
    tensor_path, json_path = artifact_paths(path)
    data = save_tensors({"values": tensor.detach().cpu().contiguous()})
    meta = {**meta, "sha256": hashlib.sha256(data).hexdigest()}
    text = json.dumps(meta, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    with atomic_paths(tensor_path, json_path) as (tmp_tensor, tmp_json):
        tmp_tensor.write_bytes(data)
        tmp_json.write_text(text, encoding="utf-8")
    return tensor_path


def load_artifact(path: str | Path, kind: str) -> tuple[Tensor, dict[str, Any]]:
    """An artifact's tensor and metadata, checked: both files there, the JSON's ``kind`` as
    expected, the tensor file's hash as the JSON records. Nothing is unpickled."""
    tensor_path, json_path = artifact_paths(path)
    for p in (tensor_path, json_path):
        if not p.is_file():
            raise TasklensError(f"Cannot load {kind}: {str(p)!r} does not exist (need .safetensors + .json)")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise TasklensError(
            f"{str(json_path)!r} is not valid JSON ({error}); the file is damaged: recompute the {kind}"
        ) from error
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        found = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
        raise TasklensError(f"{str(json_path)!r} holds a {found!r}, not a {kind}")
    data = tensor_path.read_bytes()
    expected = meta.get("sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise TasklensError(
            f"{str(tensor_path)!r} does not match its sidecar {json_path.name!r} (the tensor's hash "
            "differs): the pair comes from two different runs or a write was interrupted; recompute it"
        )
    try:
        tensors = load_tensors(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise TasklensError(
            f"{str(tensor_path)!r} is not a readable safetensors file ({error}); it is empty, truncated "
            f"or damaged: recompute the {kind}"
        ) from error
    if "values" not in tensors:
        raise TasklensError(f"{str(tensor_path)!r} has no 'values' tensor; it was not written by tasklens")
    return tensors["values"], meta

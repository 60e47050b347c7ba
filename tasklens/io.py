"""Files: atomic writes (a file or folder appears whole or not at all) and artifacts
(a tensor as safetensors beside its JSON provenance, bound by the tensor file's hash)."""

from __future__ import annotations

import hashlib
import json
import os
import re
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
#: the lock file a writing command holds in its output folder (`hold_folder`)
LOCK = ".tasklens.lock"
#: what tasklens writes into its lock file (then the holder)
LOCK_TEXT = "tasklens pid "


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
        for name in [n for n in [*dirs, *files] if _stale_work(n)]:  # a killed run's: removed when locked
            (dirs if name in dirs else files).remove(name)
        for name in list(dirs):
            relative = (here / name).as_posix()
            if (Path(root) / name).is_symlink() or relative not in parents:
                foreign.append(relative + ("" if (Path(root) / name).is_symlink() else "/"))
                dirs.remove(name)
        for name in files:
            relative = (here / name).as_posix()
            if relative == skip or (relative == LOCK and is_lock_file(Path(root) / name)):
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
        leftovers = [n for n in found if _LEGACY_WORK.fullmatch(PurePosixPath(n.rstrip("/")).name)]
        hint = (
            f" ({_listing(leftovers)} look like the leftovers of an interrupted tasklens run: remove them "
            "if no run is writing there)"
            if leftovers
            else ""
        )
        raise TasklensError(
            f"{str(path)!r} holds files tasklens did not write ({_listing(found)}){hint}; tasklens replaces "
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
    tmp = Path(tempfile.mkdtemp(prefix=work_prefix(path.name), dir=path.parent))
    try:
        yield tmp
        if marked:
            write_marker(tmp)
        default_permissions(tmp)
        check_own_folder(path, what, is_kind, foreign)  # it may have changed while the content was made
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=work_prefix(f"{path.name}.old"), dir=path.parent))
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
            fd, name = tempfile.mkstemp(prefix=work_prefix(path.name), dir=path.parent)
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


# --- one writer per folder, and what killed writers leave --------------------------------------
def host_name() -> str:
    """This machine's name, in the characters temporary names may hold."""
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def work_prefix(name: str) -> str:
    """The prefix of a temporary file or folder written for ``name``: hidden, named after this host
    and process (``.name.host.pid.``), so a later run can tell a killed writer's leftovers."""
    return f".{name}.{host_name()}.{os.getpid()}."


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # someone else's process (or a system that cannot tell)
        return True
    return True


def _work_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of a temporary name `work_prefix` made, or None."""
    import re

    match = re.fullmatch(r"\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}", name)
    return (match["host"], int(match["pid"])) if match else None


#: a temporary name of an older tasklens (``tempfile`` after ``.name.``), which names no process
_LEGACY_WORK = re.compile(r"\.[^.].*\.[a-z0-9_]{8}")


def _stale_work(name: str) -> bool:
    """Whether ``name`` is the temporary file or folder of a tasklens process of this host that is gone."""
    owner = _work_owner(name)
    return owner is not None and owner[0] == host_name() and not process_alive(owner[1])


def release_all() -> None:
    """Give back every lock `hold_folder` took (a command that stopped on bad input)."""
    for release in list(_HELD.values()):
        release()


def remove_stale(folder: str | Path, warn: Callable[[str], None] | None = None) -> list[str]:
    """Remove, from ``folder`` and its subfolders, the temporary files and folders of tasklens
    processes of this host that are gone (a killed run's half-written outputs, named by
    `work_prefix`); returns their names. Hidden entries that look like an older tasklens's
    temporary names (``.name.xxxxxxxx``, no process named) are left and named through ``warn``."""
    import shutil

    folder = Path(folder)
    removed, unsure = [], []
    if not folder.is_dir():
        return removed
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            entry = Path(root) / name
            owner = _work_owner(name)
            if _stale_work(name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry.relative_to(folder).as_posix())
            elif owner is None and _LEGACY_WORK.fullmatch(name):
                unsure.append(entry.relative_to(folder).as_posix())
        dirs[:] = [d for d in dirs if (Path(root) / d).exists() and not (Path(root) / d).is_symlink()]
    if unsure and warn is not None:
        warn(
            f"{str(folder)!r} holds what looks like the leftovers of an interrupted tasklens run "
            f"({_listing(sorted(unsure))}); remove them if no run is writing there"
        )
    return removed


def is_lock_file(path: Path) -> bool:
    """Whether ``path`` is a lock file tasklens wrote (empty, or naming its holder)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None
    except OSError:
        return False
    return text is not None and (not text.strip() or text.startswith(LOCK_TEXT)) and not path.is_symlink()


def lock_holder(folder: Path) -> str:
    try:
        return (folder / LOCK).read_text(encoding="utf-8", errors="replace").strip() or "another process"
    except OSError:
        return "another process"


class FolderInUse(TasklensError):
    """Another process holds the folder's lock."""


@contextmanager
def folder_lock(folder: str | Path, what: str, fix: str = "choose another --out") -> Iterator[Path]:
    """Hold ``folder``'s exclusive lock (``.tasklens.lock``, `filelock`: flock on Unix, msvcrt on
    Windows, released by the system when the process dies), creating the folder if needed; it fails
    at once, naming the holder, when another process holds it. The lock file names the holder and
    is left in place; a file of the user's with its name is never written.

    Example:
        >>> import tempfile; folder = Path(tempfile.mkdtemp())
        >>> with folder_lock(folder, "an output") as held:
        ...     (held / LOCK).read_text().startswith("tasklens pid")
        True
    """
    import inspect

    from filelock import FileLock, Timeout

    folder = Path(folder)
    file = folder / LOCK
    if file.is_symlink() or (file.exists() and not file.is_file()):
        raise TasklensError(
            f"{str(file)!r} is not tasklens's lock file (a link or a folder); move it away or {fix}"
        )
    if file.exists() and not is_lock_file(file):
        raise TasklensError(
            f"{str(file)!r} is not tasklens's lock file, so tasklens will not overwrite it; move it away "
            f"or {fix}"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # filelock 4 can remove the file on release; 3.x never does and has no such option
        keep = (
            {"preserve_lock_file": True}
            if "preserve_lock_file" in inspect.signature(FileLock).parameters
            else {}
        )
        lock = FileLock(str(file), timeout=0, **keep)
        lock.acquire()
    except Timeout as error:
        raise FolderInUse(
            f"{str(folder)!r} is in use: another run holds this folder ({lock_holder(folder)}) for {what}; "
            f"wait for it to finish or {fix}"
        ) from error
    except OSError as error:
        raise TasklensError(
            f"Cannot write {what} in {str(folder)!r} ({error.strerror or error}): the folder is read-only or "
            f"not a folder; make it writable (chmod u+w) or {fix}"
        ) from error
    try:
        try:
            with open(file, "w", encoding="utf-8") as handle:
                handle.write(f"{LOCK_TEXT}{os.getpid()} on {host_name()}")
        except OSError:
            pass  # the lock is held; only the holder's name is missing
        yield folder
    finally:
        lock.release()


_HELD: dict[Path, Callable[[], None]] = {}


def hold_folder(folder: str | Path, what: str, fix: str = "choose another --out") -> list[str]:
    """Take ``folder``'s lock (`folder_lock`) until this process ends (or `release_folder`), then
    remove the leftovers of killed runs in it (`remove_stale`); returns their names. A folder this
    call created and that holds nothing but the lock when it is released is removed again (a command
    that stopped on bad input leaves nothing). Taking a folder this process holds is a no-op."""
    import atexit
    import warnings

    from tasklens.errors import TasklensWarning

    folder = Path(folder).expanduser().absolute()
    if folder in _HELD:
        return []
    created = not folder.exists()
    context = folder_lock(folder, what, fix)
    context.__enter__()

    def release() -> None:
        if _HELD.get(folder) is not release:
            return
        del _HELD[folder]
        context.__exit__(None, None, None)
        try:
            if created and [p.name for p in folder.iterdir()] == [LOCK]:
                (folder / LOCK).unlink()
                folder.rmdir()
        except OSError:
            pass

    _HELD[folder] = release
    atexit.register(release)
    return remove_stale(folder, lambda text: warnings.warn(text, TasklensWarning, stacklevel=3))


def release_folder(folder: str | Path) -> None:
    """Give back a lock `hold_folder` took (tests, or a long-lived process done writing there)."""
    release = _HELD.get(Path(folder).expanduser().absolute())
    if release is not None:
        release()

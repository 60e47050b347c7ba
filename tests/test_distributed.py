"""Two CPU processes on gloo (torch's launcher, loopback only) give a single process's results."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasklens.models import load_model
from tasklens.tasks.builtin import load_builtin

WORKER = Path(__file__).with_name("distributed_worker.py")


def launch(out: Path, mode: str, timeout: float = 240) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(port), str(WORKER), str(out), mode,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def test_two_ranks_equal_one_process(tmp_path):
    sys.path.insert(0, str(WORKER.parent))
    from distributed_worker import results

    done = launch(tmp_path, "score")
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the thread count changes float32 summation order
    try:
        single = results(load_model("organism"), load_builtin("capital_of", "detection").sample(13))
    finally:
        torch.set_num_threads(threads)
    for name, expected in single.items():
        expected = expected.double()
        scale = float(expected.abs().max()) or 1.0
        for rank in ranks:  # every rank holds the whole result
            assert rank[name].shape == expected.shape, name
            assert float((rank[name] - expected).abs().max()) <= 1e-6 * scale, name
    assert single["exact_ablation"].count_nonzero() == 4  # only the four chosen neurons were ablated


def test_a_dead_rank_stops_the_run_in_bounded_time(tmp_path):
    start = time.perf_counter()
    done = launch(tmp_path, "die", timeout=180)
    assert done.returncode != 0
    assert time.perf_counter() - start < 180
    assert not (tmp_path / "rank0.safetensors").exists()


@pytest.mark.parametrize("value", ["float64", "int8"])
def test_run_config_refuses_a_dtype_it_cannot_load(value):
    from tasklens.errors import TasklensError
    from tasklens.pipeline import RunConfig

    with pytest.raises(TasklensError, match="dtype"):
        RunConfig(dtype=value).check()
    assert torch.bfloat16 == getattr(torch, RunConfig(dtype="bfloat16").dtype)

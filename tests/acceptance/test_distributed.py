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

WORKER = Path(__file__).parents[1] / "distributed_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, mode: str, timeout: float = 240) -> subprocess.CompletedProcess:
    port = free_port()
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


def test_two_ranks_share_the_random_sets_and_equal_one_process(tmp_path):
    """The random sets (not the prompts) shared between two ranks, sequential stopping, the
    at_stake gate and two random sets per forward: every field of every rank's result is the
    one process's, to the bit; the journal holds every random set either rank evaluated."""
    import json

    sys.path.insert(0, str(WORKER.parent))
    from distributed_worker import matrix

    done = launch(tmp_path, "matrix")
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"matrix{r}.json").read_text()) for r in (0, 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = json.loads(json.dumps(matrix(load_model("organism"))))
    finally:
        torch.set_num_threads(threads)
    assert ranks[0] == single and ranks[1] == single
    runs = single["logprob"]["control_values"]
    drawn = {(s, r) for s, r in zip(runs["set"], runs["run"], strict=True)}
    assert len({r for s, r in drawn if s == "addition"}) == 15  # at stake: every random set
    assert len({r for s, r in drawn if s == "continent_of"}) < 5  # stopped after 2 exceedances
    assert len(list((tmp_path / "journal").glob("*/run_*.safetensors"))) >= len(drawn)


def test_a_dead_rank_stops_the_run_in_bounded_time(tmp_path):
    start = time.perf_counter()
    done = launch(tmp_path, "die", timeout=180)
    assert done.returncode != 0
    assert time.perf_counter() - start < 180
    assert not (tmp_path / "rank0.safetensors").exists()


@pytest.mark.parametrize("value", ["float64", "int8"])
def test_run_config_refuses_a_dtype_it_cannot_load(value):
    from tasklens.errors import TasklensError
    from tasklens.runs.pipeline import RunConfig

    with pytest.raises(TasklensError, match="dtype"):
        RunConfig(dtype=value).check()
    assert torch.bfloat16 == getattr(torch, RunConfig(dtype="bfloat16").dtype)


def torchrun_env(rank: int, size: int, port: int) -> dict[str, int | str]:
    return dict(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=size, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)


@pytest.mark.reliability
def test_a_stray_world_size_warns_once_and_runs_in_one_process(monkeypatch):
    from typer.testing import CliRunner

    from tasklens import distributed
    from tasklens.cli import app
    from tasklens.errors import TasklensWarning

    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_warned", False)
    with pytest.warns(TasklensWarning, match="WORLD_SIZE=2 is set but RANK, LOCAL_RANK") as caught:
        first = CliRunner().invoke(app, ["tasks"])
        second = CliRunner().invoke(app, ["tasks"])
    assert first.exit_code == second.exit_code == 0, first.output
    assert "capital_of" in first.output and len(caught) == 1
    assert not torch.distributed.is_initialized() and distributed.world_size() == 1


@pytest.mark.reliability
def test_a_torchrun_environment_that_cannot_be_right_is_one_line(monkeypatch):
    from typer.testing import CliRunner

    from tasklens.cli import app

    for name, value in torchrun_env(5, 2, free_port()).items():
        monkeypatch.setenv(name, str(value))
    result = CliRunner().invoke(app, ["tasks"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        "error: RANK=5 is not below WORLD_SIZE=2; give every rank the same WORLD_SIZE and ranks 0 to "
        "WORLD_SIZE - 1 (torchrun does)"
    ]


@pytest.mark.reliability
def test_ranks_that_disagree_on_the_world_size_fail_at_once():
    from concurrent.futures import ThreadPoolExecutor
    from datetime import timedelta

    from tasklens import distributed
    from tasklens.errors import TasklensError

    port = free_port()
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        ranks = [
            pool.submit(distributed._join, torchrun_env(rank, size, port), timedelta(seconds=60))
            for rank, size in ((0, 2), (1, 3))
        ]
        errors = [future.exception(timeout=90) for future in ranks]
    assert time.perf_counter() - start < 30  # not the 60 s join timeout
    assert all(isinstance(error, TasklensError) for error in errors), errors
    assert "rank 1 has WORLD_SIZE=3, rank 0 has 2" in str(errors[0])
    assert "rank 0 has WORLD_SIZE=2, rank 1 has 3" in str(errors[1])


@pytest.mark.reliability
def test_a_rank_that_never_joins_fails_within_the_join_timeout():
    from datetime import timedelta

    from tasklens import distributed
    from tasklens.errors import TasklensError

    start = time.perf_counter()
    with pytest.raises(TasklensError, match=r"Rank 1 did not join at 127\.0\.0\.1:\d+ within 2 s"):
        distributed._join(torchrun_env(0, 2, free_port()), timedelta(seconds=2))
    assert time.perf_counter() - start < 20

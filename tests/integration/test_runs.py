"""Run folders: a stage deletes and overwrites only files tasklens wrote there, and a run's config
(device included) is checked whole before the model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import tasklens
from tasklens.cli import app
from tasklens.errors import TasklensError
from tasklens.io import file_sha256
from tasklens.runs import RunFolder
from tasklens.runs.outputs import OutputDir
from tasklens.runs.pipeline import RunConfig, ablate, load_sets, locate
from tasklens.scoring import ActivationStats

pytestmark = pytest.mark.reliability

FAST = ["--method", "activation_stats", "--max-prompts", "8"]


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def refused(result, *words: str) -> str:
    """The one-line message of a command that refused (exit code 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded")


def small_run(tmp_path: Path, **fields) -> RunConfig:
    base = dict(
        tasks=["continent_of"],
        out=str(tmp_path / "run"),
        max_prompts=8,
        controls=1,
        method="activation_stats",
    )
    return RunConfig.from_dict({**base, **fields})


def edit_manifest(run: Path, change) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    change(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))


# --- a manifest can name only files inside the run folder ------------------------------------------
def test_a_manifest_naming_files_outside_the_run_deletes_nothing_there(tmp_path):
    run = tmp_path / "run"
    assert cli("locate", "-t", "continent_of", "--out", str(run), *FAST).exit_code == 0
    victim, absolute = tmp_path / "victim.txt", tmp_path / "elsewhere" / "absolute.txt"
    absolute.parent.mkdir()
    for path in (victim, absolute):
        path.write_text("the user's")

    def plant(manifest):
        files = {"../victim.txt": file_sha256(victim), str(absolute): file_sha256(absolute)}
        manifest["stages"]["ablate"] = {"config": {}, "files": files}

    edit_manifest(run, plant)
    refused(cli("locate", "-t", "continent_of", "--out", str(run), *FAST), "damaged", "--out")
    assert victim.read_text() == absolute.read_text() == "the user's"
    with pytest.raises(TasklensError, match="not a file inside the run folder"):
        RunFolder(run).files("ablate")


def test_a_manifest_cannot_reach_outside_through_a_linked_folder(organism, tmp_path):
    config = small_run(tmp_path)
    locate(config, organism)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("the user's")
    (tmp_path / "run" / "linked").symlink_to(outside)
    edit_manifest(
        tmp_path / "run",
        lambda m: m["stages"]["locate"]["files"].update(
            {"linked/victim.txt": file_sha256(outside / "victim.txt")}
        ),
    )
    with pytest.raises(TasklensError, match="damaged"):
        locate(config, organism)
    with pytest.raises(TasklensError, match="damaged"):
        load_sets(tmp_path / "run", organism)
    assert (outside / "victim.txt").read_text() == "the user's"


def test_a_rerun_keeps_a_file_that_was_changed_after_tasklens_wrote_it(organism, tmp_path):
    locate(small_run(tmp_path, tasks=["continent_of", "larger_number"]), organism)
    edited = tmp_path / "run/sets/larger_number.json"
    edited.write_text(edited.read_text() + " ")
    locate(small_run(tmp_path), organism)  # larger_number's files are no longer the run's
    assert not (tmp_path / "run/sets/larger_number.safetensors").exists()  # unchanged: deleted
    assert edited.read_text().endswith(" ")  # changed by the user: kept


# --- a file of the user's where a stage writes is refused ------------------------------------------
@pytest.mark.parametrize("name", ["scores/continent_of.json", "sets/continent_of.safetensors", "config.toml"])
def test_locate_refuses_to_overwrite_a_users_file(tmp_path, monkeypatch, name):
    mine = tmp_path / "run" / name
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's")
    monkeypatch.setattr("tasklens.models.load_model", no_model)  # refused before it loads
    refused(cli("locate", "-t", "continent_of", "--out", str(tmp_path / "run"), *FAST), name, "move it away")
    assert mine.read_bytes() == b"the user's"


def test_report_refuses_to_overwrite_a_users_report(organism, tmp_path):
    locate(small_run(tmp_path), organism)
    (tmp_path / "run/report.html").write_text("<p>my notes</p>")
    refused(cli("report", str(tmp_path / "run")), "report.html", "choose another --out")
    assert (tmp_path / "run/report.html").read_text() == "<p>my notes</p>"


def edit_locate_config(manifest, edit) -> None:
    record = manifest["stages"]["locate"]
    record["config"] = edit(record["config"])


def without(key):
    return lambda config: {k: v for k, v in config.items() if k != key}


HAND_EDITS = {
    "no model": (without("model"), "config has no 'model'"),
    "model a number": (lambda c: {**c, "model": 3}, "has model = 3, not a str"),
    "tasks one string": (
        lambda c: {**c, "tasks": "continent_of"},
        "has tasks = 'continent_of', not a list[str]",
    ),
    "tasks numbers": (lambda c: {**c, "tasks": [1]}, "has tasks = [1], not a list[str]"),
    "value as text": (lambda c: {**c, "value": "1.0"}, "has value = '1.0', not a float"),
    "no select": (without("select"), "config has no 'select'"),
    "no method": (without("method"), "config has no 'method'"),
    "a list": (lambda c: ["model", "organism"], "config is list, not a table of settings"),
}


def test_a_hand_edited_config_is_a_one_line_error_in_report(organism, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr("tasklens.models.load_model", lambda *a, **k: organism)
    locate(small_run(tmp_path), organism)
    for name, (edit, message) in HAND_EDITS.items():
        run = tmp_path / name.replace(" ", "_")
        shutil.copytree(tmp_path / "run", run)
        edit_manifest(run, lambda manifest, edit=edit: edit_locate_config(manifest, edit))
        line = refused(cli("report", str(run)), message, "undo the edit or re-run `tasklens locate`")
        assert "manifest.json': the `locate` stage's" in line
        assert not (run / "report.html").exists()
    run = tmp_path / "ablate_edited"
    shutil.copytree(tmp_path / "run", run)
    edit_manifest(
        run, lambda manifest: manifest["stages"].update(ablate={"config": {"eval_split": 3}, "files": {}})
    )
    refused(cli("report", str(run)), "the `ablate` stage's config has eval_split = 3, not a str")
    assert cli("report", str(tmp_path / "run")).exit_code == 0  # the run as written still reports


def test_a_stage_refuses_a_file_it_wrote_that_the_user_changed_since(organism, tmp_path):
    config = small_run(tmp_path)
    locate(config, organism)
    ablate(config, organism)
    (tmp_path / "run/matrix.csv").write_text("my own edits")
    with pytest.raises(TasklensError, match=r"matrix\.csv.*did not write it \(or it was changed since\)"):
        ablate(config, organism)
    assert (tmp_path / "run/matrix.csv").read_text() == "my own edits"


def test_the_files_of_a_failed_stage_stay_tasklens_s_and_are_reused(organism, tmp_path):
    calls = []

    @tasklens.register_scorer(overwrite=True)
    class FailsOnce(ActivationStats):
        name = "fails_on_larger_number_once"

        def attribute(self, model, task, **kw):
            calls.append(task.name)
            if calls.count("larger_number") == 1 and task.name == "larger_number":
                raise RuntimeError("killed")
            return super().attribute(model, task, **kw)

    config = small_run(tmp_path, tasks=["continent_of", "larger_number"], method=FailsOnce.name)
    with pytest.raises(RuntimeError, match="killed"):
        locate(config, organism)
    assert "locate" not in RunFolder(config.out).manifest()["stages"]
    locate(config, organism)  # the first run's files are known as tasklens's, not refused
    assert calls == ["continent_of", "larger_number", "larger_number"]  # continent_of reused
    assert [s.name for s in load_sets(config.out, organism)] == ["continent_of", "larger_number"]
    assert "unfinished" not in RunFolder(config.out).manifest()


def test_an_analysis_folder_keeps_the_users_findings_and_config(tmp_path):
    folder = tmp_path / "analysis"
    folder.mkdir()
    for name in ("findings.md", "config.json"):
        (folder / name).write_text("the user's")
    out = OutputDir(folder, {"x": 1})
    out.finding("something")
    with pytest.raises(TasklensError, match=r"findings\.md.*did not write it"):
        out.close()
    assert (folder / "findings.md").read_text() == (folder / "config.json").read_text() == "the user's"
    again = tmp_path / "again"
    for _ in range(2):  # its own files it may replace
        out = OutputDir(again, {"x": 1})
        out.finding("something")
        out.close()
    assert (again / "findings.md").read_text() == "- something\n"


# --- device and dtype are checked with the rest of the config --------------------------------------
@pytest.mark.parametrize(
    "device, cuda, message",
    [
        ("gpu", True, "Unknown device 'gpu'; choose cpu, cuda, cuda:N"),
        ("cuda", False, 'CUDA is not available here; use device = "cpu"'),
        ("cuda:1", True, "this machine has 1 CUDA device(s)"),
    ],
)
def test_a_device_the_machine_lacks_fails_before_the_model_loads(
    tmp_path, monkeypatch, device, cuda, message
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(cuda))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr("tasklens.models.load_model", no_model)
    toml = tmp_path / "run.toml"
    toml.write_text(f'tasks = ["continent_of"]\nout = "{tmp_path / "run"}"\ndevice = "{device}"\n')
    refused(cli("run", str(toml)), message)
    assert not (tmp_path / "run").exists()


def test_bfloat16_on_a_gpu_without_it_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(TasklensError, match="cannot compute in bfloat16"):
        RunConfig(out=str(tmp_path / "r"), device="cuda", dtype="bfloat16").check()
    RunConfig(out=str(tmp_path / "r"), device="cuda", dtype="float16").check()


def test_ablate_and_compare_pass_device_and_dtype_to_the_model(organism, tmp_path, monkeypatch):
    locate(small_run(tmp_path), organism)
    seen = []

    def load_model(spec, device="cpu", dtype=None):
        seen.append((spec, device, dtype))
        raise RuntimeError("stop here")

    monkeypatch.setattr("tasklens.models.load_model", load_model)
    for stage in ("ablate", "compare"):
        result = cli(stage, "--out", str(tmp_path / "run"), "--device", "cpu", "--dtype", "float16")
        assert str(result.exception) == "stop here", result.output
    assert seen == [("organism", "cpu", torch.float16)] * 2


# --- each stage takes the fields its RunConfig metadata names ----------------------------------------
def test_compare_finds_the_sets_again_the_way_the_run_found_them(organism, tmp_path):
    located = small_run(tmp_path, select="top_k", value=5, params={"statistic": "std"})
    locate(located, organism)
    run = str(tmp_path / "run")
    result = cli("compare", "--out", run, "--no-cumulativity", "--no-interference", "--stability-splits", "1")
    assert result.exit_code == 0, result.output
    record = RunFolder(run).manifest()["stages"]["compare"]["config"]
    assert {k: record[k] for k in ("method", "select", "value", "params", "stability_splits")} == {
        "method": "activation_stats", "select": "top_k", "value": 5, "params": {"statistic": "std"},
        "stability_splits": 1,
    }  # fmt: skip
    stability = json.loads((tmp_path / "run/stability.json").read_text())
    assert "activation_stats" in json.dumps(stability) and "top_k" in json.dumps(stability)


# --- replayed review cases: stages, resumption, byte-identical reruns -----------------------------
GRID = (4, 512)


def two_task_run(tmp_path: Path, **fields) -> RunConfig:
    base = dict(tasks=["continent_of", "larger_number"], out=str(tmp_path / "run"), max_prompts=8, controls=1)
    return RunConfig.from_dict({**base, **fields})


def test_a_bad_selection_value_fails_before_scoring(organism, tmp_path):
    config = RunConfig(tasks=["continent_of"], out=str(tmp_path / "r"), select="top_k", value=2.7)
    with pytest.raises(TasklensError, match="whole number"):
        locate(config, organism)
    assert not (tmp_path / "r" / "scores").exists()


def test_a_new_locate_replaces_the_old_sets_and_drops_later_stages(organism, tmp_path):
    config = two_task_run(tmp_path)
    locate(config, organism)
    ablate(config, organism)
    assert (tmp_path / "run/sets/larger_number.safetensors").is_file()
    smaller = two_task_run(tmp_path, tasks=["continent_of"])
    locate(smaller, organism)
    assert not (tmp_path / "run/sets/larger_number.safetensors").exists()
    assert not (tmp_path / "run/matrix.csv").exists()  # the ablate stage used the old sets
    assert [s.name for s in load_sets(tmp_path / "run", organism)] == ["continent_of"]
    assert list(RunFolder(tmp_path / "run").manifest()["stages"]) == ["locate"]


def test_files_not_named_by_the_manifest_are_ignored(organism, tmp_path):
    from tasklens.data.neurons import NeuronSet

    config = two_task_run(tmp_path, tasks=["continent_of"])
    locate(config, organism)
    NeuronSet.from_pairs([(0, 0)], GRID, "stale").save(tmp_path / "run/sets/stale")  # e.g. a killed run
    assert [s.name for s in load_sets(tmp_path / "run", organism)] == ["continent_of"]


def test_a_run_without_a_finished_locate_says_so(organism, tmp_path):
    from tasklens.data.neurons import NeuronSet

    NeuronSet.from_pairs([(0, 0)], GRID, "partial").save(tmp_path / "run/sets/partial")
    with pytest.raises(TasklensError, match=r"no finished `locate` stage .*unfinished or older run"):
        ablate(two_task_run(tmp_path), organism)


def test_a_file_changed_after_its_stage_is_detected(organism, tmp_path):
    from tasklens.data.neurons import NeuronSet

    config = two_task_run(tmp_path, tasks=["continent_of"])
    locate(config, organism)
    NeuronSet.from_pairs([(0, 0)], GRID, "continent_of").save(tmp_path / "run/sets/continent_of")
    with pytest.raises(TasklensError, match="was changed since"):
        load_sets(tmp_path / "run", organism)


def test_two_writers_cannot_share_a_run_folder(organism, tmp_path):
    config = two_task_run(tmp_path, tasks=["continent_of"])
    with (
        RunFolder(config.out).lock(),
        pytest.raises(TasklensError, match="another run holds this folder \\(tasklens pid"),
    ):
        locate(config, organism)
    locate(config, organism)  # the lock is released with its block


def test_a_failed_stage_leaves_the_run_as_it_was(organism, same_grid_model, tmp_path):
    config = two_task_run(tmp_path)
    locate(config, organism)
    before = (tmp_path / "run/manifest.json").read_bytes()
    with pytest.raises(TasklensError, match="other weights"):
        ablate(config, same_grid_model)
    assert (tmp_path / "run/manifest.json").read_bytes() == before
    assert not (tmp_path / "run/matrix.csv").exists()


def test_each_stage_records_its_own_config(organism, tmp_path):
    config = two_task_run(tmp_path, method="activation_stats")
    locate(config, organism)
    ablate(two_task_run(tmp_path, metric="next_token"), organism)
    stages = RunFolder(tmp_path / "run").manifest()["stages"]
    assert stages["locate"]["config"]["method"] == "activation_stats"
    assert stages["ablate"]["config"]["metric"] == "next_token" and "method" not in stages["ablate"]["config"]


def test_locate_resumes_the_tasks_a_killed_run_finished(organism, tmp_path):
    calls = []

    @tasklens.register_scorer(overwrite=True)
    class Counting(ActivationStats):
        name = "counting_for_resume"

        def attribute(self, model, task, **kw):
            calls.append(task.name)
            return super().attribute(model, task, **kw)

    config = two_task_run(tmp_path, method="counting_for_resume", tasks=["continent_of"])
    locate(config, organism)
    locate(two_task_run(tmp_path, method="counting_for_resume"), organism)
    assert calls == ["continent_of", "larger_number"]  # continent_of was not scored again
    locate(two_task_run(tmp_path, method="counting_for_resume", params={"statistic": "std"}), organism)
    assert calls[2:] == ["continent_of", "larger_number"]  # other parameters: scored again


def test_reruns_are_byte_identical(organism, tmp_path):
    for name in ("a", "b"):
        locate(two_task_run(tmp_path, out=str(tmp_path / name)), organism)
    for sub in (
        "scores/continent_of.safetensors",
        "scores/continent_of.json",
        "sets/larger_number.safetensors",
    ):
        assert (tmp_path / "a" / sub).read_bytes() == (tmp_path / "b" / sub).read_bytes(), sub


def test_no_machine_path_in_shareable_artifacts(organism, tmp_path):
    from tasklens.runs.outputs import OutputDir, command_line

    assert "/" not in command_line().split()[0]
    out = OutputDir(tmp_path / "analysis", {"x": 1})
    out.close()
    assert json.loads((tmp_path / "analysis/config.json").read_text())["command"].split()[0].count("/") == 0


def test_stage_options_default_to_the_runs_own(organism, tmp_path):
    locate(two_task_run(tmp_path, tasks=["continent_of"]), organism)
    result = CliRunner().invoke(
        app, ["ablate", "--out", str(tmp_path / "run"), "--controls", "0", "--metric", "next_token"]
    )
    assert result.exit_code == 0, result.output
    assert "continent_of" in result.output and "larger_number" not in result.output


def test_run_folders_keep_nothing_foreign_deleted(organism, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/notes.txt").write_text("keep")
    config = two_task_run(tmp_path, tasks=["continent_of"])
    locate(config, organism)
    locate(two_task_run(tmp_path, tasks=["larger_number"]), organism)
    assert (tmp_path / "run/notes.txt").read_text() == "keep"
    assert Path(tmp_path / "run/manifest.json").is_file()


def test_a_metric_that_gives_nan_reads_not_tested_in_the_report(organism, tmp_path):
    """A metric that returns NaN on some prompts: ablate writes it, and the report shows the
    verdict "not tested" naming the missing values (the result file holds NaN as "nan")."""
    from tasklens.evaluation.metrics import METRICS
    from tasklens.runs.report import build_report

    def nan_logprob(logits, batch):
        """logprob with NaN on the first prompt of each batch."""
        values = METRICS.get("logprob")(logits, batch).clone()
        values[0] = float("nan")
        return values

    tasklens.register_metric("nan_logprob_for_a_test", nan_logprob, overwrite=True)
    config = two_task_run(tmp_path, method="activation_stats", metric="nan_logprob_for_a_test", controls=2)
    locate(config, organism)
    ablate(config, organism)
    assert '"nan"' in (tmp_path / "run/matrix_result.json").read_text()
    page = build_report(config.out, organism, n_neurons=2, n_prompts=2, pages_per_set=0).read_text()
    verdicts = page.split('class="dataframe verdicts"')[1].split("</table>")[0]
    assert verdicts.count("not tested: missing values (NaN) on continent_of, larger_number") == 2

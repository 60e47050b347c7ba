"""Reliability: every defect of the correctness review replayed, and the guarantees that already held.

Each case is small and runs on the organism (or on a random-init model of the same
grid). The session prints how many cases this module replayed.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import tasklens
from tasklens.analysis.matrix import EvaluationResult, evaluation_matrix
from tasklens.cli import app
from tasklens.data.neurons import NeuronScores, NeuronSet
from tasklens.errors import TasklensError, TasklensWarning
from tasklens.interventions import Intervention
from tasklens.runs import RunFolder
from tasklens.runs.pipeline import RunConfig, ablate, load_sets, locate
from tasklens.scoring import ActivationStats, AttributionPatching, get_scorer
from tasklens.selection import top_percent
from tasklens.tasks import Task
from tasklens.tasks.builtin import load_builtin

pytestmark = pytest.mark.reliability

GRID = (4, 512)


def scores_of(values: torch.Tensor, **kw) -> NeuronScores:
    return NeuronScores(values=values, model="organism", task=kw.pop("task", "t"), method="m", **kw)


@pytest.fixture(scope="module")
def continent(organism):
    return load_builtin("continent_of", "detection").head(8)


@pytest.fixture(scope="module")
def same_grid_model(tmp_path_factory):
    """A random-init Llama with the organism's neuron grid (4 x 512) and other weights."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tasklens.models import ORGANISM_DIR

    folder = tmp_path_factory.mktemp("same_grid")
    tokenizer = AutoTokenizer.from_pretrained(ORGANISM_DIR)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tasklens.load_model(str(folder))


def small_run(tmp_path, **fields) -> RunConfig:
    base = dict(tasks=["continent_of", "larger_number"], out=str(tmp_path / "run"), max_prompts=8, controls=1)
    return RunConfig.from_dict({**base, **fields})


# --- core data model, selection, artifacts, run folders, CLI (lead) ---------------------------------


def test_a_set_made_on_one_model_is_not_silently_applied_to_another(organism, same_grid_model, tmp_path):
    scores = AttributionPatching().attribute(organism, load_builtin("continent_of", "detection").head(4))
    top_percent(scores, 1.0).save(tmp_path / "s")
    assert len(NeuronSet.load(tmp_path / "s", model=organism)) == 20
    with pytest.raises(TasklensError, match="other weights"):
        NeuronSet.load(tmp_path / "s", model=same_grid_model)
    with pytest.warns(TasklensWarning, match="other weights"):
        NeuronSet.load(tmp_path / "s", model=same_grid_model, allow_other_model=True)
    scores.save(tmp_path / "scores")
    with pytest.raises(TasklensError, match="other weights"):
        NeuronScores.load(tmp_path / "scores", model=same_grid_model)


def test_a_bad_selection_value_fails_before_scoring(organism, tmp_path):
    config = RunConfig(tasks=["continent_of"], out=str(tmp_path / "r"), select="top_k", value=2.7)
    with pytest.raises(TasklensError, match="whole number"):
        locate(config, organism)
    assert not (tmp_path / "r" / "scores").exists()


def test_a_new_locate_replaces_the_old_sets_and_drops_later_stages(organism, tmp_path):
    config = small_run(tmp_path)
    locate(config, organism)
    ablate(config, organism)
    assert (tmp_path / "run/sets/larger_number.safetensors").is_file()
    smaller = small_run(tmp_path, tasks=["continent_of"])
    locate(smaller, organism)
    assert not (tmp_path / "run/sets/larger_number.safetensors").exists()
    assert not (tmp_path / "run/matrix.csv").exists()  # the ablate stage used the old sets
    assert [s.name for s in load_sets(tmp_path / "run", organism)] == ["continent_of"]
    assert list(RunFolder(tmp_path / "run").manifest()["stages"]) == ["locate"]


def test_files_not_named_by_the_manifest_are_ignored(organism, tmp_path):
    config = small_run(tmp_path, tasks=["continent_of"])
    locate(config, organism)
    NeuronSet.from_pairs([(0, 0)], GRID, "stale").save(tmp_path / "run/sets/stale")  # e.g. a killed run
    assert [s.name for s in load_sets(tmp_path / "run", organism)] == ["continent_of"]


def test_a_run_without_a_finished_locate_says_so(organism, tmp_path):
    NeuronSet.from_pairs([(0, 0)], GRID, "partial").save(tmp_path / "run/sets/partial")
    with pytest.raises(TasklensError, match=r"no finished `locate` stage .*unfinished or older run"):
        ablate(small_run(tmp_path), organism)


def test_a_file_changed_after_its_stage_is_detected(organism, tmp_path):
    config = small_run(tmp_path, tasks=["continent_of"])
    locate(config, organism)
    NeuronSet.from_pairs([(0, 0)], GRID, "continent_of").save(tmp_path / "run/sets/continent_of")
    with pytest.raises(TasklensError, match="was changed since"):
        load_sets(tmp_path / "run", organism)


def test_two_writers_cannot_share_a_run_folder(organism, tmp_path):
    config = small_run(tmp_path, tasks=["continent_of"])
    with RunFolder(config.out).lock(), pytest.raises(TasklensError, match="in use by tasklens pid"):
        locate(config, organism)
    locate(config, organism)  # the lock is released with its block


def test_a_failed_stage_leaves_the_run_as_it_was(organism, same_grid_model, tmp_path):
    config = small_run(tmp_path)
    locate(config, organism)
    before = (tmp_path / "run/manifest.json").read_bytes()
    with pytest.raises(TasklensError, match="other weights"):
        ablate(config, same_grid_model)
    assert (tmp_path / "run/manifest.json").read_bytes() == before
    assert not (tmp_path / "run/matrix.csv").exists()


def test_each_stage_records_its_own_config(organism, tmp_path):
    config = small_run(tmp_path, method="activation_stats")
    locate(config, organism)
    ablate(small_run(tmp_path, metric="next_token"), organism)
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

    config = small_run(tmp_path, method="counting_for_resume", tasks=["continent_of"])
    locate(config, organism)
    locate(small_run(tmp_path, method="counting_for_resume"), organism)
    assert calls == ["continent_of", "larger_number"]  # continent_of was not scored again
    locate(small_run(tmp_path, method="counting_for_resume", params={"statistic": "std"}), organism)
    assert calls[2:] == ["continent_of", "larger_number"]  # other parameters: scored again


def test_reruns_are_byte_identical(organism, tmp_path):
    for name in ("a", "b"):
        locate(small_run(tmp_path, out=str(tmp_path / name)), organism)
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


def test_hooks_are_removed_after_an_error_inside_an_intervention(organism):
    tokens = organism.to_tokens("Q: What is the capital of Peru? A:")
    clean = organism(tokens)
    neurons = NeuronSet.from_pairs([(0, 1), (2, 3)], GRID)
    for kind in ("zero", "amplify", "clamp"):
        with pytest.raises(RuntimeError), Intervention(kind, neurons, value=3.0).apply(organism):
            raise RuntimeError("inside")
        torch.testing.assert_close(organism(tokens), clean, atol=0, rtol=0)


def test_positions_beyond_the_prompt_are_a_clear_error(organism):
    neurons = NeuronSet.from_pairs([(0, 1)], GRID)
    with pytest.raises(TasklensError, match="outside this forward pass"):
        with Intervention("zero", neurons, positions=(50,)).apply(organism):
            organism(organism.to_tokens("short prompt"))


def test_an_intervention_is_plain_data_and_round_trips():
    neurons = NeuronSet.from_pairs([(0, 1), (3, 4)], GRID, "s")
    spec = Intervention("clamp", neurons, positions=(-1,), value=5.0)
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["neurons"]["size"] == 2 and data["value"] == 5.0 and data["positions"] == [-1]
    again = Intervention.from_dict(data, neurons)
    assert again.to_dict() == spec.to_dict() and again.label == "clamp = 5"
    with pytest.raises(TasklensError, match="Unknown intervention"):
        Intervention("ablate-ish", neurons)


def test_evaluation_results_are_typed_round_trip_and_merge(organism):
    tasks = [load_builtin(n, "evaluation").head(6) for n in ("continent_of", "larger_number")]
    sets = [
        NeuronSet.from_pairs([(0, i) for i in range(40)], GRID, n) for n in ("continent_of", "larger_number")
    ]
    a = evaluation_matrix(organism, sets[:1], tasks, n_controls=2, metric="logprob")
    b = evaluation_matrix(organism, sets[1:], tasks, n_controls=2, metric="logprob")
    merged = a + b
    assert merged.set_names == ["continent_of", "larger_number"] and merged.values.shape == (2, 2)
    again = EvaluationResult.from_dict(json.loads(json.dumps(merged.to_dict())))
    assert (again.values == merged.values).all().all() and again.intervention == merged.intervention
    assert list(merged.own_and_others().index) == ["continent_of", "larger_number"]
    with pytest.raises(TasklensError, match="distinct names"):
        evaluation_matrix(organism, sets[:1] * 2, tasks, n_controls=0, metric="logprob")
    with pytest.raises(TasklensError, match="n_controls"):
        evaluation_matrix(organism, sets[:1], tasks, n_controls=-1, metric="logprob")


def test_a_generative_metric_cannot_be_differentiated():
    with pytest.raises(TasklensError, match="read off generated text"):
        AttributionPatching(metric="greedy_match")


def test_registries_name_what_they_know_and_refuse_duplicates():
    with pytest.raises(TasklensError, match=r"choose one of \[.*'attribution_patching'"):
        get_scorer("attribution_patchng")
    with pytest.raises(TasklensError, match="already registered"):
        tasklens.register_metric("logprob", lambda logits, batch: logits.sum())


def test_the_report_shows_the_tokens_that_were_scored_escaped(organism):
    from tasklens.runs.report import top_neuron_views
    from tasklens.tasks.tokenize import TokenizedTask

    task = Task.from_lists("html", ["Q: is <b>this</b> bold? A:"], [" <i>no</i>"])
    scores = ActivationStats().attribute(organism, task)
    text, _ = top_neuron_views(organism, task, scores, n_neurons=2, n_prompts=1)
    tokenized = TokenizedTask.for_model(task, organism)
    ids = tokenized.prompt_ids[0] + tokenized.answer_ids[0]
    match = re.search(r'\{"tokens": (\[\[.*?\]\])', text)
    assert match, "no tokens in the view"
    tokens = json.loads(match.group(1))[0]
    # exactly the scored sequence (BOS, prompt, answer), each token escaped for HTML
    assert tokens == [html.escape(organism.tokenizer.decode([i])) for i in ids]
    assert tokens[0] == "&lt;s&gt;" and "&lt;" in tokens and not any("<" in t for t in tokens)


def test_cli_version_and_one_error_handler(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and tasklens.__version__ in result.output
    cases = [
        ["locate", "-t", "continent_of", "--controls", "-1"],  # not a locate option: usage error
        ["ablate", "--out", str(tmp_path / "nothing"), "--controls", "-1"],
        ["locate", "-t", "continent_of", "--out", str(tmp_path / "r"), "--param", "foo=1"],
        ["locate", "-t", "continent_of", "--out", str(tmp_path / "r"), "--max-prompts", "-1"],
        ["report", str(tmp_path / "nothing")],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output


def test_stage_options_default_to_the_runs_own(organism, tmp_path):
    locate(small_run(tmp_path, tasks=["continent_of"]), organism)
    result = CliRunner().invoke(
        app, ["ablate", "--out", str(tmp_path / "run"), "--controls", "0", "--metric", "next_token"]
    )
    assert result.exit_code == 0, result.output
    assert "continent_of" in result.output and "larger_number" not in result.output


def test_tasklens_warnings_can_be_filtered_as_a_category():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("x", TasklensWarning, stacklevel=1)
    assert caught and issubclass(caught[0].category, UserWarning)


def test_a_string_where_a_task_is_expected():
    from tasklens.tasks.task import check_task

    with pytest.raises(TasklensError, match=r"load_builtin\('capital_of'"):
        check_task("capital_of")


def test_run_folders_keep_nothing_foreign_deleted(organism, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/notes.txt").write_text("keep")
    config = small_run(tmp_path, tasks=["continent_of"])
    locate(config, organism)
    locate(small_run(tmp_path, tasks=["larger_number"]), organism)
    assert (tmp_path / "run/notes.txt").read_text() == "keep"
    assert Path(tmp_path / "run/manifest.json").is_file()


# --- tasks, scoring, organism ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["continuous", "ties", "constant", "relu"])
def test_average_precision_equals_sklearn(kind):
    from sklearn.metrics import average_precision_score

    from tasklens.scoring.expertise import average_precision

    generator = torch.Generator().manual_seed(hash(kind) % 1000)
    for _ in range(25):
        n = int(torch.randint(6, 50, (1,), generator=generator))
        labels = torch.rand(n, generator=generator) < 0.3
        labels[:2] = torch.tensor([True, False])
        if kind == "continuous":
            scores = torch.rand(n, 7, generator=generator)
        elif kind == "ties":
            scores = torch.randint(0, 3, (n, 7), generator=generator).float()
        elif kind == "constant":
            scores = torch.zeros(n, 7)
        else:
            scores = torch.relu(torch.randn(n, 7, generator=generator))
        ours = average_precision(scores, labels)
        reference = [average_precision_score(labels.numpy(), scores[:, j].numpy()) for j in range(7)]
        torch.testing.assert_close(ours, torch.tensor(reference, dtype=torch.float64), rtol=0, atol=1e-12)


def test_a_dead_neuron_is_not_a_perfect_expert():
    from tasklens.scoring.expertise import average_precision

    assert float(average_precision(torch.zeros(5, 1), torch.tensor([1, 0, 0, 0, 0]).bool())[0]) == 0.2


def test_answer_logprob_is_taken_in_float64(organism, continent):
    from tasklens.evaluation.metrics import answer_logprob
    from tasklens.tasks.tokenize import TokenizedTask

    batch = next(TokenizedTask.for_model(continent, organism).batches(8))
    with torch.no_grad():
        logits = organism(batch.tokens)
    ours = answer_logprob(logits, batch)
    rows = torch.arange(batch.size)
    reference = torch.zeros(batch.size, dtype=torch.float64)
    single = torch.zeros(batch.size)
    for pos in range(batch.tokens.shape[1] - 1):
        target = batch.target_mask()[:, pos]
        token = batch.tokens[:, pos + 1]
        reference += target * logits[rows, pos].double().log_softmax(-1)[rows, token]
        single += target * logits[rows, pos].log_softmax(-1)[rows, token]
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    assert (single.double() - reference).abs().max() > 0  # float32 would have been off


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("null.jsonl", b'{"prompt": "x", "answer": null}\n', "row 1 has no answer"),
        ("missing.jsonl", b'{"prompt": "x", "answer": " y"}\n{"prompt": "z"}\n', "row 2 has no answer"),
        ("cell.csv", b"prompt,answer\nhello, there\nbye,\n", "row 2 has no answer"),
        ("empty.jsonl", b"", "is empty"),
        ("header.csv", b"prompt,answer\n", "has a header .* but no rows"),
        ("broken.jsonl", b'{"prompt": "x", "answer": " y"}\n{"prompt": oops}\n', "line 2: not valid JSON"),
        ("latin.jsonl", '{"prompt": "café", "answer": " y"}\n'.encode("latin-1"), "not UTF-8 .* re-save it"),
        ("nocolumn.jsonl", b'{"question": "x", "answer": " y"}\n', r"nocolumn.jsonl' has no column 'prompt'"),
        ("task.txt", b"x", "use .jsonl, .json or .csv"),
    ],
)
def test_bad_task_files_give_errors_that_name_the_problem(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(TasklensError, match=message):
        Task.from_file(tmp_path / name)


def test_a_rewritten_task_file_is_read_anew(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "answer": " b"}\n')
    stat = path.stat()
    assert Task.from_file(path).answers == (" b",)
    path.write_text('{"prompt": "a", "answer": " c"}\n')  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    assert Task.from_file(path).answers == (" c",)


def test_task_sample_is_deterministic_and_refuses_zero():
    task = load_builtin("addition", "detection")
    assert task.sample(10).prompts == task.sample(10).prompts != task.sample(10, seed=1).prompts
    assert len(task.sample(10**6)) == len(task)
    with pytest.raises(TasklensError, match="at least 1"):
        task.sample(0)


def test_answers_without_their_leading_space_warn_once(organism):
    from tasklens.tasks.tokenize import TokenizedTask

    task = Task.from_lists(
        "glued",
        ["Q: AND or OR? A:", "Q: yes or no? A:", "2 + 2 =", "The capital of France is "],
        ["AND", "yes", " 4", " Paris"],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TokenizedTask.for_model(task, organism)
    messages = [str(w.message) for w in caught if issubclass(w.category, TasklensWarning)]
    assert len(messages) == 1 and "3 of 4 answers" in messages[0] and "leading space" in messages[0]


def test_csv_answers_that_look_like_numbers_keep_their_leading_space(tmp_path):
    (tmp_path / "sums.csv").write_text('prompt,answer\n2 + 2 =," 4"\n3 + 5 =," 8"\n')
    assert Task.from_file(tmp_path / "sums.csv").answers == (" 4", " 8")


def test_organism_training_never_replaces_a_foreign_folder(tmp_path):
    from tasklens.models import ORGANISM_DIR
    from tasklens.organism.train import OrganismConfig, check_replaceable, train_organism

    foreign = tmp_path / "organism"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(TasklensError, match="not an organism checkpoint"):
        train_organism([load_builtin("addition", "train")], foreign, OrganismConfig(steps=5))
    assert (foreign / "notes.txt").read_text() == "keep"
    (tmp_path / "file").write_text("x")
    with pytest.raises(TasklensError, match="is a file"):
        check_replaceable(tmp_path / "file")
    shutil.copytree(ORGANISM_DIR, tmp_path / "old_organism")
    check_replaceable(tmp_path / "old_organism")  # a checkpoint tasklens wrote may be replaced
    check_replaceable(tmp_path / "new")
    for steps in (0, -3):
        with pytest.raises(TasklensError, match="at least 1 step"):
            train_organism([load_builtin("addition", "train")], tmp_path / "new", OrganismConfig(steps=steps))


def test_organism_train_cli_keeps_a_foreign_folder(tmp_path):
    foreign = tmp_path / "organism"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    result = CliRunner().invoke(app, ["organism", "train", "--out", str(foreign), "--steps", "5"])
    assert result.exit_code == 2 and "not an organism checkpoint" in result.output
    assert (foreign / "notes.txt").read_text() == "keep"


ROOT = Path(__file__).parents[2]
SCRIPTS = sorted(  # the runnable ones: shared modules such as analyses/common.py have no main
    str(p.relative_to(ROOT))
    for folder in ("analyses", "benchmarks")
    for p in (ROOT / folder).glob("*.py")
    if '__name__ == "__main__"' in p.read_text()
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_explains_itself(script):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-500:]


def test_the_performance_benchmark_names_the_extra_it_needs(tmp_path):
    import subprocess
    import sys

    (tmp_path / "captum").mkdir()
    (tmp_path / "captum/__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "benchmarks/performance.py"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert result.returncode != 0 and 'pip install -e ".[test]"' in result.stderr


def test_evaluation_refuses_an_empty_batch(organism, continent):
    with pytest.raises(TasklensError, match="batch_size must be at least 1"):
        tasklens.accuracy(organism, continent, batch_size=0)

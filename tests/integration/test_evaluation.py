"""Evaluation on the organism: log-probabilities in float64, batch sizes checked."""

from __future__ import annotations

import pytest
import torch

import tasklens
from tasklens.errors import TasklensError
from tasklens.evaluation.evaluate import evaluate_prompts
from tasklens.evaluation.metrics import answer_logit

pytestmark = pytest.mark.reliability


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


def test_evaluation_refuses_an_empty_batch(organism, continent):
    with pytest.raises(TasklensError, match="batch_size must be at least 1"):
        tasklens.accuracy(organism, continent, batch_size=0)


@pytest.mark.parametrize(
    ("metric", "shown"),
    [
        (lambda logits, batch: logits[:, -1, :2], r"a tensor of shape \[8, 2\] for a batch of 8 prompts"),
        (lambda logits, batch: logits[:, -1, 0].mean(), r"a tensor of shape \[\] for a batch of 8 prompts"),
        (lambda logits, batch: logits[:, -1, 0].tolist(), "returned a list for a batch of 8 prompts"),
    ],
    ids=["two_per_prompt", "one_for_the_batch", "a_list"],
)
def test_a_metric_of_the_wrong_shape_is_a_clear_error(organism, continent, metric, shown):
    """A scalar would otherwise be broadcast to every prompt and a [batch, 2] tensor fail inside torch."""
    with pytest.raises(TasklensError, match=shown + ".*one value per prompt"):
        evaluate_prompts(organism, continent, metric, batch_size=8)
    reference = evaluate_prompts(organism, continent, "logit", batch_size=8)
    own = evaluate_prompts(
        organism, continent, lambda logits, batch: answer_logit(logits, batch), batch_size=8
    )
    torch.testing.assert_close(own, reference, rtol=0, atol=0)


@pytest.mark.reliability
def test_a_metric_giving_nan_on_half_the_prompts_is_said_and_its_cells_are_not_tested(
    organism, continent, monkeypatch
):
    from tasklens.analysis.matrix import evaluation_matrix
    from tasklens.data.neurons import NeuronSet
    from tasklens.errors import TasklensWarning
    from tasklens.evaluation.metrics import METRICS

    def half_nan(logits, batch):
        value = answer_logit(logits, batch)
        return torch.where(torch.arange(len(value), device=value.device) % 2 == 0, value, torch.nan)

    with pytest.warns(TasklensWarning, match=r"gave 4 non-finite values on the 8 prompts of 'continent_of'"):
        values = evaluate_prompts(organism, continent, half_nan, batch_size=8)
    assert int(torch.isnan(values).sum()) == 4
    monkeypatch.setitem(METRICS._items, "half_nan", half_nan)  # a plug-in metric, for this test only
    neurons = NeuronSet.from_pairs([(3, 1), (3, 2)], (4, 512), "continent_of")
    with pytest.warns(TasklensWarning, match="non-finite"):
        result = evaluation_matrix(organism, [neurons], [continent], 2, metric="half_nan")
    verdict = result.against_random()
    assert verdict["verdict"].str.startswith("not tested").all(), verdict["verdict"].tolist()


def test_answer_metrics_computed_from_the_answer_positions_equal_the_full_logits(organism):
    from tasklens.evaluation.evaluate import evaluate_metrics
    from tasklens.evaluation.metrics import METRICS

    # prompts of several lengths: the kept positions start at the shortest prompt's end
    task = tasklens.load_builtin("addition", "evaluation").head(20)
    names = ["logprob", "exact_match", "prob", "logit_diff", "logit"]
    trimmed = evaluate_metrics(organism, task, names, batch_size=7)
    full = evaluate_metrics(
        organism, task, [lambda lg, b, f=METRICS.get(n): f(lg, b) for n in names], batch_size=7
    )
    assert torch.allclose(trimmed, full, atol=1e-5, rtol=1e-5)  # float32 logits, other matmul shapes
    assert trimmed[:, 0].lt(0).all() and trimmed[:, 1].sum() > 0  # real log-probabilities, some answers right


def _shared_prefix_task() -> tasklens.Task:
    """Prompts that begin with the same long instruction (as a chat template's system turn does)."""
    head = "Answer with the continent only. Say one word. Facts follow: "
    task = tasklens.load_builtin("continent_of", "evaluation").head(12)
    return tasklens.Task.from_lists("prefixed", [head + p for p in task.prompts], list(task.answers))


@pytest.mark.parametrize("kind", ["none", "zero", "mean"])
def test_a_shared_prefix_run_once_gives_the_same_metrics(organism, kind):
    from tasklens.evaluation.evaluate import MIN_SHARED_PREFIX, evaluate_metrics
    from tasklens.interventions import Intervention
    from tasklens.tasks.tokenize import TokenizedTask

    task = _shared_prefix_task()
    neurons = tasklens.NeuronSet.from_pairs(
        [(layer, n) for layer in range(4) for n in range(0, 512, 9)], (4, 512)
    )
    calls: list[tuple[int, int]] = []

    def record(value, hook):
        calls.append(tuple(value.shape[:2]))

    spec = None if kind == "none" else Intervention(kind, neurons, source=task if kind == "mean" else None)
    spec = spec and spec.prepared(organism)  # the mean ablation's means: taken before counting calls
    names = ["logprob", "exact_match", "prob"]
    runs = {}
    for share in (False, True):
        calls.clear()
        with organism.hooks(fwd_hooks=[("hook_embed", record)]):
            if spec is None:
                runs[share] = evaluate_metrics(organism, task, names, batch_size=5, share_prefix=share)
            else:
                with spec.apply(organism):
                    runs[share] = evaluate_metrics(organism, task, names, batch_size=5, share_prefix=share)
        widths = [b.tokens.shape[1] for b in TokenizedTask.for_model(task, organism).batches(5, sort=True)]
        if share:  # each batch: the prefix once (one row), then every row's rest on its cache
            prefix = calls[0][1]
            assert prefix >= MIN_SHARED_PREFIX
            assert calls == [
                c
                for w, rows in zip(widths, (5, 5, 2), strict=True)
                for c in ((1, prefix), (rows, w - prefix))
            ]
        else:
            assert calls == list(zip((5, 5, 2), widths, strict=True))
    torch.testing.assert_close(runs[True], runs[False], atol=1e-5, rtol=0)
    assert runs[False][:, 0].lt(0).all()  # real log-probabilities
    if spec is not None:  # the edit changes the answers, so the equality above says something
        plain = evaluate_metrics(organism, task, names, batch_size=5)
        assert (runs[True][:, 0] - plain[:, 0]).abs().max() > 1e-2


def test_only_pointwise_edits_of_every_position_run_in_pieces():
    from tasklens.interventions import Intervention

    neurons = tasklens.NeuronSet.from_pairs([(0, 1)], (4, 512))
    assert Intervention("zero", neurons).runs_in_pieces
    assert Intervention("amplify", neurons, factor=3.0).runs_in_pieces
    assert not Intervention("zero", neurons, positions=(-1,)).runs_in_pieces
    assert not Intervention("resample", neurons).runs_in_pieces  # its draws depend on the calls

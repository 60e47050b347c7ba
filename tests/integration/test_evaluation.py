"""Evaluation on the organism: log-probabilities in float64, batch sizes checked."""

from __future__ import annotations

import pytest
import torch

import tasklens
from tasklens.errors import TasklensError

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

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

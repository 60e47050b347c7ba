"""Per-prompt metrics read off a forward pass over prompt + answer (teacher forcing).

Each takes the logits of a `Batch` and returns one value per prompt, so a
backward pass of their sum gives every prompt its own gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from tasklens.errors import TasklensError
from tasklens.registry import Registry
from tasklens.tasks.tokenize import Batch


def _answer_token_logprobs(
    logits: Float[Tensor, "batch pos vocab"], batch: Batch
) -> Float[Tensor, "batch pos-1"]:
    """log p(next token) at every position whose next token is an answer token, else 0.

    The log-softmax is taken in float64 and only at those positions (a few per
    prompt): a single neuron's effect on the answer can be as small as float32's
    rounding of a log-probability.
    """
    rows, pos = batch.target_mask()[:, :-1].nonzero(as_tuple=True)
    rows, pos = rows.to(logits.device), pos.to(logits.device)
    targets = batch.tokens.to(logits.device)[rows, pos + 1]
    picked = logits[rows, pos].double().log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    out = logits.new_zeros(logits.shape[0], logits.shape[1] - 1, dtype=torch.float64)
    return out.index_put((rows, pos), picked)


def answer_logprob(logits: Float[Tensor, "batch pos vocab"], batch: Batch) -> Float[Tensor, " batch"]:
    """Sum over the answer's tokens of log p(token | prompt, earlier answer tokens)."""
    return _answer_token_logprobs(logits, batch).sum(-1)


def answer_loss(logits: Float[Tensor, "batch pos vocab"], batch: Batch) -> Float[Tensor, " batch"]:
    """The language-modelling loss on the answer tokens: mean negative log-probability."""
    n = (batch.lengths - batch.prompt_lengths).to(logits.device).clamp_min(1)
    return -_answer_token_logprobs(logits, batch).sum(-1) / n


def answer_logit(logits: Float[Tensor, "batch pos vocab"], batch: Batch) -> Float[Tensor, " batch"]:
    """Sum over the answer's tokens of their raw logits (linear in the final residual)."""
    targets = batch.tokens[:, 1:].to(logits.device)
    picked = logits[:, :-1].gather(-1, targets[..., None])[..., 0]
    return (picked * batch.target_mask()[:, :-1].to(logits.device)).sum(-1)


def first_token_prob(logits: Float[Tensor, "batch pos vocab"], batch: Batch) -> Float[Tensor, " batch"]:
    """Probability of the answer's first token at the last prompt position."""
    rows = torch.arange(batch.size, device=logits.device)
    last = batch.last_prompt.to(logits.device)
    first = batch.tokens[rows.cpu(), batch.prompt_lengths].to(logits.device)
    return logits[rows, last].double().softmax(-1)[rows, first]


def logit_diff(logits: Float[Tensor, "batch pos vocab"], batch: Batch) -> Float[Tensor, " batch"]:
    """Logit of the answer's first token minus the largest other logit, at the last prompt position.

    Positive when the model predicts the answer; for a difference against one chosen
    counterfactual token, pass your own metric function.
    """
    rows = torch.arange(batch.size, device=logits.device)
    last = logits[rows, batch.last_prompt.to(logits.device)]
    gold = batch.tokens[rows.cpu(), batch.prompt_lengths].to(logits.device)
    target = last[rows, gold]
    return target - last.scatter(1, gold[:, None], float("-inf")).max(1).values


def next_token_correct(logits: Float[Tensor, "batch pos vocab"], batch: Batch) -> Float[Tensor, " batch"]:
    """1.0 where every answer token is the argmax given the correct prefix (teacher forcing)."""
    targets = batch.tokens[:, 1:].to(logits.device)
    hit = logits[:, :-1].argmax(-1) == targets
    mask = batch.target_mask()[:, :-1].to(logits.device)
    return (hit | ~mask).all(-1).float()


Metric = Callable[[Tensor, Batch], Tensor]
METRICS: Registry[Metric] = Registry("metric")
for _name, _fn in {
    "logprob": answer_logprob,
    "loss": answer_loss,
    "logit": answer_logit,
    "prob": first_token_prob,
    "logit_diff": logit_diff,
    "next_token": next_token_correct,
    "exact_match": next_token_correct,
}.items():
    METRICS.register(_name, _fn)
    #: reads the logits only from the last prompt position on: the earlier positions' logits
    #: are not computed (a metric of your own without this attribute gets them all)
    _fn.answer_positions = True
    #: never reads the answer window's last position (the answer's last token, which predicts
    #: nothing scored): its logits are not computed (a metric of your own without this reads them)
    _fn.reads_last_position = False


def is_generative(metric) -> bool:
    """Whether a metric is read off generated text (``greedy_match``) rather than one forward pass."""
    return bool(getattr(metric, "generative", False))


def get_metric(name) -> Metric:
    """A teacher-forced metric by name, or ``name`` itself when it is a ``(logits, batch) -> [batch]``
    function; gradient scorers differentiate these.

    Example:
        >>> get_metric("loss") is answer_loss
        True
        >>> get_metric("greedy_match")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tasklens.errors.TasklensError: Metric 'greedy_match' is read off generated text and has no gradient...
    """
    metric = name if callable(name) else METRICS.get(name)
    if is_generative(metric):
        raise TasklensError(
            f"Metric {name!r} is read off generated text and has no gradient; gradient and patching "
            "scorers need a continuous teacher-forced metric such as 'logprob', 'loss' or 'logit_diff'"
        )
    return metric

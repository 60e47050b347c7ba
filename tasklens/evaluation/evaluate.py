"""Evaluating a model on a task: exact match in one pass, and batched greedy decoding.

Greedy decoding advances every prompt of a batch together with the key-value
cache (prompts left-padded, positions derived from the attention mask by the
bridge). Hooks active around these calls (e.g. an ablation) apply to the prompt
and to every generated token.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tasklens import distributed
from tasklens.errors import TasklensError, TasklensWarning
from tasklens.evaluation.metrics import METRICS, is_generative
from tasklens.models import (
    cache_filled,
    cached_calls,
    enable_kv_cache,
    forward_keeping,
    is_bridge,
    logits_at,
)
from tasklens.models.info import check_model
from tasklens.tasks.task import Task, check_task
from tasklens.tasks.tokenize import Batch, TokenizedTask


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Int[Tensor, "b p"], Int[Tensor, "b p"]]:
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        tokens[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return tokens, mask


@torch.no_grad()
def greedy_generate(
    model, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int = 64
) -> list[list[int]]:
    """Greedy continuation of each prompt (token ids in, new token ids out).

    Args:
        model: a TransformerLens bridge.
        prompt_ids: per prompt, its token ids (BOS included if wanted).
        max_new_tokens: tokens to generate per prompt.
        batch_size: prompts decoded together.

    Returns:
        Per prompt, exactly ``max_new_tokens`` generated token ids.
    """
    if batch_size < 1:
        raise TasklensError(f"batch_size must be at least 1, got {batch_size}")
    if not is_bridge(model):
        return _generate_without_cache(model, prompt_ids, max_new_tokens, batch_size)
    enable_kv_cache(model)
    with cached_calls():
        return _generate_with_cache(model, prompt_ids, max_new_tokens, batch_size)


def _generate_with_cache(
    model, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int
) -> list[list[int]]:
    pad_id = model.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    out: list[list[int]] = []
    device = model.cfg.device
    for start in range(0, len(prompt_ids), batch_size):
        tokens, mask = _left_pad(prompt_ids[start : start + batch_size], pad_id)
        tokens, mask = tokens.to(device), mask.to(device)
        logits, cache = model(tokens, attention_mask=mask, return_type="logits_and_cache")
        if not cache_filled(model, cache, tokens.shape[1]):
            rest = prompt_ids[start:]
            return out + _generate_without_cache(model, rest, max_new_tokens, batch_size)
        new = [logits[:, -1].argmax(-1)]
        for _ in range(max_new_tokens - 1):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits, cache = model(
                new[-1][:, None],
                attention_mask=mask,
                past_key_values=cache,
                return_type="logits_and_cache",
            )
            new.append(logits[:, -1].argmax(-1))
        out.extend(torch.stack(new, dim=1).tolist())
    return out


def _generate_without_cache(
    model, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int
) -> list[list[int]]:
    """Greedy decoding without the bridge's key-value cache (a classic HookedTransformer, or
    a bridge whose cache comes back empty, see `cache_filled`): prompts of equal length go
    together, so there is no padding, and every step reruns the sequence (answers are a few
    tokens)."""
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(prompt_ids):
        by_length.setdefault(len(ids), []).append(i)
    out: list[list[int]] = [[] for _ in prompt_ids]
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            idx = group[start : start + batch_size]
            tokens = torch.tensor([list(prompt_ids[i]) for i in idx], device=model.cfg.device)
            for _ in range(max_new_tokens):
                step = model(tokens, return_type="logits")[:, -1].argmax(-1, keepdim=True)
                tokens = torch.cat([tokens, step], dim=1)
            for row, i in enumerate(idx):
                out[i] = tokens[row, len(prompt_ids[i]) :].tolist()
    return out


def normalize(text: str) -> str:
    """The papers' answer normalisation: strip and lower-case."""
    return text.strip().lower()


def exact_match(model, task: Task, batch_size: int = 64) -> Bool[Tensor, " prompt"]:
    """Greedy exact match per prompt, token-exact, in one teacher-forced forward pass.

    Greedy decoding produces exactly the answer's tokens if and only if every answer token
    is the argmax given the prompt and the answer tokens before it, so one forward pass over
    prompt + answer decides it (`tasklens.evaluation.metrics.next_token_correct`), with no generation.
    `greedy_match` decodes instead and compares normalised text (it also forgives case).

    Returns:
        ``[n_prompts]`` bool tensor.

    Example:
        >>> from tasklens import load_builtin, load_model
        >>> model = load_model("organism")
        >>> exact_match(model, load_builtin("continent_of", "evaluation").head(8)).tolist()
        [True, True, True, True, True, True, True, True]
    """
    return evaluate_prompts(model, task, "exact_match", batch_size) > 0.5


def greedy_match(model, task: Task, batch_size: int = 64) -> Bool[Tensor, " prompt"]:
    """Greedy decoding per prompt, compared as text with the answer.

    For each prompt, generate as many tokens as its answer has, decode them, and compare
    with the answer after stripping and lower-casing (prefix match of the first k generated
    tokens, as in the papers). Slower than `exact_match` (a forward per generated token) and
    forgiving of case; use it where the decoded text matters.

    Returns:
        ``[n_prompts]`` bool tensor (under torchrun, each rank generates for its share).
    """
    return distributed.per_prompt(lambda part: _greedy_match(model, part, batch_size), task)


def _greedy_match(model, task: Task, batch_size: int) -> Tensor:
    tok = TokenizedTask.for_model(task, model)
    correct = torch.zeros(len(tok), dtype=torch.bool)
    # group prompts by answer length so each batch generates only what it needs
    by_len: dict[int, list[int]] = {}
    for i, ans in enumerate(tok.answer_ids):
        by_len.setdefault(len(ans), []).append(i)
    for n_new, idx in sorted(by_len.items()):
        generated = greedy_generate(model, [tok.prompt_ids[i] for i in idx], n_new, batch_size)
        for i, ids in zip(idx, generated, strict=True):
            text = model.tokenizer.decode(ids, skip_special_tokens=True)
            correct[i] = normalize(text) == normalize(task.answers[i])
    return correct


greedy_match.generative = True  # read off generated text: `evaluate` calls it with the model


def accuracy(model, task: Task, batch_size: int = 64) -> float:
    """Fraction of prompts answered exactly (greedy, token-exact: see `exact_match`).

    Example:
        >>> from tasklens import load_builtin, load_model
        >>> accuracy(load_model("organism"), load_builtin("continent_of", "evaluation").head(8))
        1.0
    """
    return float(exact_match(model, task, batch_size).float().mean())


def evaluate_prompts(
    model, task: Task, metric: str | Callable = "exact_match", batch_size: int = 64
) -> Float[Tensor, " prompt"]:
    """``metric`` per prompt: ``exact_match`` (default; greedy and token-exact, one pass), a
    teacher-forced metric registered in `tasklens.evaluation.metrics.METRICS` (``logprob``...) or
    ``greedy_match`` (decoded text), by name or as a function."""
    return evaluate_metrics(model, task, [metric], batch_size)[:, 0]


def evaluate_metrics(
    model,
    task: Task,
    metrics: Sequence[str | Callable],
    batch_size: int = 64,
    share_prefix: bool = False,
) -> Float[Tensor, "prompt metric"]:
    """Several metrics per prompt (see `evaluate_prompts`); the teacher-forced ones share one
    forward pass per batch, each generative one decodes on its own.

    With ``share_prefix``, a batch whose prompts begin alike (a chat template's system turn)
    runs that prefix once and each row's rest on its key-value cache. Hooks then see two
    calls, so use it only with edits that allow it (`Intervention.runs_in_pieces`)."""
    check_model(model)
    check_task(task)
    fns = [m if callable(m) else METRICS.get(m) for m in metrics]
    forced = [i for i, fn in enumerate(fns) if not is_generative(fn)]
    out = torch.zeros(len(task), len(fns), dtype=torch.float64)
    if forced:
        values = distributed.per_prompt(
            lambda part: _teacher_forced(model, part, [fns[i] for i in forced], batch_size, share_prefix),
            task,
        )
        out[:, forced] = values.double()
    for i, fn in enumerate(fns):
        if i not in forced:
            out[:, i] = per_prompt_values(fn(model, task, batch_size), fn, len(task))
    _warn_nonfinite(out, fns, task)
    return out


def evaluate_copies(
    model,
    task: Task,
    metrics: Sequence[str | Callable],
    copies: int,
    batch_size: int = 64,
    share_prefix: bool = False,
    packed: bool = False,
) -> Float[Tensor, "copy prompt metric"]:
    """Teacher-forced metrics per prompt on ``copies`` copies of every batch in one forward pass:
    copy ``k`` of a batch is rows ``k*b .. k*b + b - 1``, which `tasklens.interventions.rows.apply_by_rows`
    edits with its own neuron set. Each copy's values are those `evaluate_metrics` gives with that
    edit alone (the same batches, prompts sorted by length; with ``packed``, the batches that hold
    the fewest padded tokens, `TokenizedTask.batches`, which moves values by float rounding). Runs
    on this process alone (no sharing of prompts under torchrun: the caller shares the copies).

    Example:
        >>> from tasklens import load_builtin, load_model
        >>> model = load_model("organism")
        >>> task = load_builtin("continent_of", "evaluation").head(4)
        >>> values = evaluate_copies(model, task, ["exact_match", "logprob"], copies=2)
        >>> tuple(values.shape), bool((values[0] == values[1]).all())
        ((2, 4, 2), True)
    """
    if copies < 1:
        raise TasklensError(f"copies must be at least 1, got {copies}")
    fns = [m if callable(m) else METRICS.get(m) for m in metrics]
    generative = [getattr(fn, "__name__", repr(fn)) for fn in fns if is_generative(fn)]
    if generative:
        raise TasklensError(
            f"evaluate_copies runs teacher-forced metrics only; evaluate {generative} with "
            "evaluate_metrics, one intervention at a time"
        )
    out = torch.zeros(copies, len(task), len(fns), dtype=torch.float64)
    answers_only, drop_last = _window(fns)
    with torch.inference_mode():
        for batch in TokenizedTask.for_model(task, model).batches(batch_size, sort=True, packed=packed):
            tiled = Batch(
                batch.tokens.repeat(copies, 1),
                batch.prompt_lengths.repeat(copies),
                batch.lengths.repeat(copies),
                list(batch.indices) * copies,
            )
            if answers_only:
                logits, seen = _answer_logits(model, tiled, share_prefix, copies, drop_last)
            else:
                logits, seen = model(tiled.tokens.to(model.cfg.device)), tiled
            for j, fn in enumerate(fns):
                values = per_prompt_values(fn(logits, seen), fn, tiled.size)
                out[:, batch.indices, j] = values.view(copies, batch.size)
    for k in range(copies):
        _warn_nonfinite(out[k], fns, task)
    return out


def _warn_nonfinite(out: Tensor, fns: Sequence[Callable], task: Task) -> None:
    bad = (~torch.isfinite(out)).sum(0)
    for i in bad.nonzero().flatten().tolist():
        name = getattr(fns[i], "__name__", repr(fns[i]))
        warnings.warn(
            f"Metric {name!r} gave {int(bad[i])} non-finite values on the {len(task)} prompts of "
            f"{task.name!r}: every mean, interval and verdict that includes them is not tested",
            TasklensWarning,
            stacklevel=3,
        )


def per_prompt_values(value, metric: Callable, n_prompts: int) -> Float[Tensor, " prompt"]:
    """``value``, what ``metric`` returned for ``n_prompts`` prompts, as float64 on the CPU; a clear
    error when it is not one number per prompt (a plug-in metric returning a scalar or logits)."""
    name = getattr(metric, "__name__", repr(metric))
    if not isinstance(value, Tensor):
        problem = f"a {type(value).__name__}"
    elif tuple(value.shape) != (n_prompts,):
        problem = f"a tensor of shape {list(value.shape)}"
    else:
        return value.detach().double().cpu()
    raise TasklensError(
        f"Metric {name!r} returned {problem} for a batch of {n_prompts} prompts, not one value per "
        f"prompt (a tensor of shape [{n_prompts}]); a metric takes (logits, batch) and returns a "
        "[batch] tensor, e.g. logits[:, -1].max(-1).values"
    )


def _teacher_forced(
    model, task: Task, fns: Sequence[Callable], batch_size: int, share_prefix: bool = False
) -> Tensor:
    out = torch.zeros(len(task), len(fns), dtype=torch.float64)
    answers_only, drop_last = _window(fns)
    with torch.inference_mode():
        for batch in TokenizedTask.for_model(task, model).batches(batch_size, sort=True):
            if answers_only:
                logits, seen = _answer_logits(model, batch, share_prefix, drop_last=drop_last)
            else:
                logits, seen = model(batch.tokens.to(model.cfg.device)), batch
            for j, fn in enumerate(fns):
                out[batch.indices, j] = per_prompt_values(fn(logits, seen), fn, batch.size)
    return out


#: the shortest shared prefix worth a call of its own
MIN_SHARED_PREFIX = 8


def _window(fns: Sequence[Callable]) -> tuple[bool, bool]:
    """Whether ``fns`` read the logits of the answer window only, and whether none reads its last
    position."""
    answers_only = all(getattr(fn, "answer_positions", False) for fn in fns)
    return answers_only, answers_only and not any(getattr(fn, "reads_last_position", True) for fn in fns)


def _answer_logits(
    model, batch: Batch, share_prefix: bool, copies: int = 1, drop_last: bool = False
) -> tuple[Tensor, Batch]:
    """Logits only at each row's `Batch.answer_window`, and the batch they line up with.

    On a bridge the unembedding runs at those positions only (Hugging Face's
    ``logits_to_keep``), sparing most of it: a quarter to over half of a small model's
    forward; with ``share_prefix``, see `evaluate_metrics`. ``copies``: the batch holds
    that many equal blocks of rows, each edited its own way (`tasklens.interventions.rows`),
    so a shared prefix runs once per block. With ``drop_last``, the window's last position (read by
    no metric asked for) is not unembedded: its logits are zeros."""
    positions, seen = batch.answer_window()
    device = model.cfg.device
    tokens, positions = batch.tokens.to(device), positions.to(device)
    kept = positions[:, :-1] if drop_last and positions.shape[1] > 1 else positions
    prefix = _shared_prefix(batch) if share_prefix and is_bridge(model) and batch.size > copies else 0
    logits = None
    if prefix >= MIN_SHARED_PREFIX:
        logits = _after_prefix(model, tokens, batch.attention_mask.to(device), kept, prefix, copies)
    if logits is None:
        logits = logits_at(model, tokens, kept)
    if kept.shape[1] < positions.shape[1]:
        logits = torch.cat([logits, logits.new_zeros(logits.shape[0], 1, logits.shape[-1])], dim=1)
    return logits, seen


def _after_prefix(model, tokens, mask, positions, prefix: int, copies: int = 1) -> Tensor | None:
    """The logits at ``positions``, running ``tokens[:, :prefix]`` (the same in every row) once per
    block of rows (``copies`` blocks) and the rest on its key-value cache; None where the bridge
    keeps no cache or no ``logits_to_keep``."""
    enable_kv_cache(model)
    rows = tokens.shape[0] // copies
    with cached_calls():
        first = tokens[::rows, :prefix]
        (_, cache), kept = forward_keeping(model, first, 1, return_type="logits_and_cache")
        if not (kept and cache_filled(model, cache, prefix)):
            return None
        cache.batch_repeat_interleave(rows)
        rest = dict(attention_mask=mask, past_key_values=cache)
        logits, kept = forward_keeping(model, tokens[:, prefix:], positions - prefix, **rest)
    return logits if kept and logits.shape[:2] == positions.shape else None


def _shared_prefix(batch: Batch) -> int:
    """How many leading tokens every row has in common, short of the shortest prompt's last."""
    same = (batch.tokens == batch.tokens[:1]).all(0)
    limit = int(batch.prompt_lengths.min()) - 1
    return int(same[:limit].long().cumprod(0).sum())


def evaluate(model, task: Task, metric: str | Callable = "exact_match", batch_size: int = 64) -> float:
    """Mean over the task's prompts of ``metric`` (see `evaluate_prompts`).

    Example:
        >>> from tasklens import load_builtin, load_model
        >>> model = load_model("organism")
        >>> task = load_builtin("continent_of", "evaluation").head(8)
        >>> evaluate(model, task), -1 < evaluate(model, task, "logprob") < 0
        (1.0, True)
    """
    return float(evaluate_prompts(model, task, metric, batch_size).mean())


METRICS.register("greedy_match", greedy_match)

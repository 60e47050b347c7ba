"""Tokenising a task once, correctly: BOS, padding, prompt and answer positions.

Prompts and answers are tokenised separately and concatenated, so the answer's
tokens are exactly what a model must produce after the prompt. Sequences are
right-padded (a causal model's real positions are then unaffected by padding).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tasklens.errors import TasklensError, TasklensWarning
from tasklens.tasks.task import Task, check_task

#: the real lengths of the rows of the right-padded batch `TokenizedTask.batches` has out, so that
#: an edit at given positions can refuse a position some rows do not have (it would edit padding)
RUNNING: ContextVar[tuple[int, ...] | None] = ContextVar("tasklens_running_batch", default=None)

#: Which token positions a statistic is taken over.
Positions = Literal["last_prompt", "prompt", "answer", "all"]
POSITIONS: tuple[str, ...] = ("last_prompt", "prompt", "answer", "all")


def _bos_id(tokenizer, prepend_bos: bool) -> list[int]:
    if not prepend_bos or tokenizer.bos_token_id is None:
        return []
    return [int(tokenizer.bos_token_id)]


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added."""
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


@dataclass
class TokenizedTask:
    """A task's prompts (and answers) as token id lists, checked against the context.

    Attributes:
        task: the task.
        prompt_ids: per prompt, BOS (if the model uses one) + prompt token ids.
        answer_ids: per prompt, the answer token ids.
        pad_id: id used for padding.
    """

    task: Task
    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]
    pad_id: int

    @classmethod
    def build(cls, task: Task, tokenizer, n_ctx: int, prepend_bos: bool = True) -> TokenizedTask:
        task = check_task(task)
        bos = _bos_id(tokenizer, prepend_bos)
        prompts = [bos + ids for ids in encode(tokenizer, task.prompts)]
        answers = encode(tokenizer, task.answers)
        for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
            if not a:
                raise TasklensError(
                    f"Task {task.name!r}: answer {i} ({task.answers[i]!r}) is empty after "
                    "tokenisation; give answers the tokenizer turns into at least one token"
                )
            if len(p) + len(a) > n_ctx:
                longer, text = ("answer", task.answers[i]) if len(a) > len(p) else ("prompt", task.prompts[i])
                raise TasklensError(
                    f"Task {task.name!r}: prompt {i} and its answer take {len(p) + len(a)} tokens "
                    f"(prompt {len(p)}, answer {len(a)}), more than the model's context of {n_ctx}; "
                    f"shorten the {longer} ({text[:60]!r}...) or use a model with a longer context"
                )
        _warn_split_answers(task, tokenizer, prompts, answers, len(bos))
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        return cls(task=task, prompt_ids=prompts, answer_ids=answers, pad_id=int(pad))

    @classmethod
    def for_model(cls, task: Task, model) -> TokenizedTask:
        """Tokenise for a TransformerLens model (its tokenizer, context and BOS rule).

        The last few results are kept: a matrix evaluates the same task objects many times."""
        check_task(task)
        n_ctx, bos = int(model.cfg.n_ctx), bool(getattr(model.cfg, "default_prepend_bos", True))
        key = (id(task), id(model.tokenizer), n_ctx, bos)
        hit = _RECENT.get(key)
        if hit is not None and hit[0] is task and hit[1] is model.tokenizer:
            _RECENT.move_to_end(key)
            return hit[2]
        tokenized = cls.build(task, model.tokenizer, n_ctx=n_ctx, prepend_bos=bos)
        _RECENT[key] = (task, model.tokenizer, tokenized)
        while len(_RECENT) > _RECENT_SIZE:
            _RECENT.popitem(last=False)
        return tokenized

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def batches(
        self,
        batch_size: int,
        with_answers: bool = True,
        by_length: bool = False,
        sort: bool = False,
        packed: bool = False,
    ) -> Iterator[Batch]:
        """Right-padded batches in task order; with ``sort``, of sequences sorted by length
        (little padding; `Batch.indices` says which prompts each holds); with ``by_length``,
        batches of equal-length sequences (no padding), shortest first; with ``packed``, sorted
        sequences cut into the batches of at most ``batch_size`` that hold the fewest tokens,
        padding included, counting each batch as `PACKING_OVERHEAD` tokens more."""
        if batch_size < 1:
            raise TasklensError(f"batch_size must be at least 1, got {batch_size}")
        lengths = [
            len(p) + (len(a) if with_answers else 0)
            for p, a in zip(self.prompt_ids, self.answer_ids, strict=True)
        ]
        groups = [sorted(range(len(self)), key=lengths.__getitem__) if sort else list(range(len(self)))]
        if packed:
            order = sorted(range(len(self)), key=lengths.__getitem__)
            cuts = _packing([lengths[i] for i in order], batch_size)
            for start, stop in pairwise(cuts):
                yield self._batch(order[start:stop], with_answers)
            return
        if by_length:
            same: dict[int, list[int]] = {}
            for i, n in enumerate(lengths):
                same.setdefault(n, []).append(i)
            groups = [same[n] for n in sorted(same)]
        for group in groups:
            for start in range(0, len(group), batch_size):
                batch = self._batch(group[start : start + batch_size], with_answers)
                token = RUNNING.set(tuple(int(n) for n in batch.lengths))
                try:
                    yield batch
                finally:
                    try:
                        RUNNING.reset(token)
                    except ValueError:  # the generator was closed in another context
                        pass

    def _batch(self, idx: list[int], with_answers: bool) -> Batch:
        return Batch.make(
            [self.prompt_ids[i] for i in idx],
            [self.answer_ids[i] if with_answers else [] for i in idx],
            self.pad_id,
            idx,
        )


#: what a forward pass costs beyond its tokens, in tokens (`TokenizedTask.batches` with ``packed``)
PACKING_OVERHEAD = 64


def _packing(lengths: list[int], batch_size: int) -> list[int]:
    """The cuts ``0 = c_0 < ... < c_n = len(lengths)`` of ascending ``lengths`` into batches of at
    most ``batch_size`` with the fewest padded tokens plus `PACKING_OVERHEAD` per batch."""
    n = len(lengths)
    best, cut = [0] + [None] * n, [0] * (n + 1)
    for stop in range(1, n + 1):
        for start in range(max(0, stop - batch_size), stop):
            cost = best[start] + (stop - start) * lengths[stop - 1] + PACKING_OVERHEAD
            if best[stop] is None or cost < best[stop]:
                best[stop], cut[stop] = cost, start
    cuts, at = [n], n
    while at:
        at = cut[at]
        cuts.append(at)
    return cuts[::-1] if n else [0]


#: (task, tokenizer, TokenizedTask) by their ids; the objects are kept so an id is not reused
_RECENT: OrderedDict[tuple, tuple[Task, object, TokenizedTask]] = OrderedDict()
_RECENT_SIZE = 64

#: a prompt ending in one of these may be followed by a word with no space ("(cat", '"cat')
_OPENERS = "([{\"'`-/\n\t "


def _warn_split_answers(task: Task, tokenizer, prompts, answers, offset: int) -> None:
    """Warn (once per task) when answers are unlikely to be what the model writes after
    their prompt: an answer glued to the prompt's last word or sign (``"AND"`` after
    ``"A:"`` where text has ``" AND"``), a space on both sides (``"is "`` + ``" Paris"``),
    or one that tokenises differently after the prompt than alone. Scorers would then
    score tokens the model would never produce."""
    joint = encode(tokenizer, [p + a for p, a in zip(task.prompts, task.answers, strict=True)])
    odd = [
        i
        for i, ids in enumerate(joint)
        if ids != prompts[i][offset:] + answers[i]
        or (task.answers[i][:1].isalnum() and task.prompts[i][-1:] not in _OPENERS)
        or (task.answers[i][:1].isspace() and task.prompts[i][-1:].isspace())
    ]
    if odd:
        i = odd[0]
        warnings.warn(
            f"Task {task.name!r}: {len(odd)} of {len(task)} answers do not start the way text goes on "
            f"after their prompt (e.g. prompt ...{task.prompts[i][-30:]!r}, answer {task.answers[i]!r}); "
            "an answer usually needs its leading space (' Paris', not 'Paris')",
            TasklensWarning,
            stacklevel=4,
        )


@dataclass
class Batch:
    """One right-padded batch of prompt (+ answer) token sequences.

    Attributes:
        tokens: ``[batch, pos]`` BOS + prompt + answer token ids, right-padded.
        prompt_lengths: ``[batch]`` number of prompt tokens (BOS included).
        lengths: ``[batch]`` number of real tokens.
        indices: the prompts' indices in their task.
    """

    tokens: Int[Tensor, "batch pos"]
    prompt_lengths: Int[Tensor, " batch"]
    lengths: Int[Tensor, " batch"]
    indices: list[int]

    @classmethod
    def make(
        cls, prompts: list[list[int]], answers: list[list[int]], pad_id: int, indices: list[int]
    ) -> Batch:
        seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
        width = max(len(s) for s in seqs)
        tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        for row, seq in enumerate(seqs):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return cls(
            tokens=tokens,
            prompt_lengths=torch.tensor([len(p) for p in prompts]),
            lengths=torch.tensor([len(s) for s in seqs]),
            indices=indices,
        )

    @property
    def size(self) -> int:
        return self.tokens.shape[0]

    def answer_window(self) -> tuple[Int[Tensor, "batch window"], Batch]:
        """Each row's positions from its last prompt token to its last token, left-aligned:
        where a metric reading only the answer needs logits, and the batch seen from there
        (each prompt cut down to its last token). A row's window runs on past its end into
        padding (clamped to the batch's last position), which the cut batch marks as such.

        Example:
            >>> batch = Batch.make([[1, 5, 6], [1, 7]], [[8], [9, 4]], pad_id=0, indices=[0, 1])
            >>> positions, seen = batch.answer_window()
            >>> positions.tolist(), seen.tokens.tolist(), seen.lengths.tolist()
            ([[2, 3, 3], [1, 2, 3]], [[6, 8, 8], [7, 9, 4]], [2, 3])
        """
        start = self.prompt_lengths - 1
        width = int((self.lengths - start).max())
        positions = (start[:, None] + torch.arange(width)).clamp_max(self.tokens.shape[1] - 1)
        seen = Batch(
            self.tokens.gather(1, positions), torch.ones_like(start), self.lengths - start, self.indices
        )
        return positions, seen

    def _pos(self) -> Int[Tensor, "batch pos"]:
        return torch.arange(self.tokens.shape[1]).expand_as(self.tokens)

    @property
    def attention_mask(self) -> Int[Tensor, "batch pos"]:
        return (self._pos() < self.lengths[:, None]).long()

    @property
    def last_prompt(self) -> Int[Tensor, " batch"]:
        """Position of each prompt's last token (where the answer's first token is predicted)."""
        return self.prompt_lengths - 1

    def position_mask(self, positions: Positions) -> Bool[Tensor, "batch pos"]:
        """Mask of the positions a statistic is taken over.

        ``"last_prompt"``: the last prompt token; ``"prompt"``: every prompt token
        (BOS included); ``"answer"``: the answer tokens; ``"all"``: every real token.
        """
        pos = self._pos()
        start = self.prompt_lengths[:, None]
        if positions == "last_prompt":
            return pos == start - 1
        if positions == "prompt":
            return pos < start
        if positions == "answer":
            return (pos >= start) & (pos < self.lengths[:, None])
        if positions == "all":
            return pos < self.lengths[:, None]
        raise TasklensError(f"Unknown positions {positions!r}; choose one of {list(POSITIONS)}")

    def target_mask(self) -> Bool[Tensor, "batch pos"]:
        """Positions whose *next* token is an answer token (where answer loss is read)."""
        pos = self._pos()
        return (pos >= self.prompt_lengths[:, None] - 1) & (pos < self.lengths[:, None] - 1)


def marker_positions(task: Task, tokenizer, prepend_bos: bool = True) -> list[list[int]]:
    """Per prompt, the positions (in the BOS-prefixed sequence) of tokens inside a marker.

    A token counts as a marker token when its characters overlap an occurrence of
    one of ``task.markers`` in the prompt.
    """
    if not task.markers:
        raise TasklensError(
            f"Task {task.name!r} has no markers; CGVST needs the prompt-format marker strings "
            "(e.g. markers=('[INST]', '[/INST]') or ('Q:', 'A:'))"
        )
    offset = len(_bos_id(tokenizer, prepend_bos))
    encoded = tokenizer(list(task.prompts), add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for i, (prompt, spans) in enumerate(zip(task.prompts, encoded["offset_mapping"], strict=True)):
        chars = set()
        for marker in task.markers:
            start = prompt.find(marker)
            while start != -1:
                chars.update(range(start, start + len(marker)))
                start = prompt.find(marker, start + 1)
        positions = [offset + t for t, (a, b) in enumerate(spans) if chars.intersection(range(a, b))]
        if not positions:
            raise TasklensError(
                f"Task {task.name!r}: prompt {i} ({prompt[:50]!r}) contains none of the markers "
                f"{list(task.markers)}; every prompt needs at least one marker for CGVST"
            )
        out.append(positions)
    return out

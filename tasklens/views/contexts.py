"""Top-activating contexts: for every neuron (or a chosen set), the k token positions of a
text source where it fires most, with a window of tokens around each (Neuroscope's view).

The source streams through the model once. Memory is bounded by the neurons x k kept
contexts, not by the source: each batch's best k positions of every neuron are merged into
the running best k in one top-k over all neurons at once, and the token windows are read
back from the centres' positions at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tasklens._version import __version__
from tasklens.data.neurons import NeuronSet
from tasklens.data.provenance import model_fingerprint
from tasklens.errors import TasklensError
from tasklens.io import load_artifact, save_artifact
from tasklens.models import DEFAULT_UNIT, ModelInfo, forward_keeping
from tasklens.models.hooks import owned_hooks
from tasklens.tasks.task import Task
from tasklens.tasks.tokenize import TokenizedTask, encode

PAD = -1


def sequences(model, source: Any, max_tokens: int = 64) -> list[list[int]]:
    """Token id sequences (BOS first, at most ``max_tokens`` each) from a text source.

    ``source``: a `Task` (each prompt with its answer, tokenised as scorers do), a list
    of strings, a ``datasets.Dataset`` with a ``text`` column, or a local ``.txt`` file
    (one document per line) or ``.jsonl`` file (a ``text`` field per line). Longer
    documents are cut into consecutive pieces.
    """
    check_count("max_tokens", max_tokens)
    if isinstance(source, Task):
        tokenized = TokenizedTask.for_model(source, model)
        return [(p + a)[:max_tokens] for p, a in zip(tokenized.prompt_ids, tokenized.answer_ids, strict=True)]
    texts = list(_texts(source))
    if not texts:
        raise TasklensError("The text source is empty; give at least one non-empty text")
    bos = [] if model.tokenizer.bos_token_id is None else [int(model.tokenizer.bos_token_id)]
    piece = max_tokens - len(bos)
    if piece < 1:
        raise TasklensError(f"max_tokens={max_tokens} leaves no room for text after BOS; give at least 2")
    return [
        bos + ids[i : i + piece] for ids in encode(model.tokenizer, texts) for i in range(0, len(ids), piece)
    ]


def check_count(name: str, value: int, most: int | None = None, what: str = "") -> None:
    """Refuse a count that is not a whole number from 1 to ``most`` (``what`` names the bound)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TasklensError(f"{name} must be a whole number of at least 1, got {value!r}")
    if most is not None and value > most:
        raise TasklensError(f"{name}={value} is more than the {most} {what}; give at most {most}")


def _read_lines(path: Path) -> list[str]:
    if path.is_dir():
        raise TasklensError(f"Text source {str(path)!r} is a folder; give a .txt or .jsonl file")
    if not path.is_file():
        raise TasklensError(f"Text source {str(path)!r} does not exist; give a .txt or .jsonl file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise TasklensError(
            f"Text source {str(path)!r} is not UTF-8 text (byte {error.start}); give a .txt or .jsonl file "
            "of UTF-8 text"
        ) from error
    except OSError as error:
        raise TasklensError(
            f"Cannot read text source {str(path)!r} ({error.strerror}); check the file"
        ) from error


def _jsonl_texts(path: Path, lines: list[str]) -> list[str]:
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise TasklensError(
                f"Line {number} of {str(path)!r} is not JSON ({error}); fix the line"
            ) from error
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise TasklensError(
                f'Line {number} of {str(path)!r} has no "text" string; give each line a "text" field'
            )
        if text.strip():
            texts.append(text)
    return texts


def _texts(source: Any) -> Iterable[str]:
    if isinstance(source, str | Path):
        path = Path(source)
        lines = _read_lines(path)
        if path.suffix == ".jsonl":
            return _jsonl_texts(path, lines)
        return (line for line in lines if line.strip())
    if hasattr(source, "column_names"):
        if "text" not in source.column_names:
            raise TasklensError(f"The dataset needs a 'text' column; it has {source.column_names}")
        return (t for t in source["text"] if t and t.strip())
    if isinstance(source, Sequence) and all(isinstance(t, str) for t in source):
        return (t for t in source if t.strip())
    raise TasklensError(
        f"Unknown text source {type(source).__name__}; give a Task, a list of strings, a datasets.Dataset "
        "with a 'text' column, or a .txt / .jsonl file"
    )


@dataclass
class TopContexts:
    """The best ``k`` contexts of every neuron tracked.

    Attributes:
        neurons: ``[n_tracked, 2]`` (layer, index) of each tracked neuron.
        values: ``[n_tracked, k]`` activation at the context's centre, best first (-inf: none).
        windows: ``[n_tracked, k, 2w+1]`` token ids around the centre (-1 past the text's ends).
        window_values: ``[n_tracked, k, 2w+1]`` the neuron's activation on those tokens.
        unit: the neuron unit.
        n_tokens: tokens streamed; seconds: time taken.
        include_special: whether contexts may be centred on a special token (BOS...).
    """

    neurons: Int[Tensor, "tracked 2"]
    values: Float[Tensor, "tracked k"]
    windows: Int[Tensor, "tracked k window"]
    window_values: Float[Tensor, "tracked k window"]
    unit: str = DEFAULT_UNIT
    n_tokens: int = 0
    seconds: float = 0.0
    model: str = ""
    model_fingerprint: str = ""
    include_special: bool = False
    version: str = field(default=__version__)

    def row(self, layer: int, neuron: int) -> int:
        match = ((self.neurons[:, 0] == layer) & (self.neurons[:, 1] == neuron)).nonzero()
        if not len(match):
            raise TasklensError(f"Neuron L{layer}N{neuron} was not tracked; include it in neurons=")
        return int(match[0, 0])

    def contexts(self, layer: int, neuron: int, tokenizer) -> list[dict[str, Any]]:
        """The neuron's contexts: activation, tokens (as text) and per-token activations."""
        i = self.row(layer, neuron)
        out = []
        for slot in range(self.values.shape[1]):
            if not torch.isfinite(self.values[i, slot]):
                break
            keep = self.windows[i, slot] != PAD
            ids = self.windows[i, slot][keep].tolist()
            out.append(
                {
                    "value": float(self.values[i, slot]),
                    "tokens": [tokenizer.decode([t]) for t in ids],
                    "activations": self.window_values[i, slot][keep].tolist(),
                    "centre": int(keep[: self.windows.shape[2] // 2].sum()),
                }
            )
        return out

    def save(self, path: str | Path) -> Path:
        packed = torch.cat(
            [self.values[..., None], self.windows.float(), self.window_values], dim=-1
        )  # [tracked, k, 1 + 2 (2w+1)]
        meta = {
            "kind": "TopContexts",
            "neurons": self.neurons.tolist(),
            "unit": self.unit,
            "n_tokens": self.n_tokens,
            "seconds": self.seconds,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "include_special": self.include_special,
            "version": self.version,
        }
        return save_artifact(path, packed, meta)

    @classmethod
    def load(cls, path: str | Path) -> TopContexts:
        packed, meta = load_artifact(path, "TopContexts")
        width = (packed.shape[-1] - 1) // 2
        return cls(
            neurons=torch.tensor(meta["neurons"], dtype=torch.long).view(-1, 2),
            values=packed[..., 0],
            windows=packed[..., 1 : 1 + width].long(),
            window_values=packed[..., 1 + width :],
            unit=meta["unit"],
            n_tokens=meta["n_tokens"],
            seconds=meta["seconds"],
            model=meta.get("model", ""),
            model_fingerprint=meta.get("model_fingerprint", ""),
            include_special=meta.get("include_special", True),
            version=meta.get("version", ""),
        )


def _batches(seqs: list[list[int]], batch_size: int) -> Iterator[Tensor]:
    for start in range(0, len(seqs), batch_size):
        group = seqs[start : start + batch_size]
        tokens = torch.full((len(group), max(map(len, group))), PAD, dtype=torch.long)
        for row, ids in enumerate(group):
            tokens[row, : len(ids)] = torch.tensor(ids)
        yield tokens


def _id_windows(seqs: list[list[int]], where: Tensor, window: int, longest: int) -> Tensor:
    """Token ids around each centre ``where`` (sequence * longest + position): ``[*where, 2w+1]``."""
    ids = torch.full((len(seqs), longest + 2 * window), PAD, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, window : window + len(seq)] = torch.tensor(seq)
    sequence, position = where // longest, where % longest
    first = sequence * ids.shape[1] + position
    return ids.flatten()[first[..., None] + torch.arange(2 * window + 1)]


@torch.no_grad()
def top_contexts(
    model,
    source: Any,
    neurons: NeuronSet | None = None,
    k: int = 10,
    window: int = 8,
    unit: str = DEFAULT_UNIT,
    batch_size: int = 16,
    max_tokens: int = 64,
    include_special: bool = False,
) -> TopContexts:
    """Stream ``source`` (see `sequences`) once and keep each neuron's ``k`` top contexts.

    Args:
        neurons: the neurons tracked (default: every neuron of the model).
        k: contexts kept per neuron (at most one per eligible token of the source).
        window: tokens kept on each side of a context's centre.
        include_special: also centre contexts on special tokens (BOS, EOS, padding, chat
            markers). Off by default: a causal model's state at BOS is the same in every text,
            so a neuron that fires there would fill its top contexts with one repeated value.
            Special tokens still appear inside the windows around other centres.

    Returns:
        `TopContexts`: per neuron, the activations and windows of its best ``k`` centres.

    >>> from tasklens.models import load_model
    >>> model = load_model("organism")
    >>> found = top_contexts(model, ["Country: Chad. Continent: Africa"], k=3, window=2)
    >>> len(found.contexts(3, 86, model.tokenizer))  # none of them centred on <s>
    3
    """
    info = ModelInfo.of(model)
    info.check_unit(unit)
    check_count("k", k)
    check_count("batch_size", batch_size)
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise TasklensError(f"window must be a whole number of at least 0, got {window!r}")
    seqs = sequences(model, source, max_tokens)
    skipped = set() if include_special else set(getattr(model.tokenizer, "all_special_ids", None) or ())
    special = torch.tensor(sorted(skipped), dtype=torch.long)
    eligible = sum(t not in skipped for ids in seqs for t in ids)
    if eligible == 0:
        raise TasklensError(
            "The text source holds only special tokens (BOS...); give text, or include_special=True"
        )
    k = min(k, eligible)  # no more contexts than positions
    mask = (
        neurons.check_fits(info.shape).mask
        if neurons is not None
        else torch.ones(info.shape, dtype=torch.bool)
    )
    tracked = mask.nonzero()  # layer-major, indices ascending: the order of the rows below
    per_layer = {
        layer: mask[layer].nonzero().flatten() for layer in range(info.n_layers) if mask[layer].any()
    }
    start = time.perf_counter()
    width = 2 * window + 1
    longest = max(map(len, seqs))
    n = len(tracked)
    values = torch.full((n, k), -torch.inf)
    where = torch.zeros(n, k, dtype=torch.long)  # sequence * longest + position of each centre
    window_values = torch.zeros(n, k, width)
    offsets = torch.arange(-window, window + 1)
    store: dict[int, Tensor] = {}
    whole = {layer: len(idx) == info.d_mlp for layer, idx in per_layer.items()}
    hooks = [
        (
            info.hook_name(layer, unit),
            lambda act, hook, layer=layer: store.__setitem__(
                layer, act.detach() if whole[layer] else act[..., per_layer[layer]]
            ),
        )
        for layer in per_layer
    ]
    pad_id = model.tokenizer.pad_token_id or 0
    n_tokens = done = 0
    with owned_hooks(model, hooks):
        for tokens in _batches(seqs, batch_size):
            real = tokens != PAD
            n_tokens += int(real.sum())
            masked = tokens.masked_fill(~real, pad_id).to(model.cfg.device)
            forward_keeping(model, masked, 1, return_type=None)  # for the hooks only
            rows, length = tokens.shape
            acts = torch.cat([store.pop(layer).float().cpu() for layer in sorted(per_layer)], dim=-1)
            acts = acts.view(rows * length, n)  # a row per position, a column per tracked neuron
            others = (~real | torch.isin(tokens, special)).flatten().nonzero().flatten()
            kept = acts[others]  # no centre on padding or BOS...: -inf there for the top-k only
            acts[others] = -torch.inf
            top = acts.topk(min(k, rows * length), dim=0)  # [k', n]
            acts[others] = kept
            # the slots hold each neuron's best k in no order: a context that enters the best k
            # takes the slot of one that leaves it, so only the m arrivals are read and written
            candidates = torch.cat([values, top.values.T], dim=1)
            stays = torch.zeros(candidates.shape, dtype=torch.bool)
            stays.scatter_(1, candidates.topk(k, dim=1).indices, True)
            leaving = (~stays[:, :k]).nonzero()  # [m, 2] (neuron, slot), in neuron order
            arriving = stays[:, k:].nonzero()  # [m, 2] (neuron, rank): as many per neuron
            neuron, slot, rank = leaving[:, 0], leaving[:, 1], arriving[:, 1]
            centre = top.indices[rank, neuron]  # row of ``acts``: sequence * length + position
            row, position = centre // length, centre % length
            values[neuron, slot] = top.values[rank, neuron]
            where[neuron, slot] = (done + row) * longest + position
            around = position[:, None] + offsets  # [m, width]
            inside = (around >= 0) & (around < length)
            at = row[:, None] * length + around.clamp(0, length - 1)
            inside &= real.flatten()[at]
            window_values[neuron, slot] = acts[at, neuron[:, None]].masked_fill_(~inside, 0.0)
            done += rows
    values, order = values.sort(dim=1, descending=True)
    where = where.gather(1, order)
    window_values = window_values.gather(1, order[..., None].expand(-1, -1, width))
    windows = _id_windows(seqs, where, window, longest)  # [n, k, width]
    empty = ~torch.isfinite(values)
    windows[empty] = PAD
    window_values = window_values.masked_fill(empty[..., None], 0.0)
    return TopContexts(
        neurons=tracked,
        values=values,
        windows=windows,
        window_values=window_values,
        unit=unit,
        n_tokens=n_tokens,
        seconds=round(time.perf_counter() - start, 3),
        model=info.name,
        model_fingerprint=model_fingerprint(model),
        include_special=include_special,
    )

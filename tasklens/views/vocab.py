"""Vocabulary decoding: the tokens each MLP neuron's weights promote and suppress.

Output side (every MLP): neuron j of layer l writes its activation times row j of
W_out into the residual stream (through the block's post-MLP norm where it has one:
Gemma-2/3 and OLMo-2 scale the write by that norm's weight ``g_post``); read through
the final norm's scale and the unembedding, that write raises some tokens' logits and
lowers others':

    logit_effect[l, j] = (center(W_out[l][j] * g_post) * g_final) @ W_U

(``center`` subtracts the mean for LayerNorm models; RMSNorm models skip it; the
norms' divisions by their inputs' scales are positive factors, left out, so the
ranking is exact and the values are per unit of normalised residual.) The write
direction is read off the block's own modules (`tasklens.models.shortcuts`) and, once
per model, compared with the write the model itself makes; a family outside the
conformance table, or a model that disagrees, gets each neuron's write measured by
running the block instead.

Input side: which tokens, taken straight from the embedding through the layer's own
MLP-input norm module (checked once per model against what the MLP reads; none on
OLMo-2), most drive the neuron's gate (``hook_pre``: the gate projection of a gated
MLP, W_in of a GELU MLP) or its up projection (``hook_pre_linear``, gated MLPs only).
This is the direct path from the embedding: in later layers the residual stream has
moved far from any single token's embedding. A family outside the conformance table
is refused (there is no exact path to fall back to).

Everything is batched over neurons, so memory stays at ``chunk x vocab`` floats
whatever the model's size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tasklens._version import __version__
from tasklens.data.neurons import NeuronSet
from tasklens.data.provenance import model_fingerprint
from tasklens.errors import TasklensError, check_choice
from tasklens.io import load_artifact, save_artifact
from tasklens.models import ModelInfo, mlp_weight
from tasklens.models.shortcuts import (
    centres,
    check_shortcut,
    family,
    input_norm_gap,
    measured_write_directions,
    mlp_input_norm,
    norm_scale,
    normalised_embedding,
    write_directions,
)
from tasklens.views.contexts import check_count

SIDES = ("output", "hook_pre", "hook_pre_linear")


def _center(x: Tensor, model) -> Tensor:
    """``x`` as the final norm reads it before scaling: centred where it is a LayerNorm."""
    return x - x.mean(-1, keepdim=True) if centres(model.ln_final) else x


@dataclass
class NeuronVocab:
    """The top and bottom tokens of every neuron on one side (see the module docstring).

    Attributes:
        top_ids, top_values: ``[n_layers, d_mlp, k]`` the k tokens scoring highest and their scores.
        bottom_ids, bottom_values: ``[n_layers, d_mlp, k]`` the k lowest (most suppressed), lowest first.
        side: ``"output"`` (logit effect of W_out rows), ``"hook_pre"`` or ``"hook_pre_linear"``
            (embedding read by the gate / up projection).
        tokens: the vocabulary, as strings (index = token id).
        model, model_fingerprint, seconds, version: provenance.
    """

    top_ids: Int[Tensor, "layer neuron k"]
    top_values: Float[Tensor, "layer neuron k"]
    bottom_ids: Int[Tensor, "layer neuron k"]
    bottom_values: Float[Tensor, "layer neuron k"]
    side: str
    tokens: list[str] = field(repr=False)
    model: str = ""
    model_fingerprint: str = ""
    seconds: float = 0.0
    version: str = __version__

    def top(self, layer: int, neuron: int) -> list[tuple[str, float]]:
        return [
            (self.tokens[int(i)], float(v))
            for i, v in zip(self.top_ids[layer, neuron], self.top_values[layer, neuron], strict=True)
        ]

    def bottom(self, layer: int, neuron: int) -> list[tuple[str, float]]:
        return [
            (self.tokens[int(i)], float(v))
            for i, v in zip(self.bottom_ids[layer, neuron], self.bottom_values[layer, neuron], strict=True)
        ]

    def to_frame(self, pairs: list[tuple[int, int]] | None = None) -> pd.DataFrame:
        """One row per neuron, keyed by (layer, neuron): its top and bottom tokens as text."""
        n_layers, width, _ = self.top_ids.shape
        pairs = pairs if pairs is not None else [(a, b) for a in range(n_layers) for b in range(width)]
        rows = [
            dict(
                layer=layer,
                neuron=neuron,
                promotes=" | ".join(t for t, _ in self.top(layer, neuron)),
                suppresses=" | ".join(t for t, _ in self.bottom(layer, neuron)),
                top_score=float(self.top_values[layer, neuron, 0]),
            )
            for layer, neuron in pairs
        ]
        return pd.DataFrame(rows).set_index(["layer", "neuron"])

    def save(self, path: str | Path) -> Path:
        """``path.safetensors`` (ids and values) + ``path.json`` (side, vocabulary, provenance)."""
        packed = torch.stack(
            [self.top_ids.float(), self.top_values, self.bottom_ids.float(), self.bottom_values]
        )
        if self.top_ids.max() >= 2**24:
            raise TasklensError("Vocabularies over 16M tokens do not fit this file format")
        meta = {
            "kind": "NeuronVocab",
            "side": self.side,
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "seconds": self.seconds,
            "version": self.version,
            "tokens": self.tokens,
        }
        return save_artifact(path, packed, meta)

    @classmethod
    def load(cls, path: str | Path) -> NeuronVocab:
        packed, meta = load_artifact(path, "NeuronVocab")
        return cls(
            top_ids=packed[0].long(),
            top_values=packed[1],
            bottom_ids=packed[2].long(),
            bottom_values=packed[3],
            side=meta["side"],
            tokens=meta["tokens"],
            model=meta.get("model", ""),
            model_fingerprint=meta.get("model_fingerprint", ""),
            seconds=meta.get("seconds", 0.0),
            version=meta.get("version", ""),
        )


def vocabulary(model) -> list[str]:
    """Every token of the model's vocabulary as text (index = token id)."""
    tokenizer = model.tokenizer
    size = int(model.cfg.d_vocab)
    return [tokenizer.decode([i]) for i in range(size)]


@torch.no_grad()
def decode_neurons(
    model, side: str = "output", k: int = 10, chunk: int = 512, neurons: NeuronSet | None = None
) -> NeuronVocab:
    """Decode every MLP neuron to the ``k`` tokens it promotes most and least (see module docstring).

    Args:
        side: ``"output"`` (default), ``"hook_pre"`` or ``"hook_pre_linear"``.
        k: tokens kept per neuron and direction.
        chunk: neurons decoded at a time (memory: ``chunk x vocab`` floats).
        neurons: decode only these (the others keep token 0 and score 0); default all.
    """
    check_choice("side", side, SIDES)
    check_count("k", k, int(model.cfg.d_vocab), "tokens in the vocabulary")
    check_count("chunk", chunk)
    info = ModelInfo.of(model)
    if side != "output":
        info.check_unit(side)
    start = time.perf_counter()
    d_model = int(model.cfg.d_model)
    shape = (info.n_layers, info.d_mlp, k)
    top_ids, bottom_ids = torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long)
    top_values, bottom_values = torch.zeros(shape), torch.zeros(shape)
    shortcut = side == "output" and check_shortcut(
        model, "output_decoding", lambda: _write_gap(model, info.n_layers)
    )
    if side == "output":
        reader = (
            model.W_U.detach().float() * norm_scale(model.ln_final, d_model).to(model.W_U.device)[:, None]
        )
    else:
        if not check_shortcut(model, "input_decoding", lambda: input_norm_gap(model)):
            raise TasklensError(
                f"Input-side decoding reads each token's embedding through the MLP's input norm, "
                f"which tasklens has not verified on {info.name!r} ({family(model)}; see "
                "docs/conformance.md); decode side='output' instead"
            )
        # every token as the MLPs' input norm sees it before its weight, shared by every layer:
        # each layer's weight goes on its [d_mlp, d_model] rows, not on the [vocab, d_model] table
        reader = normalised_embedding(model).T  # [d_model, vocab]
    chosen = (
        neurons.check_fits(info.shape).mask
        if neurons is not None
        else torch.ones(info.shape, dtype=torch.bool)
    )
    for layer in range(info.n_layers):
        idx = chosen[layer].nonzero().flatten()
        if not len(idx):
            continue
        if side == "output":
            rows = _output_rows(model, layer, idx, shortcut)  # [len(idx), d_model]
        else:
            weight = "W_gate" if (side == "hook_pre" and info.gated) else "W_in"
            rows = mlp_weight(model, layer, weight).detach().float().T[idx.to(reader.device)]
            norm = mlp_input_norm(model, layer)
            if norm is not None:
                rows = rows * norm_scale(norm, d_model).to(reader.device)
        for lo in range(0, len(idx), chunk):
            part = idx[lo : lo + chunk]
            scores = rows[lo : lo + chunk].to(reader.device) @ reader  # [chunk, vocab]
            high = scores.topk(k, dim=-1)
            low = scores.topk(k, dim=-1, largest=False)
            top_ids[layer, part], top_values[layer, part] = high.indices.cpu(), high.values.cpu()
            bottom_ids[layer, part], bottom_values[layer, part] = low.indices.cpu(), low.values.cpu()
    return NeuronVocab(
        top_ids,
        top_values,
        bottom_ids,
        bottom_values,
        side,
        vocabulary(model),
        info.name,
        model_fingerprint(model),
        round(time.perf_counter() - start, 3),
    )


def _output_rows(model, layer: int, idx: Tensor, shortcut: bool) -> Tensor:
    """Each neuron's write direction into the residual stream, as the final norm reads it."""
    if shortcut:
        rows = write_directions(model, layer, mlp_weight(model, layer, "W_out").detach().float()[idx])
    else:
        rows = torch.cat([measured_write_directions(model, layer, part) for part in idx.split(256)]).to(
            mlp_weight(model, layer, "W_out").device
        )
    return _center(rows, model)


def _write_gap(model, n_layers: int, k: int = 3) -> float:
    """Largest 1 - cosine between the read-off write directions of a few neurons (first and last
    layer) and the writes the model makes when those rows are added to its MLP's output."""
    gap = 0.0
    for layer in sorted({0, n_layers - 1}):
        neurons = torch.arange(k)
        measured = measured_write_directions(model, layer, neurons)
        rows = mlp_weight(model, layer, "W_out").detach().float()[neurons.to(model.cfg.device)]
        read = write_directions(model, layer, rows).cpu()
        cosine = torch.nn.functional.cosine_similarity(measured.double(), read.double(), dim=-1)
        gap = max(gap, float((1 - cosine).abs().max()))
    return gap


def describe(vocab: NeuronVocab, layer: int, neuron: int, n: int = 5) -> dict[str, Any]:
    """The decoded tokens of one neuron as plain data."""
    return {
        "side": vocab.side,
        "promotes": vocab.top(layer, neuron)[:n],
        "suppresses": vocab.bottom(layer, neuron)[:n],
    }

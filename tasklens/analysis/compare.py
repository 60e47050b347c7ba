"""Comparing neuron sets across tasks: overlap, shared vs exclusive, parameter similarity.

Pure functions of `NeuronSet`s (and model weights); the causal comparisons
(cumulativity, interference, cross-language) live in `tasklens.analysis.experiments`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import hypergeom

from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError
from tasklens.models import mlp_weight


@dataclass(frozen=True)
class Overlap:
    """Overlap of two neuron sets drawn from ``total`` neurons.

    Attributes:
        a, b: set sizes; shared: |A & B|; union: |A | B|; jaccard: shared / union;
        expected: shared count expected by chance (|A| |B| / total);
        p_value: hypergeometric P(shared >= observed) for independent random sets.
    """

    a: int
    b: int
    shared: int
    union: int
    total: int
    jaccard: float
    expected: float
    p_value: float


def overlap(a: NeuronSet, b: NeuronSet) -> Overlap:
    """Counts, Jaccard index and hypergeometric p-value of two sets' overlap."""
    a.check_fits(b.shape)
    shared, union = len(a & b), len(a | b)
    total = a.mask.numel()
    p = float(hypergeom.sf(shared - 1, total, len(a), len(b)))
    return Overlap(
        len(a), len(b), shared, union, total, shared / union if union else 0.0, len(a) * len(b) / total, p
    )


def overlap_matrix(sets: Sequence[NeuronSet], value: str = "jaccard") -> pd.DataFrame:
    """Task x task matrix of an `Overlap` field (``jaccard``, ``shared``, ``p_value``...)."""
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise TasklensError(f"Neuron sets need distinct names for a matrix, got {names}")
    data = [[getattr(overlap(a, b), value) for b in sets] for a in sets]
    return pd.DataFrame(data, index=names, columns=names)


def membership(sets: Sequence[NeuronSet]) -> torch.Tensor:
    """``[n_layers, d_mlp]`` count of sets each neuron belongs to."""
    if not sets:
        raise TasklensError("membership needs at least one neuron set")
    return torch.stack([s.check_fits(sets[0].shape).mask for s in sets]).sum(0)


def exclusive(sets: Sequence[NeuronSet]) -> dict[str, NeuronSet]:
    """Per set, the neurons in that set and in no other."""
    count = membership(sets)
    return {s.name: NeuronSet(s.mask & (count == 1), f"{s.name}:exclusive") for s in sets}


def shared(sets: Sequence[NeuronSet]) -> dict[str, NeuronSet]:
    """Per set, its neurons that at least one other set also has."""
    count = membership(sets)
    return {s.name: NeuronSet(s.mask & (count >= 2), f"{s.name}:shared") for s in sets}


def shared_by_all(sets: Sequence[NeuronSet]) -> NeuronSet:
    return NeuronSet(membership(sets) == len(sets), "shared_by_all")


def sharing_table(sets: Sequence[NeuronSet]) -> pd.DataFrame:
    """Per task and layer: neurons exclusive to it, shared with others, shared by all."""
    excl, shar, every = exclusive(sets), shared(sets), shared_by_all(sets)
    rows = []
    for s in sets:
        for layer, (n, e, sh, al) in enumerate(
            zip(
                s.counts_per_layer(),
                excl[s.name].counts_per_layer(),
                shar[s.name].counts_per_layer(),
                every.counts_per_layer(),
                strict=True,
            )
        ):
            rows.append(dict(task=s.name, layer=layer, total=n, exclusive=e, shared=sh, shared_by_all=al))
    return pd.DataFrame(rows)


def parameter_vectors(model, neurons: NeuronSet, layer: int) -> torch.Tensor:
    """Concatenated parameters of a set's neurons in one layer: their W_in/W_gate rows, W_out columns.

    Returns ``[n_selected, params_per_neuron]`` (rows in neuron-index order).
    """
    idx = neurons.mask[layer].nonzero().flatten()
    parts = [mlp_weight(model, layer, "W_in")[:, idx].T, mlp_weight(model, layer, "W_out")[idx]]
    if getattr(model.cfg, "gated_mlp", False):
        parts.insert(1, mlp_weight(model, layer, "W_gate")[:, idx].T)
    return torch.cat([p.detach().float() for p in parts], dim=1)


def parameter_similarity(model, a: NeuronSet, b: NeuronSet) -> list[float]:
    """Per layer, cosine similarity between the flattened parameter vectors of two sets' neurons.

    Following Leng & Xiong, each set's neurons in a layer are taken as one vector
    (their parameters, zero elsewhere), so identical sets score 1 and disjoint
    sets 0; layers where either set is empty give NaN.
    """
    a.check_fits(b.shape)
    sims = []
    for layer in range(a.shape[0]):
        union = (a.mask[layer] | b.mask[layer]).nonzero().flatten()
        if not a.mask[layer].any() or not b.mask[layer].any():
            sims.append(float("nan"))
            continue
        full = parameter_vectors(model, NeuronSet(_row_mask(a.shape, layer, union), "u"), layer)
        va = full * a.mask[layer][union].float()[:, None]
        vb = full * b.mask[layer][union].float()[:, None]
        sims.append(float(torch.nn.functional.cosine_similarity(va.flatten(), vb.flatten(), dim=0)))
    return sims


def exclusive_parameter_similarity(model, a: NeuronSet, b: NeuronSet) -> list[float]:
    """Per layer, cosine similarity between the mean parameter vector of ``a``'s neurons that
    ``b`` lacks and that of ``b``'s neurons that ``a`` lacks.

    Unlike `parameter_similarity` (one vector per set, zero outside it, which rises with the
    sets' overlap), no neuron counts on both sides, so the measure says whether the two sets'
    own neurons are alike, whatever their overlap. Layers where either part is empty give NaN.
    """
    a.check_fits(b.shape)
    sims = []
    for layer in range(a.shape[0]):
        only_a, only_b = a.mask[layer] & ~b.mask[layer], b.mask[layer] & ~a.mask[layer]
        if not only_a.any() or not only_b.any():
            sims.append(float("nan"))
            continue
        va = parameter_vectors(
            model, NeuronSet(_row_mask(a.shape, layer, only_a.nonzero().flatten()), "a"), layer
        )
        vb = parameter_vectors(
            model, NeuronSet(_row_mask(a.shape, layer, only_b.nonzero().flatten()), "b"), layer
        )
        sims.append(float(torch.nn.functional.cosine_similarity(va.mean(0), vb.mean(0), dim=0)))
    return sims


def _rank_correlation(x, y, axis: int = -1):
    """Pearson correlation of the ranks along ``axis`` (Spearman's rho), for batches of shuffles."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=axis), rankdata(y, axis=axis)
    rx, ry = rx - rx.mean(axis, keepdims=True), ry - ry.mean(axis, keepdims=True)
    return (rx * ry).sum(axis) / np.sqrt((rx**2).sum(axis) * (ry**2).sum(axis))


def _row_mask(shape, layer: int, idx: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[layer, idx] = True
    return mask


def similarity_transfer_correlation(
    pairs: pd.DataFrame, similarity: str, transfer: str, n_resamples: int = 9999, seed: int = 0
) -> dict[str, float]:
    """Pearson and Spearman correlation between a similarity and a transfer measure over task pairs,
    with a two-sided permutation p-value for the Spearman (``p_permutation``: the transfer values
    shuffled over the pairs, `scipy.stats.permutation_test`).

    Args:
        pairs: one row per (task_a, task_b) pair.
        similarity: column with e.g. the mean per-layer parameter similarity of the two sets.
        transfer: column with the cross-task measure (fine-tuning transfer in Leng & Xiong;
            any per-pair effect, such as the drop on b when a's neurons are off).
    """
    from scipy.stats import pearsonr, permutation_test, spearmanr

    data = pairs[[similarity, transfer]].dropna()
    if len(data) < 3:
        raise TasklensError(f"Need at least 3 task pairs with both measures, got {len(data)}")
    x, y = data[similarity].to_numpy(dtype=float), data[transfer].to_numpy(dtype=float)

    test = permutation_test(
        (x, y),
        _rank_correlation,
        permutation_type="pairings",
        n_resamples=n_resamples,
        rng=seed,
        vectorized=True,
    )
    return {
        "pearson": float(pearsonr(x, y).statistic),
        "spearman": float(spearmanr(x, y).statistic),
        "p_permutation": float(test.pvalue),
        "n_pairs": len(data),
    }

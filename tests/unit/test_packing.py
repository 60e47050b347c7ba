"""Packed batches (`TokenizedTask.batches` with ``packed``): the fewest padded tokens plus a
forward pass's overhead, checked against every way of cutting the sorted lengths."""

from __future__ import annotations

import itertools
import random

from tasklens.tasks.tokenize import PACKING_OVERHEAD, _packing


def _cost(lengths: list[int], cuts: list[int]) -> int:
    return sum((b - a) * lengths[b - 1] + PACKING_OVERHEAD for a, b in itertools.pairwise(cuts))


def test_packing_finds_the_cheapest_cuts():
    rng = random.Random(0)
    for _ in range(200):
        lengths = sorted(
            rng.choice([rng.randint(3, 12), rng.randint(20, 90)]) for _ in range(rng.randint(1, 9))
        )
        size = rng.randint(1, 5)
        cuts = _packing(lengths, size)
        n = len(lengths)
        assert cuts[0] == 0 and cuts[-1] == n and all(0 < b - a <= size for a, b in itertools.pairwise(cuts))
        best = min(
            _cost(lengths, [0, *inner, n])
            for k in range(n)
            for inner in itertools.combinations(range(1, n), k)
            if all(b - a <= size for a, b in itertools.pairwise([0, *inner, n]))
        )
        assert _cost(lengths, cuts) == best


def test_packing_splits_where_padding_costs_more_than_a_pass():
    short, long = [5] * 8, [60] * 8
    assert _packing(short + long, 32) == [0, 8, 16]  # 8 x 55 padded tokens cost more than a pass
    assert _packing([5, 6, 7, 8], 32) == [0, 4]  # a few padded tokens cost less than a pass
    assert _packing([], 4) == [0]

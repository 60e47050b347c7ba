"""Deterministic choices: fact splits, held-out instances, samples, corruption partners.

Everything here is seeded from strings through SHA-256, never Python's ``hash()``
(which is salted per process), so every run makes the same choices.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable, Iterable, Sequence

DETECTION_FRACTION = 0.75
HELDOUT_INSTANCE_FRACTION = 0.10


def stable_int(*parts: str) -> int:
    """A 64-bit integer determined only by ``parts``."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def seeded_rng(*parts: str) -> random.Random:
    """A random generator seeded by ``parts``."""
    return random.Random(stable_int(*parts))


def fact_split(key: str) -> str:
    """``"detection"`` or ``"evaluation"`` for a fact's subject key (~75 % / 25 %).

    Depends on the key alone, so a country lands in the same split in every task
    and language that uses its ISO code.
    """
    bucket = stable_int("tasklens-fact-split", key) % 10_000
    return "detection" if bucket < DETECTION_FRACTION * 10_000 else "evaluation"


def heldout_keys(keys: Sequence[str], seed: str) -> frozenset[str]:
    """A fixed random ~10 % of ``keys`` (seeded by ``seed``)."""
    count = round(len(keys) * HELDOUT_INSTANCE_FRACTION)
    return frozenset(seeded_rng("tasklens-heldout", seed).sample(list(keys), count))


def halves(keys: Sequence[str], seed: str) -> tuple[frozenset[str], frozenset[str]]:
    """Two disjoint halves of ``keys``, chosen at random (seeded)."""
    shuffled = list(keys)
    seeded_rng("tasklens-halves", seed).shuffle(shuffled)
    middle = len(shuffled) // 2
    return frozenset(shuffled[:middle]), frozenset(shuffled[middle:])


def sample_indices(total: int, cap: int | None, *seed: str) -> list[int]:
    """Sorted indices of a seeded sample of ``cap`` out of ``range(total)`` (all if fewer)."""
    if cap is None or total <= cap:
        return list(range(total))
    return sorted(seeded_rng("tasklens-sample", *seed).sample(range(total), cap))


def corruption_partners(
    answers: Sequence[str],
    shapes: Sequence[tuple[Hashable, ...]],
    wanted: Iterable[int],
    *seed: str,
) -> dict[int, int]:
    """For each index in ``wanted``, another index whose answer differs.

    ``shapes[i]`` lists keys from most to least specific (say subject length, then
    word count); the partner is taken from the most specific group that has a
    different answer, so corrupted prompts tend to keep the clean prompt's length.
    Within a group the partner is the next different-answer item in a seeded
    shuffled cycle, which never maps an item to itself.
    """
    n = len(answers)
    order = list(range(n))
    seeded_rng("tasklens-corrupt", *seed).shuffle(order)
    n_tiers = len(shapes[0]) if n else 0
    groups: list[dict[Hashable, list[int]]] = [{} for _ in range(n_tiers + 1)]
    for i in order:
        for tier in range(n_tiers):
            groups[tier].setdefault(shapes[i][tier], []).append(i)
        groups[n_tiers].setdefault((), []).append(i)
    positions = [
        {i: p for members in tier_groups.values() for p, i in enumerate(members)} for tier_groups in groups
    ]

    partners: dict[int, int] = {}
    for i in wanted:
        for tier, tier_groups in enumerate(groups):
            members = tier_groups[shapes[i][tier] if tier < n_tiers else ()]
            start = positions[tier][i]
            partner = next(
                (
                    members[(start + step) % len(members)]
                    for step in range(1, len(members))
                    if answers[members[(start + step) % len(members)]] != answers[i]
                ),
                None,
            )
            if partner is not None:
                partners[i] = partner
                break
        else:
            raise ValueError(f"all {n} items share the answer {answers[i]!r}; cannot corrupt")
    return partners

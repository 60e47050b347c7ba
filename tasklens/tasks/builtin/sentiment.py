"""Sentiment classification of words from the VADER lexicon, in template sentences.

Templates are a grid of sentences x wrappers; the held-out template is one cell
whose sentence and wrapper both occur in training with other partners.
"""

from __future__ import annotations

from functools import cache

from tasklens.tasks.builtin.assemble import (
    FACT_SPLITS,
    BuiltinSpec,
    Fact,
    fact_split_task,
    package_source,
)
from tasklens.tasks.builtin.templates import Template
from tasklens.tasks.task import Task

NAME = "sentiment"
MAX_PER_CLASS = 150
STRONG = 2.0  # VADER scores run from -4 to 4
_VULGAR = (
    "bastard",
    "bitch",
    "cock",
    "cunt",
    "dick",
    "fag",
    "fuck",
    "nigg",
    "piss",
    "rape",
    "shit",
    "slut",
    "twat",
    "whore",
)

# Each sentence reads naturally whatever the word's part of speech.
_SENTENCES = (
    "In one word: {w}.",
    'My review is just "{w}".',
    "The word that sums it up is {w}.",
)
_WRAPPERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("review", "Review: {s} Sentiment:", ("Review:", "Sentiment:")),
    ("qa", "Q: {s} Positive or negative? A:", ("Q:", "A:")),
    ("text_label", "Text: {s} | Label:", ("Text:", "Label:")),
)
HELDOUT_CELL = (2, 1)  # (sentence, wrapper)

TEMPLATES: tuple[Template, ...] = tuple(
    Template(
        s * len(_WRAPPERS) + w,
        f"{frame}/sentence{s}",
        wrapper.replace("{s}", sentence),
        markers,
    )
    for s, sentence in enumerate(_SENTENCES)
    for w, (frame, wrapper, markers) in enumerate(_WRAPPERS)
)
HELDOUT_ID = HELDOUT_CELL[0] * len(_WRAPPERS) + HELDOUT_CELL[1]


@cache
def sentiment_facts() -> tuple[Fact, ...]:
    """Strongly positive and negative lexicon words, balanced.

    Words scoring at least 2.0 away from neutral qualify; each class takes its
    words closest to that threshold first, then alphabetically. The extreme end of
    the lexicon is dominated by slurs and violent words, which the mild end avoids;
    the few vulgar words left there are filtered by stem.
    """
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    lexicon = SentimentIntensityAnalyzer().lexicon
    words = {
        w: s
        for w, s in lexicon.items()
        if w.isascii() and w.isalpha() and len(w) >= 3 and not any(x in w for x in _VULGAR)
    }
    positive = sorted((w for w, s in words.items() if s >= STRONG), key=lambda w: (words[w], w))
    negative = sorted((w for w, s in words.items() if s <= -STRONG), key=lambda w: (-words[w], w))
    n = min(MAX_PER_CLASS, len(positive), len(negative))
    return tuple(
        Fact(word, {"w": word}, answer)
        for chosen, answer in ((positive[:n], " positive"), (negative[:n], " negative"))
        for word in chosen
    )


def build(split: str) -> Task:
    """The sentiment task's ``split``."""
    meta = {
        "kind": "classification",
        "source": package_source("vaderSentiment"),
        "relation": f"word -> sentiment (VADER score >= {STRONG} or <= -{STRONG})",
    }
    return fact_split_task(NAME, split, sentiment_facts(), TEMPLATES, HELDOUT_ID, language="en", meta=meta)


def specs() -> list[BuiltinSpec]:
    """The classification tasks, for the built-in registry."""
    return [BuiltinSpec(NAME, "classification", "en", FACT_SPLITS, lambda: len(sentiment_facts()), build)]

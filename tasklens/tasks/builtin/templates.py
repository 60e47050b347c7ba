"""Prompt templates: shared frames x per-relation phrase pieces, in four languages.

A frame is one way of asking for a relation: a statement, a Q/A pair, a key-value
line... English frames take the relation's noun ("capital", "chemical symbol") and
subject type ("country", "element") as pieces, so every English relation uses the
same frames. The French, German and Spanish frames phrase the capital relation
natively, frame for frame. A relation holds out a frame that other relations train
on, so a held-out prompt is a new combination of pieces the model has all seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Template:
    """One prompt template.

    Attributes:
        id: the template's id within its task (stored in ``Task.templates``).
        frame: the name of the frame it instantiates (shared across tasks).
        text: the prompt with ``{field}`` placeholders, e.g. ``"The capital of {X} is"``.
        markers: the prompt-format marker strings the rendered prompt contains.
    """

    id: int
    frame: str
    text: str
    markers: tuple[str, ...] = ()

    def render(self, fields: Mapping[str, str]) -> str:
        """The prompt for one fact (``fields`` fills the placeholders)."""
        return self.text.format_map(fields)


# (frame, text, markers); {r} relation noun, {t} subject type, {R}/{T} capitalised,
# {X} the subject. Sentence-style frames carry no format marker.
_EN_FRAMES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("statement", "The {r} of {X} is", ()),
    ("possessive", "{X}'s {r} is", ()),
    ("fill_in", "{X} has the {r}", ()),
    ("qa", "Q: What is the {r} of {X}? A:", ("Q:", "A:")),
    ("question_answer", "Question: What is the {r} of the {t} {X}? Answer:", ("Question:", "Answer:")),
    ("kv_pipe", "{T}: {X} | {R}:", ("{T}:", "{R}:")),
    ("kv_dot", "{T}: {X}. {R}:", ("{T}:", "{R}:")),
    ("instruction", "Name the {r} of {X}. Answer:", ("Answer:",)),
    ("arrow", "{X} -> {r}:", ("->",)),
    ("typed_statement", "For the {t} {X}, the {r} is", ()),
    ("equation", "{R} of {X} =", ("=",)),
)

# The capital relation phrased natively; articles are avoided ("du pays {X}",
# "von {X}") so that any country name fits without agreement.
_CAPITAL_FRAMES: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "fr": (
        ("statement", "La capitale du pays {X} est", ()),
        ("fill_in", "{X} a pour capitale", ()),
        ("qa", "Q: Quelle est la capitale du pays {X} ? A:", ("Q:", "A:")),
        (
            "question_answer",
            "Question : Quelle est la capitale du pays {X} ? Réponse :",
            ("Question :", "Réponse :"),
        ),
        ("kv_pipe", "Pays : {X} | Capitale :", ("Pays :", "Capitale :")),
        ("kv_dot", "Pays : {X}. Capitale :", ("Pays :", "Capitale :")),
        ("instruction", "Donnez la capitale du pays {X}. Réponse :", ("Réponse :",)),
        ("arrow", "{X} -> capitale :", ("->",)),
        ("typed_statement", "Pour le pays {X}, la capitale est", ()),
        ("equation", "Capitale du pays {X} =", ("=",)),
    ),
    "de": (
        ("statement", "Die Hauptstadt von {X} ist", ()),
        ("fill_in", "{X} hat als Hauptstadt", ()),
        ("qa", "Q: Was ist die Hauptstadt von {X}? A:", ("Q:", "A:")),
        ("question_answer", "Frage: Was ist die Hauptstadt von {X}? Antwort:", ("Frage:", "Antwort:")),
        ("kv_pipe", "Land: {X} | Hauptstadt:", ("Land:", "Hauptstadt:")),
        ("kv_dot", "Land: {X}. Hauptstadt:", ("Land:", "Hauptstadt:")),
        ("instruction", "Nenne die Hauptstadt von {X}. Antwort:", ("Antwort:",)),
        ("arrow", "{X} -> Hauptstadt:", ("->",)),
        ("typed_statement", "Für das Land {X} lautet die Hauptstadt", ()),
        ("equation", "Hauptstadt von {X} =", ("=",)),
    ),
    "es": (
        ("statement", "La capital de {X} es", ()),
        ("fill_in", "{X} tiene como capital", ()),
        ("qa", "Q: ¿Cuál es la capital de {X}? A:", ("Q:", "A:")),
        ("question_answer", "Pregunta: ¿Cuál es la capital de {X}? Respuesta:", ("Pregunta:", "Respuesta:")),
        ("kv_pipe", "País: {X} | Capital:", ("País:", "Capital:")),
        ("kv_dot", "País: {X}. Capital:", ("País:", "Capital:")),
        ("instruction", "Indica la capital de {X}. Respuesta:", ("Respuesta:",)),
        ("arrow", "{X} -> capital:", ("->",)),
        ("typed_statement", "Para el país {X}, la capital es", ()),
        ("equation", "Capital de {X} =", ("=",)),
    ),
}


def english_templates(noun: str, subject_type: str) -> tuple[Template, ...]:
    """All English frames for one relation, e.g. ``english_templates("capital", "country")``."""
    pieces = {
        "r": noun,
        "t": subject_type,
        "R": noun[:1].upper() + noun[1:],
        "T": subject_type[:1].upper() + subject_type[1:],
        "X": "{X}",  # stays a placeholder for the subject
    }
    return tuple(
        Template(i, frame, text.format_map(pieces), tuple(m.format_map(pieces) for m in markers))
        for i, (frame, text, markers) in enumerate(_EN_FRAMES)
    )


def capital_templates(language: str) -> tuple[Template, ...]:
    """All frames of the capital relation in ``language`` ("fr", "de" or "es")."""
    return tuple(
        Template(i, frame, text, markers)
        for i, (frame, text, markers) in enumerate(_CAPITAL_FRAMES[language])
    )


def template_for_frame(templates: tuple[Template, ...], frame: str) -> Template:
    """The template of ``templates`` that instantiates ``frame``."""
    for template in templates:
        if template.frame == frame:
            return template
    raise KeyError(f"no template with frame {frame!r}")

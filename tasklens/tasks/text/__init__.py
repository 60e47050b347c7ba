"""A general-text control: ordinary English sentences, never used to select neurons.

`general_text` turns the shipped sample (``general.txt``, 48 sentences written for tasklens)
into a `Task` whose prompt is each sentence's first words and whose answer is the rest, so
any teacher-forced metric reads the model's language modelling of plain text beside the
tasks: a set that "hurts everything" shows it here, measured rather than inferred.
"""

from __future__ import annotations

from importlib.resources import files

from tasklens.errors import TasklensError
from tasklens.tasks.task import Task

#: words of each sentence given as the prompt; the rest is the answer scored
PROMPT_WORDS = 4


def general_sentences() -> list[str]:
    """The shipped sentences, in file order."""
    text = files(__package__).joinpath("general.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def general_text(n: int | None = None) -> Task:
    """The general-text control as a `Task` named ``"general_text"`` (the first ``n`` sentences).

    The log-probability metric then gives each sentence's continuation log-likelihood, whose
    mean over tokens is the negative log perplexity.

    Example:
        >>> task = general_text(2)
        >>> task.prompts[0], task.answers[0][:20]
        ('The morning train was', ' late again, so most')
    """
    sentences = general_sentences()
    if n is not None and not 1 <= n <= len(sentences):
        raise TasklensError(
            f"general_text has {len(sentences)} sentences; ask for 1 to {len(sentences)}, not {n}"
        )
    prompts, answers = [], []
    for sentence in sentences[:n]:
        words = sentence.split(" ")
        prompts.append(" ".join(words[:PROMPT_WORDS]))
        answers.append(" " + " ".join(words[PROMPT_WORDS:]))
    return Task.from_lists(
        "general_text",
        prompts,
        answers,
        split="general text (held out)",
        meta={"source": "tasklens general.txt"},
    )

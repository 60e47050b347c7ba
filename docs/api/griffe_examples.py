"""A Griffe extension for the API reference: every doctest renders as code.

tasklens docstrings head their doctests ``Example:``, which Google style reads as an admonition
(its ``>>>`` lines then render as nested quotes run into one paragraph): that heading is read as
``Examples:``, whose doctests Griffe renders as code. A doctest outside any section (after
``Returns:``, say) is fenced as a ``pycon`` code block."""

from __future__ import annotations

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


def fenced_doctests(text: str) -> str:
    """``text`` with each unindented run of doctest lines (``>>>`` to the next blank line) fenced."""
    out: list[str] = []
    lines = text.split("\n")
    fenced, i = False, 0
    while i < len(lines):
        line = lines[i]
        fenced ^= line.lstrip().startswith("```")
        if fenced or not line.startswith(">>>"):
            out.append(line)
            i += 1
            continue
        end = i
        while end < len(lines) and lines[end].strip():
            end += 1
        out += ["```pycon", *lines[i:end], "```"]
        i = end
    return "\n".join(out)


class ExampleSections(griffe.Extension):
    """Read ``Example:`` headings as ``Examples:`` and fence doctests outside sections."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fenced_doctests(_EXAMPLE.sub(r"\1Examples:", obj.docstring.value))

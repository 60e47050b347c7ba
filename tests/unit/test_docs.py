"""The README is a front page with the set-up commands CI runs; the docs site builds offline."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser import rendered_dom

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAX_README_LINES = 250


def ci_test_command() -> str:
    """The line of `.ci/run` that sets up the first environment and runs the tests."""
    lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.startswith("python3 -m venv .venv &&")
    ]
    assert len(lines) == 1, lines
    return lines[0]


def test_readme_is_a_front_page():
    n_lines = len(README.splitlines())
    assert n_lines <= MAX_README_LINES, f"README.md has {n_lines} lines; move detail into docs/"


def test_readme_has_the_ci_test_command_and_the_demo_command_verbatim():
    test_command = ci_test_command()
    assert test_command.endswith('pip install -q -e ".[test]" && python -m pytest')
    demo_command = test_command.replace(
        'pip install -q -e ".[test]" && python -m pytest', "pip install -q -e . && tasklens demo"
    )
    code_lines = set(README.splitlines())
    assert test_command in code_lines
    assert demo_command in code_lines


def test_readme_python_imports_exist():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    imports = re.findall(r"^from (\S+) import (.+?)(?:\s+#.*)?$", "\n".join(blocks), flags=re.M)
    assert imports
    for module, names in imports:
        loaded = importlib.import_module(module)
        for name in names.split(","):
            assert hasattr(loaded, name.strip()), f"{module} has no {name.strip()}"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The docs site, built once with ``mkdocs build --strict`` into a temporary folder."""
    for module in ("mkdocs", "mkdocstrings_handlers.python", "mkdocs_jupyter"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f'{module} is not installed: pip install -e ".[test]" installs it')
    out = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,  # the notebooks run top to bottom
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_docs_build_strict_offline(site):
    assert (site / "api" / "tasklens.scoring" / "index.html").exists()
    assert "tasklens.scoring.GradientAttribution" in (
        site / "api" / "tasklens.scoring" / "index.html"
    ).read_text(encoding="utf-8")
    assert not list(site.rglob("*.py"))  # the Griffe extension is not published as a page


def test_the_site_shows_every_notebook_run_with_its_outputs(site):
    """Each notebook is a page of the site with the outputs this build ran (figures as images);
    the quickstart shows its verdict table."""
    pages = sorted((site / "notebooks").glob("*/index.html"))
    assert [p.parent.name for p in pages] == [p.stem for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    text = {p.parent.name: p.read_text(encoding="utf-8") for p in pages}
    assert all(page.count("jp-OutputArea-child") >= 3 for page in text.values())  # run, outputs kept
    quickstart = text["01_quickstart"]
    assert quickstart.count("data:image/png;base64,") >= 2
    assert 'class="dataframe verdicts"' in quickstart and "error control: Benjamini-Hochberg" in quickstart
    assert text["02_relation_neurons"].count("data:image/png;base64,") >= 3
    assert "IProgress not found" not in quickstart


class Reference(HTMLParser):
    """A rendered API page: its headings' ids, the text of the code blocks under each heading,
    the rows of each Returns table, and how many quote blocks there are."""

    def __init__(self) -> None:
        super().__init__()
        self.heading = ""
        self.headings: list[str] = []
        self.code: dict[str, list[str]] = {}
        self.returns: dict[str, list[int]] = {}
        self.quotes = 0
        self._in_pre = self._in_title = self._in_returns = False
        self._returns_next = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h1", "h2", "h3", "h4") and attrs.get("id"):
            self.heading = attrs["id"]
            self.headings.append(self.heading)
        elif tag == "pre":
            self._in_pre = True
            self.code.setdefault(self.heading, []).append("")
        elif tag == "blockquote":
            self.quotes += 1
        elif tag == "span" and "doc-section-title" in (attrs.get("class") or ""):
            self._in_title = True
        elif tag == "table" and self._returns_next:
            self._in_returns, self._returns_next = True, False
            self.returns.setdefault(self.heading, []).append(0)
        elif tag == "tr" and self._in_returns and "doc-section-item" in (attrs.get("class") or ""):
            self.returns[self.heading][-1] += 1

    def handle_endtag(self, tag):
        if tag == "pre":
            self._in_pre = False
        elif tag == "span":
            self._in_title = False
        elif tag == "table":
            self._in_returns = False

    def handle_data(self, data):
        if self._in_pre:
            self.code[self.heading][-1] += data
        if self._in_title and data.strip() == "Returns:":
            self._returns_next = True


@pytest.mark.reliability
def test_the_scoring_reference_shows_every_scorer_and_its_examples_as_code_in_a_browser(site, tmp_path):
    """Each public scorer has its heading, each doctest of its `attribute` is a code block under
    that method's heading (not quotes run into one paragraph), and its Returns is one row."""
    import doctest
    import inspect

    from tasklens.scoring import SCORERS

    page = Reference()
    page.feed(rendered_dom(site / "api" / "tasklens.scoring" / "index.html", tmp_path / "profile"))
    assert page.quotes == 0
    parser = doctest.DocTestParser()
    public = [s for _, s in SCORERS.items() if s.__module__.startswith("tasklens.scoring")]  # not tests own
    assert len(public) >= 8
    for scorer in public:
        heading = f"tasklens.scoring.{scorer.__name__}"
        assert heading in page.headings and f"{heading}.attribute" in page.headings, heading
        examples = parser.get_examples(inspect.getdoc(scorer.attribute))
        assert len(examples) >= 5, heading
        code = "\n".join(page.code.get(f"{heading}.attribute", []))
        for example in examples:
            assert ">>> " + example.source.splitlines()[0] in code, (heading, example.source)
            assert example.want.splitlines()[0] in code if example.want else True
        assert page.returns[f"{heading}.attribute"] == [1], heading


def test_the_readme_ladder_table_is_the_one_the_ladder_summary_wrote():
    """The README's table is `python analyses/ladder.py --summary`'s readme_table.md, line for line."""
    written = (ROOT / "analyses" / "results" / "ladder" / "summary" / "readme_table.md").read_text(
        encoding="utf-8"
    )
    rows = [line for line in written.splitlines() if line.startswith("|")]
    assert len(rows) > 2
    start = README.splitlines().index(rows[0])
    assert README.splitlines()[start : start + len(rows)] == rows
    family = next(line for line in written.splitlines() if line.startswith("Error control:"))
    assert family.removeprefix("Error control: ").rstrip(".") in " ".join(README.split())


def test_the_ladder_figure_in_the_docs_is_the_one_the_summary_drew():
    """docs/figures/ladder_forest.png is `python analyses/ladder.py --summary`'s forest.png."""
    drawn = ROOT / "analyses" / "results" / "ladder" / "summary" / "forest.png"
    assert (ROOT / "docs" / "figures" / "ladder_forest.png").read_bytes() == drawn.read_bytes()
    assert "docs/figures/ladder_forest.png" in README

"""The command line, a whole run from a TOML config, and its HTML report in a real headless browser."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
import pytest
from browser import rendered_dom
from typer.testing import CliRunner

from tasklens.cli import app
from tasklens.runs.pipeline import RunConfig

CONFIG = """
model = "organism"
tasks = ["continent_of", "larger_number"]
max_prompts = 24
method = "attribution_patching"
select = "top_percent"
value = 2.0
controls = 1
stability_splits = 2
"""


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    config = folder / "run.toml"
    config.write_text(CONFIG + f'out = "{folder / "out"}"\n')
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 0, result.output
    return folder / "out"


def test_run_writes_every_stage_and_its_config(run_folder):
    for name in (
        "config.toml",
        "manifest.json",
        "matrix.csv",
        "matrix_change.png",
        "effects.png",
        "overlap_jaccard.csv",
        "sharing.png",
        "cumulativity.png",
        "interference.csv",
        "report.html",
    ):
        assert (run_folder / name).is_file(), name
    assert sorted(p.name for p in (run_folder / "sets").glob("*.safetensors")) == [
        "continent_of.safetensors",
        "larger_number.safetensors",
    ]
    assert RunConfig.from_toml(run_folder / "config.toml").tasks == ["continent_of", "larger_number"]
    manifest = json.loads((run_folder / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["locate", "ablate", "compare", "report"]
    assert manifest["stages"]["locate"]["config"]["method"] == "attribution_patching"
    assert all(stage["tasklens_version"] for stage in manifest["stages"].values())
    stability = pd.read_csv(run_folder / "stability.csv")
    assert list(stability.task) == ["continent_of", "larger_number"]
    assert stability["mean"].between(0, 1).all() and (stability.n_prompts == 12).all()
    assert "split-half stability" in (run_folder / "report.html").read_text()


def test_report_is_self_contained(run_folder):
    page = (run_folder / "report.html").read_text()
    # nothing is fetched: no external scripts, images or stylesheets
    assert not re.search(r"<script[^>]*\ssrc=", page) and 'src="http' not in page and 'href="http' not in page
    assert "unpkg.com" not in page and "jsdelivr" not in page
    assert page.count("data:image/png;base64,") >= 5
    assert "TextNeuronActivations" in page and "TopkTokens" in page
    assert "&amp;lt;s&amp;gt;" in page or "&lt;s&gt;" in page


def depths(page: str, classes: tuple[str, ...]) -> dict[str, set[int]]:
    """How deep the elements of each class sit, nested as a browser nests them (``<div/>`` is not
    self-closing in HTML: it opens an element)."""
    from html.parser import HTMLParser

    void = {"br", "hr", "img", "input", "meta", "link", "col", "wbr", "source"}
    found: dict[str, set[int]] = {name: set() for name in classes}
    stack: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            name = dict(attrs).get("class")
            if name in found:
                found[name].add(len(stack))
            if tag not in void:
                stack.append(tag)

        def handle_startendtag(self, tag, attrs):
            self.handle_starttag(tag, attrs)

        def handle_endtag(self, tag):
            if tag not in void:
                assert stack.pop() == tag, f"</{tag}> closes another element"

    Parser().feed(page)
    assert stack == [], f"unclosed elements {stack}"
    return found


def test_report_sections_and_contexts_are_siblings(run_folder):
    page = (run_folder / "report.html").read_text()
    found = depths(page, ("neuron", "view", "context"))
    assert page.count('<section class="neuron"') >= 2 and page.count('<div class="context">') >= 8
    # one depth per kind: no page, view or context sits inside another of its kind
    assert all(len(levels) == 1 for levels in found.values()), found
    assert "BOS left out" in page and "+nan" not in page


def test_a_missing_value_in_the_summary_is_a_dash():
    from tasklens.runs.report import plain, render, signed

    assert (signed(0.25), signed(-0.0125), signed(float("nan")), plain(float("nan"))) == (
        "+0.250",
        "-0.013",
        "-",
        "-",
    )
    row = dict(
        set="continent_of",
        size=12,
        baseline=1.0,
        own_change=-0.5,
        others_change=float("nan"),  # one task: no other tasks
        control_own_change=-0.01,
        control_own_std=0.02,
        effect=0.8,
        verdict="specific",
        specific=True,
    )
    page = render(
        title="one",
        model="organism",
        tasks=["continent_of"],
        method="attribution_patching",
        selection="top_percent 2",
        evaluation={"metric": "logprob", "label": "zero ablation", "n_controls": 3},
        summary=[row],
        stability=None,
        figures=[],
        views=[],
        pages=[],
        pages_per_set=0,
        extra_sections=[],
        tables=[],
        stages=[],
        scores="",
    )
    assert "+nan" not in page and ">nan" not in page
    assert '<td class="hurt">-0.500</td>\n<td>-</td>\n<td>-0.010 ± 0.020</td>' in page
    assert '<td>0.800</td><td class="name">specific</td>' in page


def test_report_renders_offline_in_headless_chromium(run_folder, tmp_path):
    dom = rendered_dom(run_folder / "report.html", tmp_path / "profile", "--virtual-time-budget=15000")
    assert "<h1>tasklens report" in dom
    # the circuitsvis React views rendered: their mount points now hold elements
    assert dom.count('<div class="view">') >= 4
    assert "Neuron" in dom and "<select" in dom
    # BOS "<s>" is shown as text (escaped in the DOM), never turned into a strike-through element
    assert "&lt;s&gt;" in dom
    assert dom.count("<img") >= 5


def test_help_has_an_example_for_every_command():
    runner = CliRunner()
    for command in ("tasks", "list", "demo", "locate", "ablate", "compare", "report", "run"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Example: tasklens" in result.output, command


def test_bad_input_exits_nonzero_with_a_message(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["locate", "-t", "capitol_of", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "Did you mean 'capital_of'" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "organism"\nmethods = "x"\n')
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2 and "unknown keys ['methods']" in result.output
    result = runner.invoke(
        app, ["locate", "-t", "continent_of", "--method", "saliency", "--out", str(tmp_path / "y")]
    )
    assert result.exit_code == 2 and "Unknown scorer 'saliency'" in result.output


def test_tasks_lists_the_suite():
    result = subprocess.run([sys.executable, "-m", "tasklens.cli", "tasks"], capture_output=True, text=True)
    assert result.returncode == 0 and "capital_of" in result.stdout and "heldout_template" in result.stdout

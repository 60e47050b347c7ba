"""The ladder: do the papers' headline claims, and specificity, hold as the model grows?

One resumable command per model runs the same experiments, scaled to its size, and keeps each
finished stage (a stage's folder appears whole, or not at all: rerun the command to go on):

- ``known``: how many facts of each task the model knows (asked in its own natural form);
- ``relations_ap``: Liu et al.'s AP-selected neurons per relation (top 0.36 %, negatives from
  the other relations, detected on known facts);
- ``gradient_1pct`` / ``gradient_10pct``: Leng & Xiong's top 1 % and 10 % |a * dL/da| sets;
- ``cgvst_5pct``: CGVST's format-marker-gradient top 5 %, on the chat form (ChatML models);
- ``gradient_1pct_mean``: the 1 % sets under mean ablation with position 0 apart, the means
  taken from the detection prompts (is the collapse an artifact of zeroing?).

Every set is selected twice, on two random halves of the detection prompts, and evaluated on
evaluation prompts no selection saw (known facts, up to the model's scale) and on a general-text
control, with exact match and answer log-probability, beside random sets of the same per-layer
counts on its own task (sequential Monte Carlo: at most the scale's ``controls`` for a set that
lowers its own task more than every other, tested before any is drawn, else ``settled``, which
the test against random sets alone still needs). Each set gets its specificity verdict
(`EvaluationResult.specificity`: beyond random sets, and the other tasks spared within the
margin of docs/statistics.md) and, as a secondary result, its test against random sets alone; a
verdict is stable across selections when both halves' sets pass.

The summary's conclusions rest on a **primary family**, fixed before any result: one test per
claim and model, on log-probability and the first selection, that every set of the claim is
specific (an intersection-union test: its p is the largest of its sets'), Benjamini-Hochberg
(q = 0.05) over those tests. The per-set tests are secondary, under a family of their own; the
tests against random sets alone, which repeat a specificity test's p-value, are outside both.

    python analyses/ladder.py --model smollm2-135m        # analyses/results/ladder/smollm2-135m
    python analyses/ladder.py --summary                   # summary.csv / summary.md over the models
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from common import HALVES, Parser, check_args, halves, lock_out, prepare, run_main, stable

from tasklens.analysis.matrix import EvaluationResult, evaluation_matrices
from tasklens.analysis.verdict import ALPHA, MARGIN, apply_family, controls_needed, family
from tasklens.data.neurons import NeuronSet
from tasklens.errors import TasklensError
from tasklens.interventions import Intervention
from tasklens.io import (
    atomic_dir,
    atomic_write_text,
    check_folder_path,
    check_own_folder,
    hold_folder,
    read_marker,
    unchanged,
)
from tasklens.models import ModelInfo, load_model
from tasklens.runs.outputs import OutputDir
from tasklens.scoring import CGVST, AveragePrecisionExpertise, GradientAttribution, PromptMeans
from tasklens.selection import top_k, top_percent
from tasklens.tasks.builtin.natural import has_chatml
from tasklens.tasks.task import Task
from tasklens.tasks.text import general_text

ROOT = Path(__file__).resolve().parent / "results" / "ladder"
#: where a model's stages keep every finished random set (an interrupted stage goes on from there)
JOURNAL = "journal"
MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
RELATIONS = ("continent_of", "country_language", "city_country")
TASKS = (*RELATIONS, "addition")
#: the organism (for checking the script quickly) knows other relations
ORGANISM_RELATIONS = ("continent_of", "currency_of", "capital_of")
STAGES = ("known", "relations_ap", "gradient_1pct", "gradient_10pct", "cgvst_5pct", "gradient_1pct_mean")
#: the stages every model runs: what each knows, the relation paper's sets, the 1 % sets and their
#: specificity under zero and mean ablation
CORE = ("known", "relations_ap", "gradient_1pct", "gradient_1pct_mean")


@dataclass(frozen=True)
class Scale:
    """How much of the ladder a model runs: known facts per task for detection (split into two
    halves) and for evaluation, the most random sets per set, when a set stops drawing them, stages."""

    detection: int = 48
    evaluation: int = 48
    #: the most random sets for a set whose verdict is at stake: enough for its p to clear the
    #: primary family's smallest threshold, q / PRIMARY_TESTS (1 / 261 < 0.05 / 13)
    controls: int = 260
    #: Besag-Clifford: a set stops drawing random sets once this many lower its task as much
    stop_after: int = 5
    stages: tuple[str, ...] = STAGES
    #: the most random sets for a set that lowers another task as much: not specific whatever
    #: they show, but its test against random sets alone still needs p = 1 / 40
    settled: int = 39


#: the core stages beyond SmolLM2 (a forward costs about 1.3x SmolLM2's on Gemma-3-270M, 3.4x on
#: Qwen 0.5B and 12x on the 1.5B), and smaller samples on the Qwen models
SCALES = {
    "smollm2-135m": Scale(stages=(*CORE, "gradient_10pct")),
    "gemma3-270m": Scale(stages=CORE),
    "qwen2.5-coder-0.5b": Scale(48, 24, stages=CORE),
    "qwen2.5-coder-1.5b": Scale(32, 16, stages=CORE),
}
#: the primary family: one test per claim (a stage of `CLAIMS`) and model that runs it
PRIMARY_TESTS = 13
#: the organism (for checking the script quickly)
ORGANISM_SCALE = Scale(16, 16, 19, 3, settled=9)
CLAIMS = {
    "relations_ap": "AP neurons (top 0.36 %) carry their relation (Liu et al.)",
    "gradient_1pct": "top 1 % gradient-attribution neurons carry their task (Leng & Xiong)",
    "gradient_10pct": "top 10 % gradient-attribution neurons carry their task (Leng & Xiong)",
    "cgvst_5pct": "CGVST top 5 % neurons carry their task (Song et al.)",
    "gradient_1pct_mean": "top 1 % gradient-attribution neurons, mean ablation",
}


#: the primary family's metric and selection
PRIMARY = ("logprob", HALVES[0])


def tests(result: EvaluationResult, stage: str, metric: str, half: str) -> pd.DataFrame:
    """Both tests of every set of ``result`` (selected on detection ``half``), one row per set and test."""
    frames = []
    for test, table in (("against_random", result.against_random()), ("specificity", result.specificity())):
        table = table.reset_index()
        table.insert(0, "test", test)
        frames.append(table)
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "half", half)
    out.insert(0, "metric", metric)
    out.insert(0, "stage", stage)
    return out


def adjusted(table: pd.DataFrame, where: str) -> tuple[pd.DataFrame, str]:
    """``table``'s specificity tests adjusted together (Benjamini-Hochberg) as the family of
    ``where``, and its tests against random sets alone in a secondary family of their own; with
    ``stable`` across selections. Returns the table and the specificity family's label."""
    specific = table["test"] == "specificity"
    spec, page = apply_family(table[specific], "bh", ALPHA, f"{where}: the per-set specificity tests")
    alone, _ = apply_family(
        table[~specific], "bh", ALPHA, f"{where}: the tests against random sets alone (secondary)"
    )
    keys = [k for k in ("model", "stage", "metric", "test", "set") if k in table]
    return stable(pd.concat([spec, alone]).sort_index(), keys), page.label


def detectable(row) -> str:
    """The smallest effect a test's row detects with 80 % power: the own effect against random sets,
    and for specificity also how far past the spare limit the least spared task must stay."""
    if row.test == "specificity":
        return f"own effect {row.mde_random:.2f}, margin past the limit {row.mde_spared:.2f}"
    return f"own effect {row.mde:.2f}"


class Ladder:
    """The stages of one model, each written once into ``out/<stage>/``."""

    def __init__(
        self, name: str, out: Path, scale: Scale, batch_size: int, random_precision: str = "bfloat16"
    ) -> None:
        self.name, self.out, self.scale, self.batch_size = name, out, scale, batch_size
        self.random_precision = random_precision
        self._model = None
        self._data: dict[str, object] = {}
        self._gradient_scores: dict[str, object] = {}
        self.relations = ORGANISM_RELATIONS if name == "organism" else RELATIONS

    @property
    def model(self):
        if self._model is None:
            self._model = load_model(self.name)
        return self._model

    def data(self, style: str | None = None):
        if style not in self._data:
            self._data[style] = prepare(
                self.model, [*self.relations, "addition"], self.scale.detection, self.scale.evaluation,
                style=style, min_known=4,
            )  # fmt: skip
        return self._data[style]

    def finished(self, stage: str) -> bool:
        """Whether an earlier run finished ``stage``: its folder's marker lists its findings, unchanged."""
        folder = self.out / stage
        digest = (read_marker(folder) or {}).get("findings.md")
        return digest is not None and unchanged(folder / "findings.md", digest)

    def check(self, stages) -> None:
        """Refuse, before any work, a stage folder that holds files tasklens did not write."""
        for stage in stages:
            if not self.finished(stage):
                check_own_folder(self.out / stage, f"the ladder stage {stage}")

    def run(self, stage: str) -> None:
        folder = self.out / stage
        if self.finished(stage):
            print(f"[{stage}] kept from an earlier run ({folder})", flush=True)
            return
        with atomic_dir(folder, f"the ladder stage {stage}") as tmp:
            config = {"model": self.name, "stage": stage, **vars(self.scale)}
            out = OutputDir(tmp, {**config, "random_precision": self.random_precision})
            started = time.perf_counter()
            with out.stage(stage):
                getattr(self, stage)(out)
            out.finding(f"{stage}: {time.perf_counter() - started:.0f} s on {self.name}")
            out.close()

    def retest(self, stage: str) -> None:
        """Recompute a finished stage's tests from the results it saved, without running the model:
        the evaluations stay valid when only the tests change."""
        folder = self.out / stage
        saved = sorted(folder.glob("result_*_half*.json")) if self.finished(stage) else []
        if not saved:
            print(f"[{stage}] nothing to retest (not finished, or no saved results)", flush=True)
            return
        results: dict[str, dict[str, EvaluationResult]] = {}
        for path in saved:
            metric, tag = path.stem.removeprefix("result_").rsplit("_", 1)
            results.setdefault(tag.replace("half", "half "), {})[metric] = EvaluationResult.load(path)
        config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items()
                  if k not in ("tasklens_version", "python", "command")}  # fmt: skip
        for result in (r for by_metric in results.values() for r in by_metric.values()):
            if result.settled is None and "settled" in config and result.n_controls == config["controls"]:
                # saved before results kept how they were drawn
                result.settled, result.stop_after = config["settled"], config["stop_after"]
        timings = folder / "timings.csv"
        if timings.is_file():
            seconds = float(pd.read_csv(timings)["seconds"].sum())
        else:  # a stage retested before its timings were kept: its findings still say them
            seconds = float(re.search(rf"{stage}: (\d+) s on", (folder / "findings.md").read_text()).group(1))
        with atomic_dir(folder, f"the ladder stage {stage}") as tmp:
            out = OutputDir(tmp, {**config, "retested": True})
            out.timings.append(dict(stage=stage, seconds=round(seconds, 1)))
            self.report(out, stage, results)
            out.finding(
                f"{stage}: {seconds:.0f} s on {self.name} (the evaluation); tests recomputed from its saved "
                "results by --retest"
            )
            out.close()

    # --- the stages ------------------------------------------------------------------------
    def known(self, out: OutputDir) -> None:
        counts = self.data().counts
        out.table("known_facts", counts, index=False)
        out.finding(
            "known / asked: "
            + ", ".join(
                f"{r.task} detection {r.known_detection}/{r.asked_detection}, "
                f"evaluation {r.known_evaluation:.0f}/{r.asked_evaluation:.0f}"
                for r in counts.itertuples()
            )
            + f" (asked until {self.scale.detection} and {self.scale.evaluation} were known, or 300 asked)"
        )

    def relations_ap(self, out: OutputDir) -> None:
        data = self.data()
        relations = [r for r in self.relations if r in data.detection]
        k = max(1, round(0.0036 * ModelInfo.of(self.model).n_neurons))
        by_half = {}
        for half, detection in halves(data.detection).items():
            means, sets = PromptMeans(), []
            for r in relations:
                negatives = [detection[o] for o in relations if o != r]
                scores = AveragePrecisionExpertise(negatives=negatives, means=means).attribute(
                    self.model, detection[r]
                )
                sets.append(top_k(scores, k).renamed(r))
            by_half[half] = sets
        self.evaluate(out, "relations_ap", by_half, [data.evaluation[r] for r in relations])

    def _gradient_sets(self, percent: float) -> dict[str, list[NeuronSet]]:
        """Per detection half, each task's top ``percent`` by |a * dL/da| (scored once per run)."""
        if not self._gradient_scores:
            self._gradient_scores = {
                half: {
                    name: GradientAttribution().attribute(self.model, task)
                    for name, task in detection.items()
                }
                for half, detection in halves(self.data().detection).items()
            }
        return {
            half: [top_percent(scores, percent).renamed(name) for name, scores in by_task.items()]
            for half, by_task in self._gradient_scores.items()
        }

    def gradient_1pct(self, out: OutputDir) -> None:
        self.evaluate(out, "gradient_1pct", self._gradient_sets(1.0), list(self.data().evaluation.values()))

    def gradient_10pct(self, out: OutputDir) -> None:
        self.evaluate(out, "gradient_10pct", self._gradient_sets(10.0), list(self.data().evaluation.values()))

    def gradient_1pct_mean(self, out: OutputDir) -> None:
        detection = list(self.data().detection.values())
        source = Task.from_lists(
            "detection prompts",
            [p for t in detection for p in t.prompts],
            [a for t in detection for a in t.answers],
        )
        means = Intervention("position_mean", source=source)  # never the evaluated prompts
        tasks = list(self.data().evaluation.values())
        self.evaluate(out, "gradient_1pct_mean", self._gradient_sets(1.0), tasks, means)

    def cgvst_5pct(self, out: OutputDir) -> None:
        if not has_chatml(self.model.tokenizer):
            out.finding(
                f"cgvst_5pct: skipped, {self.name} has no ChatML chat template (CGVST needs chat markers)"
            )
            out.table("tests", pd.DataFrame(), index=False)
            return
        data = self.data("chat")
        n_demo = 3 * (1 + 2 * 1)  # ChatML: system turn and one demonstration turn, 3 markers each
        sets = {
            half: [
                top_percent(CGVST(n_demo=n_demo).attribute(self.model, task), 5.0).renamed(name)
                for name, task in detection.items()
            ]
            for half, detection in halves(data.detection).items()
        }
        self.evaluate(out, "cgvst_5pct", sets, list(data.evaluation.values()))

    def evaluate(
        self,
        out: OutputDir,
        stage: str,
        sets: dict[str, list[NeuronSet]],
        tasks: list[Task],
        intervention: Intervention | str = "zero",
    ) -> None:
        """Each half's ``sets`` on ``tasks`` and the general-text control, with both tests."""
        results = {
            half: evaluation_matrices(
                self.model,
                half_sets,
                [*tasks, general_text()],
                ("exact_match", "logprob"),
                self.scale.settled,
                intervention=intervention,
                batch_size=self.batch_size,
                controls_on="own",
                stop_after=self.scale.stop_after,
                at_stake=self.scale.controls,
                precision=self.random_precision,
                journal=self.out / JOURNAL / stage,
            )
            for half, half_sets in sets.items()
        }
        self.report(out, stage, results)

    def report(self, out: OutputDir, stage: str, results: dict[str, dict[str, EvaluationResult]]) -> None:
        """Save each half's results by metric and write both tests of every set, adjusted together."""
        frames = []
        for half, by_metric in results.items():
            tag = half.replace(" ", "")
            for metric, result in by_metric.items():
                result.save(out.file(f"result_{metric}_{tag}.json"))
                out.table(f"matrix_{metric}_{tag}", result.pivot())
                frames.append(tests(result, stage, metric, half))
        table, label = adjusted(pd.concat(frames, ignore_index=True), f"stage {stage}")
        out.table("tests", table, index=False)
        for r in table.itertuples():
            spared = (
                f"; least spared {r.worst} {r.worst_effect:.2f} [{r.worst_low:.2f}, {r.worst_high:.2f}] "
                f"(at most {r.spare_limit:.2f}), selectivity {r.selectivity:.2f} "
                f"[{r.selectivity_low:.2f}, {r.selectivity_high:.2f}]"
                if r.test == "specificity" and isinstance(r.worst, str) and r.worst
                else ""
            )
            out.finding(
                f"{stage}, {r.set} ({r.half}), {r.metric}, {r.test} ({r.n_prompts} prompts, "
                f"{r.n_null} random sets): own task loses {r.effect:.2f} of its gap to the floor "
                f"[{r.effect_low:.2f}, {r.effect_high:.2f}] vs random sets {r.random_effect:.2f}{spared}; "
                f"p {r.p_value:.2g}; detectable with 80 % power: {detectable(r)}: {r.verdict}"
                + (f"; stable across selections: {r.stable}" if r.stable else "")
            )
        out.finding(f"margin: {MARGIN}")
        out.finding(f"error control: {label}")


def tested(root: Path, models: tuple[str, ...] = MODELS) -> pd.DataFrame:
    """Every per-set test behind the summary (each model's finished stages, both halves), the
    specificity tests adjusted together as the secondary family (`adjusted`); the family is named
    in ``attrs``. Stages whose tests predate the margin (no ``level``) are left out: retest them."""
    frames = []
    for model in models:
        for stage, claim in CLAIMS.items():
            path = root / model / stage / "tests.csv"
            if not path.is_file() or path.stat().st_size < 5:
                continue
            table = pd.read_csv(path)
            if "level" not in table or "half" not in table:  # tested before the margin: --retest
                continue
            frames.append(table.assign(model=model, claim=claim))
    if not frames:
        return pd.DataFrame()
    table, label = adjusted(pd.concat(frames, ignore_index=True), "the ladder summary")
    table.attrs["family"] = label
    return table


def _with_interval(row, column: str) -> str:
    """``set value [low, high]`` of one of a row's columns with its interval."""
    value, low, high = (getattr(row, f"{column}{end}") for end in ("", "_low", "_high"))
    return f"{row.set} {value:.2f} [{low:.2f}, {high:.2f}]"


def _failing(part: pd.DataFrame) -> str:
    """A claim's level when it does not pass: a set that fails decisively fails the claim ("breaks
    everything" when every failing set does), else "underpowered"; "not tested" when no set was."""
    failing = part[part["level"].isin(["not specific", "breaks everything"])]
    if len(failing):
        return "breaks everything" if (failing["level"] == "breaks everything").all() else "not specific"
    return "not tested" if (part["level"] == "not tested").all() else "underpowered"


def primary(table: pd.DataFrame) -> pd.DataFrame:
    """The primary family: per claim and model, does every set of the first selection pass, in
    log-probability? ``p_value`` is the largest of its sets' specificity p-values (an
    intersection-union test), ``p_preferential`` likewise for the weaker level; both adjusted by
    Benjamini-Hochberg over the family. Each row says its sets' levels, effects and selectivity,
    the power (the largest detectable own effect and margin of its sets) and what it ``needs``
    (``table``: `tested`)."""
    if not len(table):
        return pd.DataFrame()
    metric, half = PRIMARY
    chosen = table[(table["test"] == "specificity") & (table["metric"] == metric) & (table["half"] == half)]
    rows = []
    for (claim, model), part in chosen.groupby(["claim", "model"], sort=False):
        tested_ = part[part["p_value"].notna()]
        rows.append(
            dict(
                claim=claim, model=model, stage=part["stage"].iloc[0], sets=len(part),
                set_levels="; ".join(f"{r.set} {r.level}" for r in part.itertuples()),
                effects=", ".join(_with_interval(r, "effect") for r in part.itertuples()),
                selectivity=", ".join(
                    f"{_with_interval(r, 'selectivity')} vs {r.worst}" for r in tested_.itertuples()
                ),
                p_value=tested_["p_value"].max() if len(tested_) else float("nan"),
                p_preferential=tested_["p_preferential"].max() if len(tested_) else float("nan"),
                n_null=int(part["n_null"].min()), mde_random=tested_["mde_random"].max(),
                mde_spared=tested_["mde_spared"].max(), failing=_failing(part),
            )
        )  # fmt: skip
    out = pd.DataFrame(rows)
    first = family(out["p_value"].to_numpy(dtype=float), "bh", ALPHA, "the primary family")
    out["p_adjusted"] = first.adjusted
    out["p_preferential_adjusted"] = family(out["p_preferential"].to_numpy(dtype=float), "bh", ALPHA).adjusted
    out["family"] = first.label
    needed = controls_needed(max(first.size, 1), ALPHA)
    levels, needs = [], []
    for r in out.itertuples():
        if r.p_adjusted < ALPHA:
            level = "specific"
        elif r.p_preferential_adjusted < ALPHA:
            level = "preferential"
        else:
            level = r.failing
        levels.append(level)
        needs.append(
            f"at least {needed} random sets per set"
            if level in ("underpowered", "preferential") and r.n_null < needed
            else ""
        )
    out["level"], out["needs"] = levels, needs
    out.attrs["family"] = first.label
    return out


def costs(table: pd.DataFrame, root: Path) -> pd.DataFrame:
    """What each finished stage cost: its seconds, how many random sets its sets drew in all (a set
    draws once for every metric), their own task's prompts per set (mean), and the stage's seconds
    per random set drawn (everything the stage did, divided by them: what one more costs, at most).
    ``table``: `tested`, so each stage's tests are read once."""
    rows = []
    if not len(table):
        return pd.DataFrame()
    for (model, stage), tests_ in table.groupby(["model", "stage"], sort=False):
        timing = root / model / stage / "timings.csv"
        if not timing.is_file():
            continue
        drawn = tests_.groupby(["half", "set"])["n_null"].max()
        seconds = float(pd.read_csv(timing)["seconds"].sum())
        rows.append(
            dict(model=model, stage=stage, seconds=seconds, sets=len(drawn), random_sets=int(drawn.sum()),
                 own_prompts=round(float(tests_.groupby(["half", "set"])["n_prompts"].max().mean()), 1),
                 seconds_per_random_set=round(seconds / max(int(drawn.sum()), 1), 2))
        )  # fmt: skip
    return pd.DataFrame(rows)


def _counts(part: pd.DataFrame) -> dict[str, int]:
    """Of one cell's sets: how many pass after the page's correction, how many of those are stable
    across selections, how many are significant before it (and underpowered after it), how many
    fail a test that had the power."""
    kinds = part["level"]
    passed = kinds == part["what"].fillna("specific") if "what" in part else kinds == "specific"
    return dict(
        passed=int(passed.sum()),
        preferential=int((kinds == "preferential").sum()),
        stable=int((part["stable"] == "yes").sum()),
        alone=int((part["p_value"] < ALPHA).sum()),
        alone_only=int(((part["p_value"] < ALPHA) & ~passed).sum()),
        underpowered=int((kinds == "underpowered").sum()),
        failed=int(kinds.isin(["not specific", "breaks everything", "not beyond random sets"]).sum()),
    )


def summary(table: pd.DataFrame, models: tuple[str, ...] = MODELS) -> pd.DataFrame:
    """One row per claim and test, one column per model: how many of the first half's sets pass
    (and are stable across selections), how many are significant before the page's
    correction and how many underpowered, with their effects (``table``: `tested`)."""
    if not len(table):
        return pd.DataFrame()
    rows = []
    for (claim, metric, test, model), both in table.groupby(["claim", "metric", "test", "model"], sort=False):
        part = both[both["half"] == HALVES[0]]
        n = _counts(part)
        cells = "; ".join(
            f"{r.set} {r.effect:.2f} [{r.effect_low:.2f}, {r.effect_high:.2f}]" for r in part.itertuples()
        )
        rows.append(
            dict(claim=claim, metric=metric, test=test, model=model,
                 cell=f"{n['passed']}/{len(part)} pass ({n['stable']} stable); {n['alone']} "
                      f"significant alone, {n['underpowered']} underpowered; {cells}")
        )  # fmt: skip
    frame = pd.DataFrame(rows)
    out = frame.pivot_table(
        index=["claim", "metric", "test"], columns="model", values="cell", aggfunc="first"
    )
    out = out[[m for m in models if m in out.columns]]  # smallest model first
    out.attrs["family"] = table.attrs["family"]
    return out


#: the README's names for the ladder's models and tests
MODEL_NAMES = {
    "smollm2-135m": "SmolLM2-135M",
    "gemma3-270m": "Gemma-3-270M",
    "qwen2.5-coder-0.5b": "Qwen2.5-Coder-0.5B",
    "qwen2.5-coder-1.5b": "Qwen2.5-Coder-1.5B",
}
TEST_NAMES = {"against_random": "beyond random sets", "specificity": "specific"}
METRIC_NAMES = {"logprob": "log-probability", "exact_match": "exact match"}


def _cell(row) -> str:
    """One primary test in a few words: its level, adjusted p, and its sets' levels counted."""
    counts = pd.Series([lv.split(" ", 1)[-1] for lv in row.set_levels.split("; ")])
    named = ", ".join(f"{n} {level}" for level, n in counts.value_counts().items())
    p = f"adj. p {row.p_adjusted:.2g}" if pd.notna(row.p_adjusted) else "no p"
    return f"**{row.level}** ({p}; sets: {named})" + (f"; needs {row.needs}" if row.needs else "")


def condensed(first: pd.DataFrame, models: tuple[str, ...] = MODELS) -> str:
    """The README's table: the primary family, one cell per claim and model (`primary`)."""
    shown = [m for m in models if m in set(first["model"])]
    lines = [
        "| claim (paper) | " + " | ".join(MODEL_NAMES.get(m, m) for m in shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for claim in CLAIMS.values():
        rows = first[first["claim"] == claim].set_index("model")
        if not len(rows):
            continue
        cells = [_cell(rows.loc[m]) if m in rows.index else "not run" for m in shown]
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    return (
        "\n".join(lines)
        + f"\n\nError control: {first.attrs['family']}; each test: every set of the claim specific "
        f"(log-probability, first selection; its p is the largest of its sets'). {MARGIN}.\n"
    )


#: the forest plot's short names for the claims
SHORT = {
    "relations_ap": "AP 0.36 %",
    "gradient_1pct": "gradient 1 %",
    "gradient_10pct": "gradient 10 %",
    "cgvst_5pct": "CGVST 5 %",
    "gradient_1pct_mean": "gradient 1 %, mean ablation",
}


def figure(table: pd.DataFrame, note: str):
    """The primary family's sets as a forest plot (`tasklens.analysis.plots.forest`): own effect
    and selectivity with their intervals, the random sets' range and the margin, per claim and
    model (``table``: `tested`)."""
    from tasklens.analysis.plots import forest

    metric, half = PRIMARY
    chosen = table[(table["test"] == "specificity") & (table["metric"] == metric) & (table["half"] == half)]
    rows = chosen.assign(
        label=chosen["stage"].map(SHORT),
        random_high=chosen["random_high"].clip(upper=1.0),  # on the capped scale of the effects
        model=chosen["model"].map(lambda m: MODEL_NAMES.get(m, m)) + ": " + chosen["set"],
    )
    return forest(rows, "The primary family's sets (log-probability, first selection)", note)


def markdown(table: pd.DataFrame) -> str:
    """The summary as a Markdown table (a row per claim, metric and test; a column per model)."""
    models = list(table.columns)
    lines = ["| claim | metric | test | " + " | ".join(models) + " |", "|---" * (3 + len(models)) + "|"]
    for (claim, metric, test), row in table.iterrows():
        cells = [str(row[m]) if isinstance(row[m], str) else "not run" for m in models]
        lines.append(f"| {claim} | {metric} | {test} | " + " | ".join(cells) + " |")
    if table.attrs.get("family"):
        lines.append(f"\nError control: {table.attrs['family']}.")
    return "\n".join(lines) + "\n"


def check_root(root: Path, models: tuple[str, ...]) -> None:
    """Refuse a ``--root`` that does not hold the ladder's results of any of ``models``."""
    if not root.is_dir():
        raise TasklensError(
            f"--root {str(root)!r} is not a folder; give the folder the ladder wrote its models' results "
            f"in (default {ROOT})"
        )
    if not any((root / model).is_dir() for model in models):
        raise TasklensError(
            f"--root {str(root)!r} holds no ladder results (no folder named after any of "
            f"{', '.join(models)}); give the folder the ladder wrote them in (default {ROOT})"
        )


def main() -> None:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=(*MODELS, "organism"))
    parser.add_argument("--out", help="default: analyses/results/ladder/MODEL")
    parser.add_argument("--stages", nargs="*", choices=STAGES, help="default: the model's SCALES entry")
    parser.add_argument(
        "--controls", type=int,
        help="the most random sets for a set whose verdict is at stake (default: the model's SCALES entry)",
    )  # fmt: skip
    parser.add_argument(
        "--settled", type=int,
        help="the most random sets for a set that lowers another task as much (default: SCALES entry)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--random-precision", choices=("float32", "bfloat16"), default="bfloat16",
        help="the random sets' matrix products (float32 accumulation and metrics; the sets, the "
        "baseline and the floor stay float32; docs/benchmarks.md)",
    )  # fmt: skip
    parser.add_argument("--summary", action="store_true", help="write the summary of every model's results")
    parser.add_argument(
        "--retest", action="store_true",
        help="recompute the tests of --model's finished stages from their saved results (no model run)",
    )  # fmt: skip
    parser.add_argument("--root", default=str(ROOT), help="where --summary reads the models' folders")
    parser.add_argument(
        "--models", nargs="*", choices=(*MODELS, "organism"), default=list(MODELS),
        help="the models --summary adjusts together (the organism only checks the script)",
    )  # fmt: skip
    args = parser.parse_args()
    check_args(args, out=False)
    if args.summary:
        check_root(Path(args.root), tuple(args.models))
        lock_out(Path(args.root) / "summary", "the ladder's summary")
        every = tested(Path(args.root), tuple(args.models))
        table = summary(every, tuple(args.models))
        first = primary(every)
        out = OutputDir(Path(args.root) / "summary", {"models": list(args.models)})
        out.table("summary", table)
        if len(table):
            out.table("primary", first, index=False)
            out.table("per_set", every, index=False)
            atomic_write_text(out.file("summary.md"), markdown(table))
            atomic_write_text(out.file("readme_table.md"), condensed(first, tuple(args.models)))
            note = (
                f"{', '.join(MODEL_NAMES.get(m, m) for m in args.models)}; python analyses/ladder.py "
                f"--summary; {time.strftime('%Y-%m-%d')}"
            )
            out.figure("forest", figure(every, note))
        out.table("costs", costs(every, Path(args.root)), index=False)
        out.close()
        print(table.to_string() if len(table) else "no results yet")
        return
    if args.model is None:
        raise TasklensError("give --model NAME (one of " + ", ".join(MODELS) + "), or --summary")
    scale = SCALES.get(args.model, ORGANISM_SCALE)
    if args.controls is not None or args.settled is not None:
        controls = scale.controls if args.controls is None else args.controls
        settled = min(scale.settled, controls) if args.settled is None else args.settled
        if not 1 <= settled <= controls:
            raise TasklensError(f"give 1 <= --settled <= --controls, got {settled} and {controls}")
        scale = replace(scale, controls=controls, settled=settled, stop_after=min(scale.stop_after, settled))
    out = check_folder_path(args.out or ROOT / args.model, "the ladder's stages")
    ladder = Ladder(args.model, out, scale, args.batch_size, args.random_precision)
    if args.retest:
        hold_folder(out, "the ladder's stages")  # one run per model folder; a killed run's leftovers go
        for stage in args.stages or STAGES:
            ladder.retest(stage)
        return
    ladder.check(args.stages or scale.stages)
    hold_folder(out, "the ladder's stages")
    timings = {}
    for stage in args.stages or scale.stages:
        start = time.perf_counter()
        ladder.run(stage)
        timings[stage] = round(time.perf_counter() - start, 1)
    print(json.dumps({"model": args.model, "seconds": timings}))


if __name__ == "__main__":
    run_main(main)

"""The ladder's design fixed before any result: its primary family and the random sets it draws."""

from __future__ import annotations

import pandas as pd
import pytest
from test_script_arguments import script

from tasklens.analysis.verdict import controls_needed


def test_the_primary_family_is_one_test_per_claim_and_model_and_draws_enough_random_sets():
    ladder = script("ladder")
    counted = sum(len(set(scale.stages) & set(ladder.CLAIMS)) for scale in ladder.SCALES.values())
    assert ladder.PRIMARY_TESTS == counted == 13
    # a set beyond all its random sets can pass the primary family alone
    assert all(s.controls >= controls_needed(ladder.PRIMARY_TESTS) for s in ladder.SCALES.values())


def _rows(claim, model, levels_p):
    return [
        dict(claim=claim, model=model, stage="s", test="specificity", metric="logprob", half="half 1",
             set=f"t{i}", level=level, p_value=p, p_preferential=q, n_null=260, mde_random=0.1,
             mde_spared=0.1, effect=0.5, effect_low=0.4, effect_high=0.6, selectivity=0.4,
             selectivity_low=0.3, selectivity_high=0.5, worst="u")
        for i, (level, p, q) in enumerate(levels_p)
    ]  # fmt: skip


def test_a_claim_is_specific_only_when_every_set_is():
    ladder = script("ladder")
    rows = _rows("all specific", "m", [("specific", 0.001, 0.001), ("specific", 0.002, 0.001)])
    rows += _rows("one preferential", "m", [("specific", 0.001, 0.001), ("preferential", 0.4, 0.002)])
    rows += _rows("one not specific", "m", [("specific", 0.001, 0.001), ("not specific", 0.9, 0.6)])
    rows += _rows("secondary only", "m", [("specific", 0.001, 0.001)])
    table = pd.DataFrame(rows)
    table.loc[table.claim == "secondary only", "half"] = "half 2"  # not the primary selection
    first = ladder.primary(table).set_index("claim")
    assert list(first.index) == ["all specific", "one preferential", "one not specific"]
    assert first.loc["all specific", "p_value"] == pytest.approx(0.002)  # the largest of its sets'
    assert first["level"].to_dict() == {
        "all specific": "specific", "one preferential": "preferential", "one not specific": "not specific"
    }  # fmt: skip
    assert first["family"].iloc[0] == "Benjamini-Hochberg (q = 0.05) over the 3 tests of the primary family"

"""bench/search.py end to end on its smallest setting: one tiny pool, a search strategy and a
baseline strategy, a budget of a few search trials. Checks the table's structure and that what
it reports are numbers in range (not the benchmark's findings: those are in bench/RESULTS.md)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import search as bench  # noqa: E402


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("search-bench")
    return bench.run_bench(pools=["merge_helps"], strategies=["cmaes", "uniform"], budgets=[11, 13], seeds=[0],
                           docs=16, steps_scale=0.02, workdir=work, log=lambda *_: None)


def test_cells_hold_validation_scores_in_range(result):
    assert {(c["strategy"], c["seed"]) for c in result["cells"]} == {("cmaes", 0), ("uniform", 0)}
    for cell in result["cells"]:
        assert cell["setup_trials"] == 10  # 3 checkpoints, base, 4 merge baselines, 2 greedy soups
        for budget in ("11", "13"):
            got = cell["budgets"][budget]
            assert got is not None, (cell["strategy"], budget)
            assert 0 <= got["value"] < 10 and got["half"] >= 0 and math.isfinite(got["diff"])
            assert isinstance(got["better"], bool)
            if cell["strategy"] == "cmaes":
                assert got["trial"] < int(budget)  # the pick at N is one of the first N trials
    search = next(c for c in result["cells"] if c["strategy"] == "cmaes")
    for key in ("trials_to_baseline", "trials_to_baseline_plus_half"):
        assert search[key] is None or 11 <= search[key] <= 13


def test_table_has_a_row_per_strategy_and_a_column_per_budget(result):
    lines = bench.table(result).splitlines()
    assert lines[0] == ("| pool | strategy | val @11 | val @13 | trials to best baseline | to baseline + half-CI "
                        "| sig. > best baseline @13 |")
    rows = [line.split(" | ") for line in lines[2:4]]
    assert [r[1] for r in rows] == ["cmaes", "uniform"]
    for r in rows:
        assert len(r) == 7
        value = float(r[2].split()[0])
        assert 0 <= value < 10
        assert r[-1].rstrip(" |") in ("0/1", "1/1")
    assert rows[1][4] == "(baseline)"
    assert any(line.startswith("- merge_helps (") and "best baseline" in line for line in lines)

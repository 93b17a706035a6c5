"""bench/search.py end to end on its smallest setting: one tiny pool, two strategies, a budget of
a few search trials, a small reference search. Checks what the benchmark reports and that it
holds together (not its findings: those are in bench/RESULTS.md)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import search as bench  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple:
    work = tmp_path_factory.mktemp("search-bench")
    return work, bench.run_bench(pools=["merge_helps"], strategies=["box", "gated_local"], budgets=[11, 13],
                                 seeds=[0], docs={"search": 16, "validation": 16}, reference_budget=12,
                                 steps_scale=0.02, workdir=work, log=lambda *_: None)


@pytest.fixture(scope="module")
def result(run) -> dict:
    return run[1]


def test_cells_hold_the_recommendation_and_the_search_best(result):
    assert {(c["strategy"], c["seed"]) for c in result["cells"]} == {("box", 0), ("gated_local", 0)}
    for cell in result["cells"]:
        assert cell["setup_trials"] == 10  # 3 checkpoints, base, 4 merge baselines, 2 greedy soups
        setup = cell["best_setup"]
        for budget in ("11", "13"):
            rec = cell["budgets"][budget]["recommended"]
            assert rec["trial"] < int(budget)  # the recommendation at N is one of the first N trials
            assert 0 <= rec["value"] < 10 and math.isfinite(rec["vs_setup"]["diff"]) and rec["vs_setup"]["mdd"] >= 0
            if rec["kind"] == "baseline":  # set-up's best is recommended: no difference to it
                assert rec["trial"] == setup["trial"] and rec["vs_setup"]["diff"] == 0
            sb, old = cell["budgets"][budget]["search_best"], cell["budgets"][budget]["best_of_all"]
            assert sb["kind"] == "search" and 10 <= sb["trial"] < int(budget)
            # best of all (the rule before) is at least as good as the search's best on search documents
            assert old["search_value"] >= sb["search_value"]
            # the recommendation is set-up's best unless the search's best led beyond the noise
            rule = cell["budgets"][budget]["rule"]
            assert rec["trial"] == (sb["trial"] if rule["rule"] == "beyond noise" else setup["trial"])
            if rule["search_lead"] is not None:
                assert (rule["search_lead"]["lower_bound"] > 0) == (rule["rule"] == "beyond noise")
    pool = result["pools"]["merge_helps"]
    assert pool["reference"]["value"] > 0 and pool["validation_docs"]
    assert set(pool["validation_docs"].values()) == {16}


def test_the_reference_is_the_best_on_search_documents_of_every_study(result):
    best_cell = max(e["search_value"] for c in result["cells"] for b in c["budgets"].values()
                    for e in (b["recommended"], b["best_of_all"], b["search_best"]))
    ref = result["pools"]["merge_helps"]["reference"]
    # no cell's trial beats the reference on search documents (it was chosen over all of them)
    assert ref["search_value"] >= best_cell
    assert ref["vs_setup"]["lo"] <= ref["vs_setup"]["diff"] <= ref["vs_setup"]["hi"]


def test_table_has_a_row_per_strategy_and_budget(result):
    lines = bench.table(result).splitlines()
    assert lines[0].startswith("| pool | strategy | budget | recommended - best set-up")
    rows = [line.split(" | ") for line in lines[2:6]]
    assert [(r[1], r[2]) for r in rows] == [("box", "11"), ("box", "13"), ("gated_local", "11"),
                                            ("gated_local", "13")]
    for r in rows:
        assert len(r) == 12
        float(r[3].split()[0])  # a signed difference
        assert r[7] in ("0/1", "1/1")
    assert any(line.startswith("- merge_helps (") and "reference" in line for line in lines)


def test_redecide_reads_every_cell_back_and_agrees_with_the_run(run):
    import search_redecide

    work, result = run
    path = work / "result.json"
    path.write_text(json.dumps(result))
    rows = search_redecide.redecide(path)
    assert len(rows) == 4  # 2 strategies x 2 budgets x 1 seed
    by = {(c["strategy"], b): e for c in result["cells"] for b, e in c["budgets"].items()}
    for r in rows:  # the same rule on the same stored trials: the same decision
        assert r["rule"] == by[r["strategy"], str(r["budget"])]["rule"]["rule"]
    assert search_redecide.table(rows).count("| merge_helps |") == 4

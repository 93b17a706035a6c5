"""Re-decide bench/search.py's cells with today's recommendation rule (optimizer/recommend.py),
without evaluating anything: each cell's study is read back from the benchmark's SQLite file, the
rule is applied to its first N trials, and the chosen trial's validation comparison with the best
set-up trial is taken from the cell (the search's best, or 0 when set-up is kept).

    python bench/search_redecide.py WORKDIR/result.json [MORE.json ...]   # each beside its studies
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimizer.carry_over import stored_spec  # noqa: E402
from optimizer.recommend import RULE_NOISE, recommend  # noqa: E402
from optimizer.records import trial_rows  # noqa: E402


def redecide(result_path: Path) -> list[dict]:
    result, out = json.loads(result_path.read_text()), []
    for cell in result["cells"]:
        name = f"{cell['pool']}-{cell['strategy']}-s{cell['seed']}"
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{result_path.parent / name}.db")
        rows = [r for r in trial_rows(study) if r.state == "COMPLETE"]
        for budget, entry in cell["budgets"].items():
            rec = recommend(stored_spec(study.user_attrs), study.user_attrs, [r for r in rows if r.number < int(budget)])
            chosen = entry["search_best"] if rec.rule == RULE_NOISE else None
            if chosen is not None and chosen["trial"] != rec.row.number:
                raise RuntimeError(f"{name} at {budget}: the rule chose trial {rec.row.number}, not the search's best")
            vs = chosen["vs_setup"] if chosen else {"diff": 0.0, "significant": False}
            out.append({"search_docs": result["docs"]["search"], "pool": cell["pool"], "strategy": cell["strategy"],
                        "seed": cell["seed"], "budget": int(budget), "rule": rec.rule, "bound": rec.bound,
                        "diff": vs["diff"], "significant": vs["significant"]})
    return out


def table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["search_docs"], r["pool"], r["strategy"], r["budget"])].append(r)
    lines = ["| search docs | pool | strategy | budget | recommended - best set-up (seeds) | sig. above / below "
             "| search trial chosen |", "|---|---|---|---|---|---|---|"]
    for (docs, pool, strategy, budget), g in groups.items():
        above = sum(r["significant"] and r["diff"] > 0 for r in g)
        below = sum(r["significant"] and r["diff"] < 0 for r in g)
        chosen = sum(r["rule"] == RULE_NOISE for r in g)
        diffs = " / ".join(f"{r['diff']:+.4f}" for r in g)
        lines.append(f"| {docs} | {pool} | {strategy} | {budget} | {diffs} | {above}/{len(g)} / {below}/{len(g)} "
                     f"| {chosen}/{len(g)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="bench/search.py --json files, beside their studies")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = [r for path in args.results for r in redecide(path)]
    print(table(rows))
    below = sum(r["significant"] and r["diff"] < 0 for r in rows)
    above = sum(r["significant"] and r["diff"] > 0 for r in rows)
    print(f"\n{len(rows)} results: {below} significantly below the best set-up trial, {above} above")


if __name__ == "__main__":
    main()

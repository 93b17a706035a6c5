"""Tables of bench/search.py's result: one row per pool x strategy x budget, over seeds. Results
written before the noise-aware recommendation have no "best of all" role: shown as "-"."""

from __future__ import annotations

import statistics


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def _role_summary(entries: list[dict]) -> dict:
    diffs = [e["vs_setup"]["diff"] for e in entries]
    gaps = [e["gap_closed"] for e in entries if e.get("gap_closed") is not None]
    return {
        "value": _mean([e["value"] for e in entries]),
        "diff": _mean(diffs), "min": min(diffs), "max": max(diffs),
        "above": sum(e["vs_setup"]["significant"] and e["vs_setup"]["diff"] > 0 for e in entries),
        "below": sum(e["vs_setup"]["significant"] and e["vs_setup"]["diff"] < 0 for e in entries),
        "gap": _mean(gaps) if gaps else None,
        "mdd": max(e["vs_setup"]["mdd"] for e in entries),
        "setup_kept": sum(e["kind"] == "baseline" for e in entries),
        "n": len(entries),
    }


def with_partial(result: dict) -> dict:
    """A result with the cells of the pool still running (no gap closed yet for them)."""
    part = result.get("partial")
    if not part or part["pool"] in result["pools"]:
        return result
    return {**result, "cells": result["cells"] + part["cells"]}


def summarize(result: dict) -> list[dict]:
    rows = []
    result = with_partial(result)
    for pool in dict.fromkeys(c["pool"] for c in result["cells"]):
        for strategy in result["strategies"]:
            cells = [c for c in result["cells"] if c["pool"] == pool and c["strategy"] == strategy]
            if not cells:
                continue
            for b in map(str, result["budgets"]):
                row = {"pool": pool, "strategy": strategy, "budget": int(b)}
                for role in ("recommended", "best_of_all", "search_best"):
                    got = [c["budgets"][b][role] for c in cells if c["budgets"][b].get(role)]
                    row[role] = _role_summary(got) if got else None
                rows.append(row)
    return rows


def _fmt(s: dict | None, with_gap: bool) -> list[str]:
    if s is None:
        return ["-"] * (4 if with_gap else 2)
    cells = [f"{s['diff']:+.4f} ({s['min']:+.3f}..{s['max']:+.3f})", f"{s['above']}/{s['n']} / {s['below']}/{s['n']}"]
    if with_gap:
        cells += ["-" if s["gap"] is None else f"{s['gap']:+.2f}", f"{s['mdd']:.4f}"]
    return cells


def table(result: dict) -> str:
    head = ["pool", "strategy", "budget", "recommended - best set-up (min..max)", "sig. above / below",
            "gap closed", "MDD", "set-up kept", "best of all - best set-up", "sig. above / below ",
            "search's best - best set-up", "sig. above / below  "]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summarize(result):
        rec, old, sb = row["recommended"], row.get("best_of_all"), row["search_best"]
        kept = "-" if rec is None else f"{rec['setup_kept']}/{rec['n']}"
        lines.append("| " + " | ".join([row["pool"], row["strategy"], str(row["budget"]), *_fmt(rec, True), kept,
                                        *_fmt(old, False), *_fmt(sb, False)]) + " |")
    notes = []
    for name, p in result["pools"].items():
        r = p["reference"]
        g = r["vs_setup"]
        docs = sorted(set(p["validation_docs"].values()))
        notes.append(f"- {name} ({p['character']}; {p['checkpoints']} checkpoints; {docs[0]}-{docs[-1]} validation "
                     f"documents per task): best set-up {p['best_setup']['label']} {p['best_setup']['value']:.4f}; "
                     f"reference ({r['study']} trial {r['trial']}, {r['label']}) {r['value']:.4f}, "
                     f"{g['diff']:+.4f} [{g['lo']:+.4f}, {g['hi']:+.4f}] vs best set-up"
                     f"{' (significantly above: a gap to close)' if g['significant'] and g['diff'] > 0 else ' (no significant gap to close)'}; "
                     f"MDD {g['mdd']:.4f}")
    return "\n".join(lines + [""] + notes)

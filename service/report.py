"""Text and JSON views of a study's front, for the CLI."""

from __future__ import annotations

from optimizer.records import TrialRow


def front_json(rows: list[TrialRow], front: dict) -> dict:
    by_number = {r.number: r for r in rows}
    return {
        "tasks": front["tasks"],
        "hypervolume": front["hypervolume"],
        "reference_point": front["reference_point"],
        "front": [
            {
                "trial": n,
                "label": by_number[n].label,
                "kind": by_number[n].kind,
                "objective": by_number[n].objective,
                "merge": by_number[n].candidate,
                "raw": by_number[n].raw,
                "normalized": by_number[n].normalized,
            }
            for n in front["trials"]
        ],
    }


def _weights(candidate: dict) -> str:
    w = candidate.get("weights", {})
    total = sum(w.values()) or 1.0
    parts = [f"{k}={v / total:.2f}" if candidate.get("method") == "linear" else f"{k}={v:.2f}" for k, v in w.items()]
    extra = []
    if candidate.get("density") is not None:
        extra.append(f"density={candidate['density']:.2f}")
    if candidate.get("method") == "task_arithmetic":
        extra.append(f"lambda={candidate.get('lambda', 1.0):.2f}")
    return f"{candidate.get('method', '?')}: " + " ".join(parts + extra)


def front_table(rows: list[TrialRow], front: dict) -> str:
    tasks = front["tasks"]
    by_number = {r.number: r for r in rows}
    head = ["trial", "label", "mean"] + tasks
    lines = [head]
    for n in front["trials"]:
        r = by_number[n]
        lines.append([str(n), r.label, f"{r.objective:.3f}"] + [f"{r.normalized[t]:.3f} ({r.raw[t]:.3f})" for t in tasks])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("")
    out.append("normalized score (raw score); merge weights (linear shown normalized):")
    out += [f"  trial {n}: {_weights(by_number[n].candidate)}" for n in front["trials"]]
    out.append(f"hypervolume {front['hypervolume']:.4f} (reference point: 0 on every task)")
    return "\n".join(out)

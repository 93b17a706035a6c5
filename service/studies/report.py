"""Text and JSON views of a study's front, for the CLI and the API.

The front a user reads is over validation documents (scores the search never saw, with 95%
intervals); the search documents' front stays available for diagnosis, labelled as such."""

from __future__ import annotations

from contract.granularity import Granularity
from contract.methods import METHOD_INFO
from optimizer.attrs import V_PICK, V_RECOMMENDED
from optimizer.recommend import shown
from optimizer.records import TrialRow


def _values(row: TrialRow, split: str) -> dict:
    """objective, raw and normalized per task on ``split``, with intervals on validation."""
    v = row.validation if split == "validation" else None
    if v and "objective" in v:
        return {
            "objective": v["objective"]["value"],
            "raw": {t: e["value"] for t, e in v["raw"].items()},
            "normalized": {t: e["value"] for t, e in v["normalized"].items()},
            "intervals": {"objective": v["objective"], "raw": v["raw"], "normalized": v["normalized"],
                          "documents": v["n"]},
        }
    return {"objective": row.objective, "raw": row.raw, "normalized": row.normalized, "intervals": None}


def front_json(rows: list[TrialRow], front: dict, verdict: dict | None = None) -> dict:
    by_number = {r.number: r for r in rows}
    split = front.get("split", "search")
    return {
        "split": split,
        "tasks": front["tasks"],
        "hypervolume": front["hypervolume"],
        "reference_point": front["reference_point"],
        # tasks left out of the hypervolume: no trial scores above 0 on them (optimizer/front.py)
        "hypervolume_skips": front.get("hypervolume_skips", []),
        "front": [
            {
                "trial": n,
                "label": by_number[n].label,
                "kind": by_number[n].kind,
                "merge": by_number[n].candidate,
                **_values(by_number[n], split),
                "search": {"objective": by_number[n].objective, "raw": by_number[n].raw,
                           "normalized": by_number[n].normalized},
            }
            for n in front["trials"]
        ],
        "verdict": verdict if split == "validation" else None,
    }


def hypervolume_line(hv: float, tasks: list[str], skipped: list[str]) -> str:
    if not skipped:
        return f"hypervolume {hv:.4f} (reference point: 0 on every task)"
    names = ", ".join(f"'{t}'" for t in skipped)
    return (f"hypervolume {hv:.4f} over {len(tasks) - len(skipped)} of {len(tasks)} tasks (reference point: 0 "
            f"on every task): left out {names}, where no trial scores above 0 (check the task: it carries "
            "no information and would make the hypervolume 0)")


MAX_GROUPS_SHOWN = 16  # past this, each checkpoint's weights are summarized (the JSON has them all)


def _group_weights(candidate: dict) -> list[str]:
    """Per checkpoint, its weight in each group (linear: as a share of that group's total)."""
    g = Granularity.model_validate(candidate["granularity"])
    gw: dict[str, list[float]] = candidate["group_weights"]
    n = len(g.labels())
    totals = [sum(ws[i] for ws in gw.values()) or 1.0 for i in range(n)] if candidate.get("method") == "linear" \
        else [1.0] * n
    shares = {k: [w / t for w, t in zip(ws, totals, strict=True)] for k, ws in gw.items()}
    if n <= MAX_GROUPS_SHOWN:
        head = f"[{g.describe()}: {' '.join(g.labels())}]"
        return [head] + [f"{k}=" + "/".join(f"{v:.2f}" for v in vs) for k, vs in shares.items()]
    return [f"[{g.describe()}: {n} groups, mean (min-max)]"] + [
        f"{k}={sum(vs) / n:.2f}({min(vs):.2f}-{max(vs):.2f})" for k, vs in shares.items()]


def _weights(candidate: dict) -> str:
    w = candidate.get("weights", {})
    total = sum(w.values()) or 1.0
    parts = [f"{k}={v / total:.2f}" if candidate.get("method") == "linear" else f"{k}={v:.2f}" for k, v in w.items()]
    if candidate.get("group_weights") and candidate.get("granularity"):
        parts = _group_weights(candidate)
    extra = []
    if candidate.get("density") is not None:
        extra.append(f"density={candidate['density']:.2f}")
    info = METHOD_INFO.get(candidate.get("method", ""))
    if info is not None and "lambda" in info.searched:  # the method's lambda is searched: show it
        extra.append(f"lambda={candidate.get('lambda', 1.0):.2f}")
    return f"{candidate.get('method', '?')}: " + " ".join(parts + extra)


def _cell(value: float, interval: dict | None) -> str:
    if interval is None:
        return f"{value:.3f}"
    return f"{value:.3f} ±{(interval['hi'] - interval['lo']) / 2:.3f}"


def _marks(verdict: dict | None) -> dict[int, str]:
    """Trial -> its mark: * the recommended merge, + the search's best (when another trial)."""
    v = verdict or {}
    marks = {} if v.get(V_PICK) is None else {v[V_PICK]: "+"}
    if v.get(V_RECOMMENDED) is not None:
        marks[v[V_RECOMMENDED]] = "*"
    return marks


def front_table(rows: list[TrialRow], front: dict, verdict: dict | None = None) -> str:
    data = front_json(rows, front, verdict)
    tasks, split = data["tasks"], data["split"]
    marks = _marks(verdict) if split == "validation" else {}
    head = ["trial", "label", "mean (95% CI)" if split == "validation" else "mean", "search mean"] + tasks
    # The marked trials are always shown: below the front when they are not on it.
    on_front = {e["trial"] for e in data["front"]}
    by_number = {r.number: r for r in rows}
    extra = [n for n in marks if n not in on_front and n in by_number]
    below = front_json(rows, {**front, "trials": extra}, verdict)["front"] if extra else []
    lines = [head]
    for e in data["front"] + below:
        iv = e["intervals"]
        mean = (f"{e['objective']:.3f} [{iv['objective']['lo']:.3f}, {iv['objective']['hi']:.3f}]" if iv
                else f"{e['objective']:.3f}")
        search = e["search"]["objective"]
        mark = f" {marks[e['trial']]}" if e["trial"] in marks else ""
        lines.append([f"{e['trial']}{mark}", shown(e["label"]), mean, "" if search is None else f"{search:.3f}"]
                     + [f"{_cell(e['normalized'][t], iv and iv['normalized'][t])} ({e['raw'][t]:.3f})" for t in tasks])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    if extra:
        out.insert(2 + len(data["front"]), "  ".join("-" * w for w in widths) + "  (not on the front)")
    if split == "validation":
        docs = sorted({n for e in data["front"] if e["intervals"] for n in e["intervals"]["documents"].values()})
        n = f"{docs[0]}" if len(docs) == 1 else f"{docs[0]}-{docs[-1]}" if docs else "?"
        out.insert(0, f"Pareto front on VALIDATION documents ({n} per task, never seen by the search): "
                      "normalized ±95% half-interval (raw); 'search mean' is the search documents' score, "
                      "optimistic, for diagnosis")
    else:
        out.insert(0, "Pareto front on SEARCH documents (the ones the search optimized on: optimistic scores, "
                      "for diagnosis; the validation front is what to report)")
    out.append("")
    if "*" in marks.values():
        out.append("* the recommended merge: best on search documents of all trials, set-up included "
                   "(scored on validation documents)")
    if "+" in marks.values():
        out.append("+ the search's best merge (the verdict's question: did searching beat set-up?)")
    out.append("merge weights (linear shown normalized):")
    out += [f"  trial {e['trial']}: {_weights(e['merge'])}" for e in data["front"] + below]
    out.append(hypervolume_line(data["hypervolume"], tasks, data["hypervolume_skips"]))
    if verdict is not None and split == "validation":
        out += ["", verdict["text"]]
    return "\n".join(out)

"""The verdict a study ends with: does the search's merge beat the baselines on documents the
search never saw, by more than noise?

Which trial is "the best merge" is decided on the SEARCH documents (the search trial with the
highest search objective), and so is the best baseline; how good they are, and their difference,
is measured on the VALIDATION documents, paired over the same documents. Picking the winner by
its validation score instead would bring the winner's curse back into the reported number."""

from __future__ import annotations

from collections.abc import Mapping

from optimizer import validation as V
from optimizer.records import BASE_LABEL, TrialRow
from optimizer.spec import StudySpec
from optimizer.stats import compare


def shown(label: str) -> str:
    if label == BASE_LABEL:
        return "the base model"
    return label.removeprefix("checkpoint:")


def _by_search(rows: list[TrialRow]) -> TrialRow | None:
    return max(rows, key=lambda r: r.objective if r.objective is not None else float("-inf"), default=None)


def verdict(spec: StudySpec, attrs: Mapping, rows: list[TrialRow]) -> dict | None:
    """None when the study has no validation documents; else the comparisons and their text."""
    boot = V.bootstrap(spec, attrs)
    if boot is None:
        return None
    entries = V.stored(attrs)
    ok = [r for r in rows if r.state == "COMPLETE" and r.validation and "objective" in r.validation]
    baselines = [r for r in ok if r.kind == "baseline"]
    pick = _by_search([r for r in ok if r.kind == "search"])
    best_baseline = _by_search(baselines)
    out = {"pick": None, "best_baseline": None, "comparisons": [],
           "documents": {t: int(i.shape[1]) for t, i in boot.idx.items()}}
    if pick is None or best_baseline is None:
        out["text"] = "no search trial has been scored on the validation documents yet"
        return out
    against = {"best baseline": best_baseline,
               "best single checkpoint": _by_search([r for r in baselines if r.label.startswith("checkpoint:")]),
               "uniform average": next((r for r in baselines if r.label == "uniform"), None),
               "base model": next((r for r in baselines if r.label == BASE_LABEL), None)}
    docs = lambda r: V.load_docs(entries[r.number])  # noqa: E731
    mine = docs(pick)
    lines, seen = [], set()
    for role, other in against.items():
        if other is None or other.number in seen:
            continue
        seen.add(other.number)
        c = compare(boot, mine, docs(other))
        out["comparisons"].append({"against": role, "trial": other.number, "label": other.label, **c.to_json()})
        lines.append(f"  vs {role} ({shown(other.label)}, trial {other.number}): {c}"
                     f"{'  significant' if c.significant else '  not significant'}")
    head = out["comparisons"][0]
    out["pick"], out["best_baseline"] = pick.number, best_baseline.number
    b = f"{shown(best_baseline.label)} (trial {best_baseline.number})"
    ci = f"95% CI [{head['lo']:+.4f}, {head['hi']:+.4f}]"
    if head["significant"] and head["diff"] > 0:
        first = f"best merge: trial {pick.number} beats the best baseline {b} by {head['diff']:+.4f} ({ci})"
    elif head["significant"]:
        first = (f"the best baseline {b} beats the search's best merge (trial {pick.number}) by "
                 f"{-head['diff']:+.4f} ({ci}): the search found nothing better")
    else:
        first = (f"no merge is significantly better than the best baseline {b}: trial {pick.number} "
                 f"differs by {head['diff']:+.4f} ({ci})")
    n = sorted(set(out["documents"].values()))
    per = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
    out["text"] = "\n".join([f"on validation documents ({per} per task, never seen by the search; mean "
                             f"normalized score, paired bootstrap over documents):", first, *lines])
    return out


def study_verdict(study, rows: list[TrialRow]) -> dict | None:
    """The verdict of a stored study (None without validation documents)."""
    from optimizer.records import A_SPEC
    from optimizer.spec import parse_spec

    attrs = study.user_attrs
    if A_SPEC not in attrs:
        return None
    return verdict(parse_spec(attrs[A_SPEC]), attrs, rows)

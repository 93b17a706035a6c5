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


def _headline(role: str, pick: TrialRow, other: TrialRow, c: dict) -> str:
    who = f"{shown(other.label)} (trial {other.number})"
    ci = f"95% CI [{c['lo']:+.4f}, {c['hi']:+.4f}]"
    if c["significant"] and c["diff"] > 0:
        return f"best merge: trial {pick.number} beats the {role} {who} by {c['diff']:+.4f} ({ci})"
    if c["significant"]:
        return f"the {role} {who} beats the search's best merge (trial {pick.number}) by {-c['diff']:+.4f} ({ci})"
    return f"no merge is significantly better than the {role} {who}: trial {pick.number} differs by {c['diff']:+.4f} ({ci})"


def verdict(spec: StudySpec, attrs: Mapping, rows: list[TrialRow]) -> dict | None:
    """None when the study has no validation documents; else the comparisons and their text.

    Two questions, each answered by a paired comparison: does merging beat every single model
    (each checkpoint alone and the base)? Does the search beat the merge baselines (uniform,
    TA, TIES, DARE-TIES)?"""
    boot = V.bootstrap(spec, attrs)
    if boot is None:
        return None
    entries = V.stored(attrs)
    ok = [r for r in rows if r.state == "COMPLETE" and r.validation and "objective" in r.validation]
    baselines = [r for r in ok if r.kind == "baseline"]
    singles = [r for r in baselines if r.label.startswith("checkpoint:") or r.label == BASE_LABEL]
    pick = _by_search([r for r in ok if r.kind == "search"])
    out = {"pick": None, "comparisons": [], "documents": {t: int(i.shape[1]) for t, i in boot.idx.items()}}
    if pick is None or not singles:
        out["text"] = ("no verdict yet: no search trial has validation scores (each is scored once it reaches "
                       "the search documents' front)")
        return out
    against = {"best single model": _by_search(singles),
               "best merge baseline": _by_search([r for r in baselines if r not in singles]),
               "best single checkpoint": _by_search([r for r in singles if r.label != BASE_LABEL]),
               "uniform average": next((r for r in baselines if r.label == "uniform"), None),
               "base model": next((r for r in singles if r.label == BASE_LABEL), None)}
    docs = lambda r: V.load_docs(entries[r.number])  # noqa: E731
    mine = docs(pick)
    heads, lines, seen = [], [], set()
    for role, other in against.items():
        if other is None or other.number in seen:
            continue
        seen.add(other.number)
        c = compare(boot, mine, docs(other)).to_json()
        out["comparisons"].append({"against": role, "trial": other.number, "label": other.label, **c})
        if role in ("best single model", "best merge baseline"):
            heads.append(_headline(role, pick, other, c))
        lines.append(f"  vs {role} ({shown(other.label)}, trial {other.number}): {c['diff']:+.4f} "
                     f"(95% CI [{c['lo']:+.4f}, {c['hi']:+.4f}], p={c['p']:.3f})"
                     f"{'  significant' if c['significant'] else '  not significant'}")
    out["pick"] = pick.number
    n = sorted(set(out["documents"].values()))
    per = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
    out["text"] = "\n".join([f"verdict on validation documents ({per} per task, never seen by the search; "
                             "mean normalized score, paired bootstrap over documents; the best merge is "
                             "the search trial best on search documents):", *heads, *lines])
    return out


def study_verdict(study, rows: list[TrialRow]) -> dict | None:
    """The verdict of a stored study (None without validation documents)."""
    from optimizer.records import A_SPEC
    from optimizer.spec import parse_spec

    attrs = study.user_attrs
    if A_SPEC not in attrs:
        return None
    return verdict(parse_spec(attrs[A_SPEC]), attrs, rows)

"""The verdict a study ends with: which merge to use, and did searching pay?

Two answers. The RECOMMENDED merge is set-up's best trial on the SEARCH documents (a single
checkpoint, greedy soup, ...) unless the search's best beats it there beyond the documents'
noise (optimizer/recommend.py), so a study does not leave its user below a baseline it computed
for a lead that was luck. Separately, the search's best trial
(the search trial with the highest search objective) is compared with the best single model and
the best merge baseline: did the search beat set-up? Which trial is best is always decided on
search documents; how good it is, and every difference, is measured on the VALIDATION documents,
paired over the same documents. Picking by validation score instead would bring the winner's
curse back into the reported number."""

from __future__ import annotations

from collections.abc import Mapping

from optimizer import validation as V
from optimizer.attrs import (
    A_SPEC,
    BASE_LABEL,
    KIND_BASELINE,
    KIND_SEARCH,
    ROLE_BASE,
    ROLE_BEST_CHECKPOINT,
    ROLE_BEST_MERGE,
    ROLE_BEST_SINGLE,
    ROLE_UNIFORM,
    UNIFORM,
    V_COMPARISONS,
    V_DOCUMENTS,
    V_PICK,
    V_RECOMMENDATION,
    V_RECOMMENDED,
    V_SEARCH_PAID,
    V_TEXT,
    VAL_DOCS,
    is_single,
)
from optimizer.recommend import Recommendation, best_on_search, recommend, shown
from optimizer.records import TrialRow
from optimizer.spec import StudySpec
from optimizer.stats import compare


def _headline(role: str, pick: TrialRow, other: TrialRow, c: dict) -> str:
    who = f"{shown(other.label)} (trial {other.number})"
    ci = f"95% CI [{c['lo']:+.4f}, {c['hi']:+.4f}]"
    if c["significant"] and c["diff"] > 0:
        return f"best merge: trial {pick.number} beats the {role} {who} by {c['diff']:+.4f} ({ci})"
    if c["significant"]:  # the other's lead, with its interval turned the same way round
        flipped = f"95% CI [{-c['hi']:+.4f}, {-c['lo']:+.4f}]"
        return f"the {role} {who} beats the search's best merge (trial {pick.number}) by {-c['diff']:+.4f} ({flipped})"
    return f"no merge is significantly better than the {role} {who}: trial {pick.number} differs by {c['diff']:+.4f} ({ci})"


def _recommendation(rec: Recommendation, entries: dict, boot) -> str:
    n = rec.row.number
    obj = boot.summary(V.load_docs(entries[n]))["objective"] if n in entries and VAL_DOCS in entries[n] else None
    score = "" if obj is None else f"; validation {obj['value']:.4f} [{obj['lo']:.4f}, {obj['hi']:.4f}]"
    return rec.text() + score


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
    baselines = [r for r in ok if r.kind == KIND_BASELINE]
    singles = [r for r in baselines if is_single(r.label)]
    pick = best_on_search([r for r in ok if r.kind == KIND_SEARCH])
    rec = recommend(spec, attrs, rows)
    out = {V_PICK: None, V_RECOMMENDED: None if rec is None else rec.row.number,
           V_RECOMMENDATION: None if rec is None else rec.to_json(), V_SEARCH_PAID: None,
           V_COMPARISONS: [], V_DOCUMENTS: {t: int(i.shape[1]) for t, i in boot.idx.items()}}
    top = [] if rec is None or rec.row.number not in entries else [_recommendation(rec, entries, boot)]
    if pick is None or not singles:
        out[V_TEXT] = "\n".join([*top, "no verdict yet: no search trial has validation scores (each is scored "
                                 "once it reaches the search documents' front)"])
        return out
    against = {ROLE_BEST_SINGLE: best_on_search(singles),
               ROLE_BEST_MERGE: best_on_search([r for r in baselines if r not in singles]),
               ROLE_BEST_CHECKPOINT: best_on_search([r for r in singles if r.label != BASE_LABEL]),
               ROLE_UNIFORM: next((r for r in baselines if r.label == UNIFORM), None),
               ROLE_BASE: next((r for r in singles if r.label == BASE_LABEL), None)}
    docs = lambda r: V.load_docs(entries[r.number])  # noqa: E731
    mine = docs(pick)
    heads, lines, seen = [], [], set()
    for role, other in against.items():
        if other is None or other.number in seen:
            continue
        seen.add(other.number)
        c = compare(boot, mine, docs(other)).to_json()
        out[V_COMPARISONS].append({"against": role, "trial": other.number, "label": other.label, **c})
        if role in (ROLE_BEST_SINGLE, ROLE_BEST_MERGE):
            heads.append(_headline(role, pick, other, c))
        lines.append(f"  vs {role} ({shown(other.label)}, trial {other.number}): {c['diff']:+.4f} "
                     f"(95% CI [{c['lo']:+.4f}, {c['hi']:+.4f}], p={c['p']:.3f})"
                     f"{'  significant' if c['significant'] else '  not significant'}")
    out[V_PICK] = pick.number
    # Did searching pay? Only if the search's best beats the set-up trial best on search
    # documents, significantly, on validation documents.
    best_setup = best_on_search(baselines)
    c = next(x for x in out[V_COMPARISONS] if x["trial"] == best_setup.number) if best_setup.number in seen else None
    out[V_SEARCH_PAID] = bool(c and c["significant"] and c["diff"] > 0)
    paid = ("searching paid: the search's best merge beats every set-up trial's best" if out[V_SEARCH_PAID] else
            f"searching did not pay (yet): the search's best merge is not significantly better than the best "
            f"set-up trial, {shown(best_setup.label)} (trial {best_setup.number})")
    n = sorted(set(out[V_DOCUMENTS].values()))
    per = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
    out[V_TEXT] = "\n".join([f"verdict on validation documents ({per} per task, never seen by the search; "
                             "mean normalized score, paired bootstrap over documents; the best merge is "
                             "the search trial best on search documents):", *heads, *lines, *top, paid])
    return out


def study_verdict(study, rows: list[TrialRow]) -> dict | None:
    """The verdict of a stored study (None without validation documents)."""
    from optimizer.carry_over import stored_spec

    attrs = study.user_attrs
    if A_SPEC not in attrs:
        return None
    return verdict(stored_spec(attrs), attrs, rows)

"""The verdict a study ends with: which merge to use, and did searching pay?

Two answers. The RECOMMENDED merge is the trial best on the SEARCH documents among all trials,
set-up included (a single checkpoint, greedy soup or a search trial: whoever found it), so a
study never leaves its user below a baseline it computed. Separately, the search's best trial
(the search trial with the highest search objective) is compared with the best single model and
the best merge baseline: did the search beat set-up? Which trial is best is always decided on
search documents; how good it is, and every difference, is measured on the VALIDATION documents,
paired over the same documents. Picking by validation score instead would bring the winner's
curse back into the reported number."""

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
    if c["significant"]:  # the other's lead, with its interval turned the same way round
        flipped = f"95% CI [{-c['hi']:+.4f}, {-c['lo']:+.4f}]"
        return f"the {role} {who} beats the search's best merge (trial {pick.number}) by {-c['diff']:+.4f} ({flipped})"
    return f"no merge is significantly better than the {role} {who}: trial {pick.number} differs by {c['diff']:+.4f} ({ci})"


def recommended(rows: list[TrialRow]) -> TrialRow | None:
    """The trial to use: best search objective among all complete full-fidelity trials."""
    done = [r for r in rows if r.state == "COMPLETE" and r.objective is not None]
    return _by_search(done)


def _recommendation(rec: TrialRow, n: int, entries: dict, boot) -> str:
    obj = boot.summary(V.load_docs(entries[rec.number]))["objective"] if rec.number in entries else None
    score = "" if obj is None else f"; validation {obj['value']:.4f} [{obj['lo']:.4f}, {obj['hi']:.4f}]"
    who = "a search trial" if rec.kind == "search" else f"set-up: {shown(rec.label)}"
    return (f"recommended merge: trial {rec.number} ({who}), the best on search documents of all {n} "
            f"trials{score}")


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
    rec = recommended(rows)
    out = {"pick": None, "recommended": None if rec is None else rec.number, "search_paid": None,
           "comparisons": [], "documents": {t: int(i.shape[1]) for t, i in boot.idx.items()}}
    n_done = len([r for r in rows if r.state == "COMPLETE"])
    top = [] if rec is None or rec.number not in entries else [_recommendation(rec, n_done, entries, boot)]
    if pick is None or not singles:
        out["text"] = "\n".join([*top, "no verdict yet: no search trial has validation scores (each is scored "
                                 "once it reaches the search documents' front)"])
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
    # Did searching pay? Only if the search's best beats the set-up trial best on search
    # documents, significantly, on validation documents.
    best_setup = _by_search(baselines)
    c = next(x for x in out["comparisons"] if x["trial"] == best_setup.number) if best_setup.number in seen else None
    out["search_paid"] = bool(c and c["significant"] and c["diff"] > 0)
    paid = ("searching paid: the search's best merge beats every set-up trial's best" if out["search_paid"] else
            f"searching did not pay (yet): the search's best merge is not significantly better than the best "
            f"set-up trial, {shown(best_setup.label)} (trial {best_setup.number})")
    n = sorted(set(out["documents"].values()))
    per = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
    out["text"] = "\n".join([f"verdict on validation documents ({per} per task, never seen by the search; "
                             "mean normalized score, paired bootstrap over documents; the best merge is "
                             "the search trial best on search documents):", *heads, *lines, *top, paid])
    return out


def study_verdict(study, rows: list[TrialRow]) -> dict | None:
    """The verdict of a stored study (None without validation documents)."""
    from optimizer.carry_over import stored_spec
    from optimizer.records import A_SPEC

    attrs = study.user_attrs
    if A_SPEC not in attrs:
        return None
    return verdict(stored_spec(attrs), attrs, rows)

"""Which merge a study recommends, and why.

Two candidates: the set-up trial best on search documents (a checkpoint, the base, greedy soup,
uniform, TA...) and the search's best trial on search documents. The search's best is
recommended only when it beats the set-up's best on the search documents BEYOND THEIR NOISE:
its lead, paired over the same documents (a bootstrap over documents, stats.py), must be above
zero at one-sided 95% (the claim is directional: "the search's best is better"). Otherwise the
set-up's best is kept. The search's best is the highest of
many noisy scores, so it leads by chance more often than not (the winner's curse): recommending
it on any lead fell significantly below greedy soup on fresh documents in 2 of 3 seeds of a
trained pool with 150 search documents per task (bench/RESULTS.md, merge_helps).

Only search documents decide: the validation documents stay for measuring the recommendation.
Without per-document search values (exact scores, which have no noise; studies stored before
they were kept) the best on search documents of all trials is recommended, as before."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from optimizer import validation as V
from optimizer.attrs import A_DIRECTIONS, BASE_LABEL, CHECKPOINT_PREFIX, KIND_SEARCH, is_checkpoint
from optimizer.records import TrialRow
from optimizer.spec import StudySpec
from optimizer.stats import Bootstrap, Comparison, DocScores, comparison, lower_bound, paired_draws

RULE_NOISE = "beyond noise"  # the search's best led by more than the search documents' noise
RULE_WITHIN = "within noise"  # it led, but not beyond the noise: set-up's best kept
RULE_BEST = "best on search"  # no lead, or no per-document values to judge one by
ALPHA = 0.05  # the lead's one-sided lower bound at 95% must be above 0


def shown(label: str) -> str:
    return "the base model" if label == BASE_LABEL else label.removeprefix(CHECKPOINT_PREFIX)


def best_on_search(rows: list[TrialRow]) -> TrialRow | None:
    """The trial best on search documents; a tie goes to the earlier trial (set-up before search)."""
    return max(rows, key=lambda r: (r.objective if r.objective is not None else float("-inf"), -r.number),
               default=None)


@dataclass(frozen=True)
class Recommendation:
    row: TrialRow  # the trial to use
    setup: TrialRow | None  # set-up's best on search documents
    search: TrialRow | None  # the search's best on search documents
    rule: str  # RULE_*
    comparison: Comparison | None = None  # search - setup on the search documents, paired
    n_trials: int = 0
    bound: float | None = None  # the lead's one-sided 95% lower bound (decides)

    def to_json(self) -> dict:
        return {"trial": self.row.number, "rule": self.rule,
                "setup_trial": None if self.setup is None else self.setup.number,
                "search_trial": None if self.search is None else self.search.number,
                "search_lead": None if self.comparison is None else {**self.comparison.to_json(),
                                                                      "lower_bound": self.bound}}

    def text(self) -> str:
        r, c = self.row, self.comparison
        who = "a search trial" if r.kind == KIND_SEARCH else f"set-up: {shown(r.label)}"
        head = f"recommended merge: trial {r.number} ({who})"
        if c is None or self.setup is None or self.search is None:
            return f"{head}, the best on search documents of all {self.n_trials} trials"
        ci = f"paired one-sided 95% lower bound {self.bound:+.4f}"
        if self.rule == RULE_NOISE:
            return (f"{head}: it beats the best set-up trial, {shown(self.setup.label)} (trial {self.setup.number}), "
                    f"by {c.diff:+.4f} on search documents, beyond their noise ({ci})")
        return (f"{head}: the search's best, trial {self.search.number}, leads it by {c.diff:+.4f} on search "
                f"documents, within their noise ({ci}): kept the set-up trial")


def search_bootstrap(spec: StudySpec, attrs: Mapping, rows: list[TrialRow], n: Mapping[str, int]) -> Bootstrap | None:
    """Resampling of the search documents with each task's reference (as the search normalizes),
    or None when a reference has no per-document values."""
    singles = {r.label.removeprefix(CHECKPOINT_PREFIX): r.raw for r in rows if is_checkpoint(r.label) and r.raw}
    numbers = {r.label: r.number for r in rows}
    by_number = {r.number: r for r in rows}
    directions = attrs.get(A_DIRECTIONS) or {}
    try:
        ref_trials = V.reference_trials(spec, singles, directions, numbers)
    except (KeyError, ValueError):  # a reference missing: set-up not complete
        return None
    refs: dict[str, DocScores | None] = {}
    for task, number in ref_trials.items():
        if number is None:
            refs[task] = None
            continue
        docs = by_number[number].search_docs
        if not docs or task not in docs or docs[task]["n"] != n[task]:
            return None
        refs[task] = DocScores.from_json(docs[task])
    return Bootstrap(V.task_terms(spec, directions, refs), n)


def _docs(row: TrialRow, tasks: list[str]) -> dict[str, DocScores] | None:
    if not row.search_docs or any(t not in row.search_docs for t in tasks):
        return None
    return {t: DocScores.from_json(row.search_docs[t]) for t in tasks}


def recommend(spec: StudySpec, attrs: Mapping, rows: list[TrialRow]) -> Recommendation | None:
    """The study's recommended merge among its complete full-fidelity trials (None: none yet)."""
    done = [r for r in rows if r.state == "COMPLETE" and r.objective is not None]
    if not done:
        return None
    setup = best_on_search([r for r in done if r.kind != KIND_SEARCH])
    search = best_on_search([r for r in done if r.kind == KIND_SEARCH])
    overall = best_on_search(done)
    plain = Recommendation(overall, setup, search, RULE_BEST, n_trials=len(done))
    if setup is None or search is None or overall is not search:
        return plain
    tasks = spec.task_names
    a, b = _docs(search, tasks), _docs(setup, tasks)
    if a is None or b is None or any(a[t].n != b[t].n for t in tasks):
        return plain
    boot = search_bootstrap(spec, attrs, done, {t: b[t].n for t in tasks})
    if boot is None:
        return plain
    diff, draws = paired_draws(boot, a, b)  # one set of draws: the interval shown, the bound deciding
    c, bound = comparison(diff, draws), lower_bound(draws, ALPHA)
    beyond = bound > 0
    return Recommendation(search if beyond else setup, setup, search, RULE_NOISE if beyond else RULE_WITHIN, c,
                          len(done), bound)

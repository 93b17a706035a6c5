"""The validation work of a running study (see validation.py for what is stored and why):
references and baselines during set-up (optimizer/setup.py), then each new search-front trial,
each claimed by whichever worker asks first. Also the noise guidance printed when set-up ends."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

import optuna

from contract.evaluator import Evaluator
from contract.merge import MergeSpec
from optimizer import validation as V
from optimizer.attrs import (
    A_FRONT,
    A_NOISE,
    A_VFRONT,
    A_VREFS,
    KIND_BASELINE,
    KIND_SEARCH,
    NOISE_OBJECTIVE_SE,
    NOISE_RESOLVABLE,
    NOISE_TASKS,
    T_CANDIDATE,
    T_KIND,
    T_LABEL,
    T_OBJ,
    VAL_DOCS,
    VAL_ERROR,
    VAL_SUMMARY,
    VAL_TIMINGS,
    is_checkpoint,
    is_single,
)
from optimizer.events import StudyListener
from optimizer.progress import Progress
from optimizer.records import trials
from optimizer.spec import StudySpec
from optimizer.stats import DocScores, expected_se
from optimizer.steps import Budget, Step

# Merge searches chase improvements of about 1% of expert level; a noisier objective cannot
# tell such candidates apart.
CHASED_DIFFERENCE = 0.01


class ValidationPhase:
    def __init__(
        self,
        study: optuna.Study,
        spec: StudySpec,
        *,
        evaluator: Evaluator,
        claims: V.Claims,
        lock: Callable[[], AbstractContextManager],
        budget: Budget,
        listener: StudyListener,
        progress: Progress,
    ) -> None:
        self.study, self.spec, self.evaluator, self.claims, self.lock = study, spec, evaluator, claims, lock
        self.budget, self.listener, self.progress = budget, listener, progress

    def _complete(self) -> dict[int, dict]:
        return {t.number: t.user_attrs for t in trials(self.study)}

    def _validate(self, number: int, candidate: dict) -> dict:
        """Score one trial's merge on the validation documents and store it."""
        try:
            out = self.evaluator.validate(MergeSpec.model_validate(candidate))
            docs = V.to_docs(out, self.spec.task_names)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # stored, so it is not retried forever; the trial stays off the front
            entry = {VAL_ERROR: f"{type(exc).__name__}: {exc}"}
            self.study.set_user_attr(V.val_key(number), entry)
            self.progress.fail_note(f"validation of trial {number} failed: {exc}")
            return entry
        entry = {VAL_DOCS: {t: d.to_json() for t, d in docs.items()},
                 VAL_TIMINGS: dict(self.evaluator.last_timings or {})}
        boot = V.bootstrap(self.spec, self.study.user_attrs)
        if boot is not None:
            entry[VAL_SUMMARY] = boot.summary(docs)
        self.study.set_user_attr(V.val_key(number), entry)
        self.progress.tick(f"validated trial {number}")
        return entry

    # ------------------------------------------------------------ set-up (optimizer/setup.py)
    def set_references(self, singles: dict, numbers: dict[str, int], directions: dict[str, bool]) -> None:
        """Each task's reference trial on validation documents (once the references are trials)."""
        self.study.set_user_attr(A_VREFS, V.reference_trials(self.spec, singles, directions, numbers))

    def setup_work(self, attrs) -> list[int]:
        """Set-up trials (references first: they normalize everything else) not yet validated."""
        baselines = {n: ua for n, ua in self._complete().items() if ua.get(T_KIND) == KIND_BASELINE}
        is_ref = lambda n: is_single(baselines[n][T_LABEL])  # noqa: E731
        return [n for n in sorted(baselines, key=lambda n: (not is_ref(n), n)) if V.val_key(n) not in attrs]

    def finish_setup(self, numbers: dict[str, int]) -> None:
        """Every set-up trial validated: the summaries that waited for the references' scores,
        the validation front, the noise guidance."""
        boot = V.bootstrap(self.spec, self.study.user_attrs)
        for n, entry in V.stored(self.study.user_attrs).items():
            if VAL_DOCS in entry and VAL_SUMMARY not in entry and boot is not None:
                self.study.set_user_attr(V.val_key(n), {**entry, VAL_SUMMARY: boot.summary(V.load_docs(entry))})
        self._update_front()
        self._noise_guidance(numbers)

    # ------------------------------------------------------------ claimed work (any worker)
    def step(self) -> Step | None:
        """Validate one wanted trial nobody has validated; None when there is nothing to do."""
        done, busy = self.run_one(self._wanted)
        if done is not None:
            return done
        return Step.WAIT if busy and self.budget.done() else None

    def run_one(self, wanted: Callable[[Mapping], list[int]]) -> tuple[Step | None, bool]:
        """Validate the first of ``wanted(attrs)`` that is free: (Step.VALIDATED, False), or
        (None, whether live claims elsewhere hold some of them)."""
        with self.lock():
            attrs = self.study.user_attrs
            todo, busy = self.claims.open_work(attrs, wanted(attrs))
            if not todo:
                return None, bool(busy)
            number = todo[0]
            stop = self.claims.take(number)
        try:
            entry = self._validate(number, self._complete()[number][T_CANDIDATE])
        finally:
            stop()
        vfront = self._update_front()
        listener = getattr(self.listener, "trial_validated", None)  # listeners older than validation lack it
        if listener is not None:
            listener(number, {"summary": entry.get(VAL_SUMMARY), "error": entry.get(VAL_ERROR), "front": vfront})
        return Step.VALIDATED, False

    def _wanted(self, attrs) -> list[int]:
        """The search front, and the search's best merge (the verdict's pick) even when a
        baseline dominates it."""
        wanted = list((attrs.get(A_FRONT) or {}).get("trials", []))
        search = [(ua.get(T_OBJ), n) for n, ua in self._complete().items()
                  if ua.get(T_KIND) == KIND_SEARCH and ua.get(T_OBJ) is not None]
        if search and (best := max(search)[1]) not in wanted:
            wanted.append(best)
        return wanted

    def _update_front(self) -> dict:
        front = V.front(self.spec, self.study.user_attrs, set(self._complete()))
        if front != self.study.user_attrs.get(A_VFRONT):
            self.study.set_user_attr(A_VFRONT, front)
        return front

    # ------------------------------------------------------------ noise guidance
    def _noise_guidance(self, numbers: dict[str, int]) -> None:
        """Each task's standard error at the search's document count, on the normalized scale,
        from the references' per-document spread; a warning when the objective's is larger than
        the differences the search chases."""
        counts = self.evaluator.doc_counts("search")
        entries = V.stored(self.study.user_attrs)
        vrefs = self.study.user_attrs.get(A_VREFS) or {}
        if not counts:
            return
        any_single = next(n for label, n in numbers.items() if is_checkpoint(label))
        per_task, total_w, var = {}, 0.0, 0.0
        weighted = self.spec.search.objective == "weighted"
        for t in self.spec.suite.tasks:
            ref_n = vrefs.get(t.task) if vrefs.get(t.task) is not None else any_single
            if VAL_DOCS not in entries.get(ref_n, {}):
                return
            docs = DocScores.from_json(entries[ref_n][VAL_DOCS][t.task])
            scale = abs(docs.score) if vrefs.get(t.task) is not None and docs.score else 1.0
            se = expected_se(docs, counts[t.task]) / scale
            per_task[t.task] = {"documents": counts[t.task], "se": se}
            w = t.weight if weighted else 1.0
            total_w, var = total_w + w, var + (w * se) ** 2
        se_obj = math.sqrt(var) / (total_w or 1.0)
        # Two independent candidates' objectives differ by noise alone with SE sqrt(2)*se_obj.
        resolvable = 1.96 * math.sqrt(2) * se_obj
        noise = {NOISE_TASKS: per_task, NOISE_OBJECTIVE_SE: se_obj, NOISE_RESOLVABLE: resolvable}
        self.study.set_user_attr(A_NOISE, noise)
        lines = ", ".join(f"{task} {v['se']:.3f} ({v['documents']} docs)" for task, v in per_task.items())
        self.progress.note(f"noise on search documents: standard error per task (normalized) {lines}; objective "
                           f"{se_obj:.4f}, so candidates closer than ~{resolvable:.3f} cannot be told apart")
        if resolvable > CHASED_DIFFERENCE:
            self.progress.warn(f"the search's objective cannot resolve differences below ~{resolvable:.3f}, larger than "
                               f"the ~{CHASED_DIFFERENCE} improvements merging usually finds: raise suite.limit (more "
                               "documents) for a search that ranks candidates by more than noise")

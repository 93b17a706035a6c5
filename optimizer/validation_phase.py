"""The validation work of a running study (see validation.py for what is stored and why):
references and baselines during set-up (optimizer/setup.py), then each new search-front trial,
each claimed by whichever worker asks first. Also the noise guidance printed when set-up ends."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Mapping

from optuna.trial import TrialState

from optimizer import records as R
from optimizer import validation as V
from optimizer.candidate import Candidate
from optimizer.stats import DocScores, expected_se
from optimizer.steps import PhaseHost, Step

log = logging.getLogger(__name__)
# Merge searches chase improvements of about 1% of expert level; a noisier objective cannot
# tell such candidates apart.
CHASED_DIFFERENCE = 0.01


class ValidationPhase:
    def __init__(self, runner: PhaseHost) -> None:
        self.r = runner
        self.claims = V.Claims(runner.study, uuid.uuid4().hex[:12], heartbeat_s=runner.heartbeat_s,
                               grace_s=runner.grace_s)

    def _complete(self) -> dict[int, dict]:
        return {t.number: t.user_attrs for t in self.r.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}

    def _validate(self, number: int, candidate: dict) -> dict:
        """Score one trial's merge on the validation documents and store it."""
        r = self.r
        try:
            out = r.evaluator.validate(Candidate.model_validate(candidate))
            docs = V.to_docs(out, r.task_names)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # stored, so it is not retried forever; the trial stays off the front
            entry = {"error": f"{type(exc).__name__}: {exc}"}
            r.study.set_user_attr(V.val_key(number), entry)
            r.fail_note(f"validation of trial {number} failed: {exc}")
            return entry
        entry = {"docs": {t: d.to_json() for t, d in docs.items()},
                 "timings": dict(r.evaluator.last_timings or {})}
        boot = V.bootstrap(r.spec, r.study.user_attrs)
        if boot is not None:
            entry["summary"] = boot.summary(docs)
        r.study.set_user_attr(V.val_key(number), entry)
        r.tick(f"validated trial {number}")
        return entry

    # ------------------------------------------------------------ set-up (optimizer/setup.py)
    def set_references(self, singles: dict, numbers: dict[str, int]) -> None:
        """Each task's reference trial on validation documents (once the references are trials)."""
        r = self.r
        r.study.set_user_attr(V.A_VREFS, V.reference_trials(r.spec, singles, r.directions, numbers))

    def setup_work(self, attrs) -> list[int]:
        """Set-up trials (references first: they normalize everything else) not yet validated."""
        baselines = {n: ua for n, ua in self._complete().items() if ua.get(R.T_KIND) == "baseline"}
        is_ref = lambda n: baselines[n][R.T_LABEL].startswith("checkpoint:") or baselines[n][R.T_LABEL] == R.BASE_LABEL  # noqa: E731
        return [n for n in sorted(baselines, key=lambda n: (not is_ref(n), n)) if V.val_key(n) not in attrs]

    def finish_setup(self, numbers: dict[str, int]) -> None:
        """Every set-up trial validated: the summaries that waited for the references' scores,
        the validation front, the noise guidance."""
        r = self.r
        boot = V.bootstrap(r.spec, r.study.user_attrs)
        for n, entry in V.stored(r.study.user_attrs).items():
            if "docs" in entry and "summary" not in entry and boot is not None:
                r.study.set_user_attr(V.val_key(n), {**entry, "summary": boot.summary(V.load_docs(entry))})
        self._update_front()
        self._noise_guidance(numbers)

    # ------------------------------------------------------------ claimed work (any worker)
    def step(self) -> Step | None:
        """Validate one wanted trial nobody has validated; None when there is nothing to do."""
        done, busy = self.run_one(self._wanted)
        if done is not None:
            return done
        return Step.WAIT if busy and self.r.budget_done() else None

    def run_one(self, wanted: Callable[[Mapping], list[int]]) -> tuple[Step | None, bool]:
        """Validate the first of ``wanted(attrs)`` that is free: (Step.VALIDATED, False), or
        (None, whether live claims elsewhere hold some of them)."""
        r = self.r
        with r.claim():
            attrs = r.study.user_attrs
            todo, busy = self.claims.open_work(attrs, wanted(attrs))
            if not todo:
                return None, bool(busy)
            number = todo[0]
            stop = self.claims.take(number)
        try:
            entry = self._validate(number, self._complete()[number][R.T_CANDIDATE])
        finally:
            stop()
        vfront = self._update_front()
        listener = getattr(r.listener, "trial_validated", None)
        if listener is not None:
            listener(number, {"summary": entry.get("summary"), "error": entry.get("error"), "front": vfront})
        return Step.VALIDATED, False

    def _wanted(self, attrs) -> list[int]:
        """The search front, and the search's best merge (the verdict's pick) even when a
        baseline dominates it."""
        wanted = list((attrs.get(R.A_FRONT) or {}).get("trials", []))
        search = [(ua.get(R.T_OBJ), n) for n, ua in self._complete().items()
                  if ua.get(R.T_KIND) == "search" and ua.get(R.T_OBJ) is not None]
        if search and (best := max(search)[1]) not in wanted:
            wanted.append(best)
        return wanted

    def _update_front(self) -> dict:
        r = self.r
        front = V.front(r.spec, r.study.user_attrs, set(self._complete()))
        if front != r.study.user_attrs.get(V.A_VFRONT):
            r.study.set_user_attr(V.A_VFRONT, front)
        return front

    # ------------------------------------------------------------ noise guidance
    def _noise_guidance(self, numbers: dict[str, int]) -> None:
        """Each task's standard error at the search's document count, on the normalized scale,
        from the references' per-document spread; a warning when the objective's is larger than
        the differences the search chases."""
        r = self.r
        counts = r.evaluator.doc_counts("search")
        entries = V.stored(r.study.user_attrs)
        vrefs = r.study.user_attrs.get(V.A_VREFS) or {}
        if not counts:
            return
        any_single = next(n for label, n in numbers.items() if label.startswith("checkpoint:"))
        per_task, total_w, var = {}, 0.0, 0.0
        weighted = r.spec.search.objective == "weighted"
        for t in r.spec.suite.tasks:
            ref_n = vrefs.get(t.task) if vrefs.get(t.task) is not None else any_single
            if "docs" not in entries.get(ref_n, {}):
                return
            docs = DocScores.from_json(entries[ref_n]["docs"][t.task])
            scale = abs(docs.score) if vrefs.get(t.task) is not None and docs.score else 1.0
            se = expected_se(docs, counts[t.task]) / scale
            per_task[t.task] = {"documents": counts[t.task], "se": se}
            w = t.weight if weighted else 1.0
            total_w, var = total_w + w, var + (w * se) ** 2
        se_obj = math.sqrt(var) / (total_w or 1.0)
        # Two independent candidates' objectives differ by noise alone with SE sqrt(2)*se_obj.
        resolvable = 1.96 * math.sqrt(2) * se_obj
        r.study.set_user_attr("noise", {"tasks": per_task, "objective_se": se_obj, "resolvable": resolvable})
        lines = ", ".join(f"{task} {v['se']:.3f} ({v['documents']} docs)" for task, v in per_task.items())
        r.note(f"noise on search documents: standard error per task (normalized) {lines}; objective "
                f"{se_obj:.4f}, so candidates closer than ~{resolvable:.3f} cannot be told apart")
        if resolvable > CHASED_DIFFERENCE:
            r.warn(f"the search's objective cannot resolve differences below ~{resolvable:.3f}, larger than the "
                    f"~{CHASED_DIFFERENCE} improvements merging usually finds: raise suite.limit (more documents) "
                    "for a search that ranks candidates by more than noise")

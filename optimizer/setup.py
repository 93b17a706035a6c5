"""A study's set-up, shared by every process working on it, resumable unit by unit.

Units, each claimed like a trial (optimizer/claims.py: a heartbeat keeps a live owner's claim,
the grace period hands a dead owner's to the next process that looks):
- references: each checkpoint alone, and the base;
- merge baselines (uniform, TA, TIES, DARE-TIES), as many as the budget holds, in that order;
  they need no reference, so they run beside them;
- greedy soup's steps, one at a time (each depends on whether the one before joined), once
  every reference is in (the soup starts from the best checkpoint);
- validation of each set-up trial (ValidationPhase's claims, by trial number).

Each result is stored (study user attribute ``setup:LABEL``) as its unit finishes, so nothing
finished is ever redone. Results become trials under the study lock in one fixed order
(checkpoints, base, merge baselines, soups) as soon as every result before them is in: trial
numbers never depend on which worker finished first, so an interrupted set-up ends with the
trials of an uninterrupted one. No trial exists before every reference is in, because every
score is normalized by the references."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping

from optuna.trial import create_trial

from optimizer import greedy
from optimizer import records as R
from optimizer import validation as V
from optimizer.baselines import Baseline, merge_baselines, single_checkpoints
from optimizer.candidate import base_only
from optimizer.claims import Claims
from optimizer.normalize import denominators
from optimizer.steps import PhaseHost, Step

RESULT, CLAIM = "setup:", "setupclaim:"
# [result key, claim key] of each unit open when a process last looked, so that a worker can
# tell without loading the pool whether a study's set-up has work for it (has_free_work).
A_OPEN = "setup_open"
A_DONE = "setup_done"


def has_free_work(attrs: Mapping, grace_s: float) -> bool:
    """False only while every unit open at the last look is held by a live claim elsewhere."""
    if A_DONE in attrs or A_OPEN not in attrs:
        return True
    pending = [claim for result, claim in attrs[A_OPEN] if result not in attrs]
    now = time.time()
    return not pending or any(now - (attrs.get(c) or {}).get("at", 0) >= grace_s for c in pending)


class SetupPhase:
    def __init__(self, runner: PhaseHost) -> None:
        self.r = runner
        self.claims = Claims(runner.study, uuid.uuid4().hex[:12], heartbeat_s=runner.heartbeat_s,
                             grace_s=runner.grace_s, claim_prefix=CLAIM, done_prefix=RESULT)
        spec, names, has_base = runner.spec, runner.spec.checkpoint_names, runner.evaluator.has_base
        self.refs = single_checkpoints(names) + ([Baseline(R.BASE_LABEL, base_only(names))] if has_base else [])
        # Budget: the references are trials whatever it says; the merge baselines take what is
        # left in order, greedy soup the rest (fixed here, not by who finishes first).
        slots = max(0, spec.search.n_trials - len(self.refs))
        self.merges = merge_baselines(names, has_base)[:slots] if spec.search.baselines else []
        soups = spec.search.baselines and spec.search.greedy_soup and len(names) > 2
        self.soup_slots = slots - len(self.merges) if soups else 0
        self.done = False

    # ------------------------------------------------------------ one step
    def step(self) -> Step | None:
        """One unit of set-up work (Step.SETUP, or Step.VALIDATED); Step.WAIT while every open
        unit is held by a live claim elsewhere; None once set-up is complete."""
        r = self.r
        if self.done:
            return None
        if A_DONE in r.study.user_attrs:
            self._load(self._results(r.study.user_attrs))
            self.done = True
            return None
        with r.claim():
            added = self._commit()
            units = {u.label: u for u in self._open(self._results(r.study.user_attrs))}
            attrs = r.study.user_attrs
            todo, busy = self.claims.open_work(attrs, units)
            vwork = r.validation.setup_work(attrs) if r.validation is not None else []
            self._publish(attrs, list(units), vwork)
            stop = self.claims.take(todo[0]) if todo else None
        self._announce(added)
        if todo:
            try:
                result = self._run(units[todo[0]])
            finally:
                stop()
            with r.claim():
                r.study.set_user_attr(self.claims.done_key(todo[0]), result)
                added = self._commit()
            self._announce(added)
            if "error" in result:
                r.fail_note(f"baseline {todo[0]} failed: {result['error']}")
            return Step.SETUP
        vbusy = False
        if r.validation is not None:
            did, vbusy = r.validation.run_one(r.validation.setup_work)
            if did is not None:
                return did
        if busy or vbusy:
            return Step.WAIT
        with r.claim():
            self._finish()
        self.done = True
        return None

    def open_units(self) -> list[str]:
        """Labels of the evaluation units not done yet that may start now."""
        with self.r.claim():
            self._commit()  # the references' denominators, which the next soup needs
            return [u.label for u in self._open(self._results(self.r.study.user_attrs))]

    def _run(self, unit: Baseline) -> dict:
        """Evaluate one unit. A reference that fails fails the set-up (every score needs the
        references); a baseline that fails is stored as failed, not retried."""
        if unit in self.refs:
            raw, timings = self.r.evaluate(unit.candidate)
            return {"raw": raw, "timings": timings}
        try:
            raw, timings = self.r.evaluate(unit.candidate)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {"raw": raw, "timings": timings}

    # ------------------------------------------------------------ what is stored
    def _results(self, attrs: Mapping) -> dict[str, dict]:
        """Label -> {"raw", "timings"} or {"error"}: unit results, and what studies set up
        before units existed stored (their references, their baseline trials)."""
        legacy = attrs.get(R.A_REFS) or {}
        out = {f"checkpoint:{n}": {"raw": raw, "timings": legacy.get("timings", {}).get(n, {})}
               for n, raw in (legacy.get("singles") or {}).items()}
        if legacy.get("base") is not None:
            out[R.BASE_LABEL] = {"raw": legacy["base"], "timings": legacy.get("timings", {}).get("__base__", {})}
        for t in self.r.rows():
            if t.user_attrs.get(R.T_KIND) == "baseline":
                out[t.user_attrs[R.T_LABEL]] = {"raw": t.user_attrs[R.T_RAW], "timings": t.user_attrs.get(R.T_TIMES, {})}
        out.update({k[len(RESULT):]: v for k, v in attrs.items() if k.startswith(RESULT)})
        return out

    def _refs_in(self, results: Mapping) -> bool:
        return all(b.label in results for b in self.refs)

    def _load(self, results: Mapping) -> dict:
        """The references in their stored form; sets the runner's directions and denominators."""
        r, names = self.r, self.r.spec.checkpoint_names
        refs = {"singles": {n: results[f"checkpoint:{n}"]["raw"] for n in names},
                "base": results[R.BASE_LABEL]["raw"] if R.BASE_LABEL in results else None,
                "timings": {n: results[f"checkpoint:{n}"]["timings"] for n in names}}
        if refs["base"] is not None:
            refs["timings"]["__base__"] = results[R.BASE_LABEL]["timings"]
        overrides = {t.task: t.higher_is_better for t in r.tasks if t.higher_is_better is not None}
        stored = r.study.user_attrs.get(R.A_DIRECTIONS) or {}
        r.directions = {**stored, **r.evaluator.directions, **overrides}
        r.dens = denominators(r.tasks, refs["singles"], refs["base"], r.directions)
        return refs

    def _objective(self, result: Mapping) -> float | None:
        return None if "error" in result else self.r.scored(result["raw"])[2]

    def _soups(self, results: Mapping) -> tuple[list[Baseline], Baseline | None]:
        if not self.soup_slots:
            return [], None
        names = self.r.spec.checkpoint_names
        objectives = {label: self._objective(res) for label, res in results.items()
                      if label.startswith("checkpoint:") or label.startswith(greedy.LABEL.format(""))}
        return greedy.plan(names, objectives, self.soup_slots)

    def _open(self, results: Mapping) -> list[Baseline]:
        """Units not done, most urgent first: references (everything waits for them), the next
        soup (the one chain that cannot be shared), merge baselines."""
        missing = [b for b in self.refs if b.label not in results]
        merges = [b for b in self.merges if b.label not in results]
        if missing:
            return missing + merges
        _, nxt = self._soups(results)
        return ([nxt] if nxt else []) + merges

    def _order(self, results: Mapping) -> list[Baseline]:
        """Set-up trials in their fixed order, up to the first result not yet in."""
        out = []
        for b in [*self.refs, *self.merges]:
            if b.label not in results:
                return out
            out.append(b)
        return out + self._soups(results)[0]

    # ------------------------------------------------------------ trials (under the study lock)
    def _commit(self) -> list[tuple[int, dict]]:
        """Add the trials whose turn has come; (number, attrs) of each, announced after the lock
        (the service's listener writes rows that the PostgreSQL study lock would block)."""
        r = self.r
        results = self._results(r.study.user_attrs)
        if not self._refs_in(results):
            return []
        refs = self._load(results)
        attrs = r.study.user_attrs
        if attrs.get(R.A_REFS) != refs:
            r.study.set_user_attr(R.A_REFS, refs)
        if attrs.get(R.A_DIRECTIONS) != r.directions:
            r.study.set_user_attr(R.A_DIRECTIONS, r.directions)
        have = {t.user_attrs.get(R.T_LABEL) for t in r.rows() if t.user_attrs.get(R.T_KIND) == "baseline"}
        added = []
        for b in self._order(results):
            res = results[b.label]
            if b.label in have or "error" in res:
                continue
            norm, values, obj = r.scored(res["raw"])
            ua = r.trial_attrs(b.candidate, "baseline", b.label, res["raw"], norm, obj, res["timings"])
            r.study.add_trial(create_trial(params=r.space.embed(b.candidate), distributions=r.space.distributions(),
                                           values=values, user_attrs=ua))
            added.append((max(t.number for t in r.study.get_trials(deepcopy=False)), ua))
        if r.validation is not None and V.A_VREFS not in attrs:
            r.validation.set_references(refs["singles"], self._numbers())
        if added:
            front = R.compute_front(R.trial_rows(r.study), r.task_names)
            if front != attrs.get(R.A_FRONT):
                r.study.set_user_attr(R.A_FRONT, front)
        return added

    def _announce(self, added: list[tuple[int, dict]]) -> None:
        r = self.r
        for number, ua in added:
            r.listener.trial_finished(number, {"number": number, **ua})
            r.tick(f"set-up: {ua[R.T_LABEL]}")
        if added:
            r.listener.front_changed(r.study.user_attrs[R.A_FRONT])

    def _numbers(self) -> dict[str, int]:
        return {t.user_attrs.get(R.T_LABEL): t.number for t in self.r.rows() if t.user_attrs.get(R.T_KIND) == "baseline"}

    def _publish(self, attrs: Mapping, units: list[str], vwork: list[int]) -> None:
        keys = [[self.claims.done_key(u), self.claims.claim_key(u)] for u in units]
        keys += [[V.val_key(n), V.claim_key(n)] for n in vwork]
        if attrs.get(A_OPEN) != keys:
            self.r.study.set_user_attr(A_OPEN, keys)

    def _finish(self) -> None:
        r = self.r
        if A_DONE in r.study.user_attrs:
            return
        if r.validation is not None:
            r.validation.finish_setup(self._numbers())
        r.study.set_user_attr(A_DONE, True)

"""The ask/tell loop. Phases, each resumable from storage:

1. references: each checkpoint alone (and the base, when there is one) is evaluated; the
   checkpoints' scores give the held-in experts, the base's the held-out reference;
2. baselines: uniform average, task arithmetic, TIES, DARE-TIES (when the spec asks);
3. search: the sampler proposes weights until the budget (n_trials, baselines included) is met.

Reference and baseline trials are added with ``study.add_trial`` so that samplers do not mistake
them for their own proposals, but they carry the same parameters as search trials (their
projection into the space) so intersection search spaces stay intact."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable

import numpy as np
import optuna
from optuna.trial import TrialState, create_trial
from tqdm.auto import tqdm

from optimizer import records as R
from optimizer.baselines import Baseline, merge_baselines, single_checkpoints
from optimizer.candidate import Candidate, Evaluator, base_only
from optimizer.normalize import denominators, normalize, scalarize
from optimizer.samplers import make_sampler, n_objectives
from optimizer.space import SearchSpace
from optimizer.spec import SpecError, StudySpec

log = logging.getLogger(__name__)
# Heartbeats are "experimental" in Optuna and "meant for Study.optimize"; we drive them from our
# own ask/tell loop on purpose (see _record_heartbeat).
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
HEARTBEAT_S, GRACE_S = 10, 60


class StudyFailed(RuntimeError):
    """Too many trials failed; the last error says why."""


def open_storage(url: str) -> optuna.storages.RDBStorage:
    # Heartbeats let a resumed run (or another worker) fail trials of a process that died.
    return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)


def _record_heartbeat(storage: optuna.storages.RDBStorage, trial_id: int) -> Callable[[], None]:
    import threading

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            storage.record_heartbeat(trial_id)

    storage.record_heartbeat(trial_id)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    return stop.set


class StudyRunner:
    def __init__(self, spec: StudySpec, evaluator: Evaluator, *, progress: bool = True) -> None:
        self.spec = spec
        self.evaluator = evaluator
        self.progress = progress
        self.tasks = spec.suite.tasks
        self.task_names = spec.task_names
        self.space = SearchSpace(spec.search, spec.checkpoint_names)
        self.storage = open_storage(spec.storage)
        self.study = self._open_study()
        self.failures = 0
        self._bar: tqdm | None = None

    # ---------------------------------------------------------------- study set-up
    def _open_study(self) -> optuna.Study:
        k = n_objectives(self.spec.search, len(self.tasks))
        study = optuna.create_study(
            study_name=self.spec.name,
            storage=self.storage,
            directions=["maximize"] * k,
            load_if_exists=True,
        )
        if len(study.directions) != k:
            raise SpecError(f"study '{self.spec.name}' already exists with {len(study.directions)} objectives")
        stored = study.user_attrs.get(R.A_IDENTITY)
        mine = self.spec.identity()
        if stored is None:
            study.set_user_attr(R.A_SPEC, self.spec.model_dump(mode="json", by_alias=True))
            study.set_user_attr(R.A_IDENTITY, mine)
        elif stored != _jsonable(mine):
            diff = [key for key in mine if _jsonable(mine[key]) != stored.get(key)]
            raise SpecError(
                f"study '{self.spec.name}' already exists in {self.spec.storage} with a different "
                f"{', '.join(diff)}; choose another name to start a new study"
            )
        return study

    def _rows(self, states: tuple[TrialState, ...] = (TrialState.COMPLETE,)) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    # ---------------------------------------------------------------- evaluation
    def _evaluate(self, cand: Candidate) -> tuple[dict[str, float], dict[str, float]]:
        t0 = time.perf_counter()
        raw = self.evaluator.evaluate(cand)
        timings = dict(getattr(self.evaluator, "last_timings", {}) or {})
        timings["total_s"] = time.perf_counter() - t0
        missing = [t for t in self.task_names if t not in raw]
        if missing:
            raise RuntimeError(f"evaluator returned no score for task '{missing[0]}'")
        return {t: float(raw[t]) for t in self.task_names}, timings

    def _values(self, normalized: dict[str, float]) -> tuple[list[float], float]:
        obj = scalarize(normalized, self.tasks, self.spec.search.objective)
        values = [obj] if len(self.study.directions) == 1 else [normalized[t] for t in self.task_names]
        return values, obj

    def _user_attrs(self, cand: Candidate, kind: str, label: str, raw: dict, norm: dict, obj: float, timings: dict) -> dict:
        return {
            R.T_CANDIDATE: cand.to_json(), R.T_KIND: kind, R.T_LABEL: label, R.T_RAW: raw,
            R.T_NORM: norm, R.T_OBJ: obj, R.T_TIMES: timings,
        }

    # ---------------------------------------------------------------- phase 1: references
    def _references(self) -> dict:
        refs = dict(self.study.user_attrs.get(R.A_REFS) or {"singles": {}, "base": None, "timings": {}})
        names = self.spec.checkpoint_names
        todo: list[tuple[str, Candidate]] = [(n, c.candidate) for n, c in zip(names, single_checkpoints(names), strict=True) if n not in refs["singles"]]
        if self.evaluator.has_base and refs["base"] is None:
            todo.append(("__base__", base_only(names)))
        for key, cand in todo:
            raw, timings = self._evaluate(cand)
            if key == "__base__":
                refs["base"] = raw
            else:
                refs["singles"][key] = raw
            refs["timings"][key] = timings
            self.study.set_user_attr(R.A_REFS, refs)  # saved per model: a crash loses at most one
            self._tick(f"reference {key}")
        directions = {t.task: t.higher_is_better for t in self.tasks if t.higher_is_better is not None}
        directions = {**self.evaluator.directions, **directions}
        self.study.set_user_attr(R.A_DIRECTIONS, directions)
        self.directions = directions
        self.dens = denominators(self.tasks, refs["singles"], refs["base"], directions)
        return refs

    def _add_done(self, cand: Candidate, kind: str, label: str, raw: dict, timings: dict) -> None:
        norm = normalize(raw, self.dens, self.directions)
        values, obj = self._values(norm)
        self.study.add_trial(
            create_trial(
                params=self.space.embed(cand),
                distributions=self.space.distributions(),
                values=values,
                user_attrs=self._user_attrs(cand, kind, label, raw, norm, obj, timings),
            )
        )
        self._after_trial()

    # ---------------------------------------------------------------- phase 2: baselines
    def _baselines(self, refs: dict) -> None:
        have = {t.user_attrs.get(R.T_LABEL) for t in self._rows()}
        names = self.spec.checkpoint_names
        for b in single_checkpoints(names):
            if b.label not in have:
                n = b.label.split(":", 1)[1]
                self._add_done(b.candidate, "baseline", b.label, refs["singles"][n], refs["timings"].get(n, {}))
        if not self.spec.search.baselines:
            return
        for b in merge_baselines(names, self.evaluator.has_base):
            if b.label not in have and self._budget_left() > 0:
                self._run_baseline(b)

    def _run_baseline(self, b: Baseline) -> None:
        try:
            raw, timings = self._evaluate(b.candidate)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a failing baseline is reported, not fatal
            self._fail_note(f"baseline {b.label} failed: {exc}")
            return
        self._add_done(b.candidate, "baseline", b.label, raw, timings)

    # ---------------------------------------------------------------- phase 3: search
    def _x0(self) -> dict[str, float] | None:
        if not self.spec.search.warm_start:
            return None
        # Baselines only: x0 must not move when a study resumes mid-search.
        done = [t for t in self._rows() if t.user_attrs.get(R.T_KIND) == "baseline"]
        if not done:
            return None
        best = max(done, key=lambda t: t.user_attrs.get(R.T_OBJ, -np.inf))
        return self.space.embed(Candidate.model_validate(best.user_attrs[R.T_CANDIDATE]))

    def _budget_left(self) -> int:
        return self.spec.search.n_trials - len(self._rows())

    def _search(self) -> None:
        self.study.sampler = make_sampler(self.spec.search, self._x0())
        dists = self.space.distributions()
        while self._budget_left() > 0:
            optuna.storages.fail_stale_trials(self.study)
            trial = self.study.ask(dists)
            stop_beat = _record_heartbeat(self.storage, trial._trial_id)
            cand = self.space.candidate(trial.params, seed=self.spec.search.seed * 100_003 + trial.number)
            try:
                raw, timings = self._evaluate(cand)
                norm = normalize(raw, self.dens, self.directions)
                values, obj = self._values(norm)
                for key, value in self._user_attrs(cand, "search", f"trial {trial.number}", raw, norm, obj, timings).items():
                    trial.set_user_attr(key, value)
                self.study.tell(trial, values)
            except (KeyboardInterrupt, SystemExit):
                trial.set_user_attr(R.T_ERROR, "interrupted")
                self.study.tell(trial, state=TrialState.FAIL)
                raise
            except Exception as exc:
                trial.set_user_attr(R.T_CANDIDATE, cand.to_json())
                trial.set_user_attr(R.T_ERROR, f"{type(exc).__name__}: {exc}")
                self.study.tell(trial, state=TrialState.FAIL)
                self._fail_note(f"trial {trial.number} failed: {exc}")
                continue
            finally:
                stop_beat()
            self._after_trial()

    # ---------------------------------------------------------------- bookkeeping
    def _fail_note(self, message: str) -> None:
        self.failures += 1
        log.warning(message)
        if self._bar is not None:
            self._bar.write(f"warning: {message}")
        if self.failures >= self.spec.search.max_failures:
            raise StudyFailed(f"{self.failures} trials failed; last: {message}")

    def _after_trial(self) -> None:
        front = R.compute_front(R.trial_rows(self.study), self.task_names)
        self.study.set_user_attr(R.A_FRONT, front)
        best = max((r.user_attrs.get(R.T_OBJ, -np.inf) for r in self._rows()), default=float("nan"))
        self._tick(f"best {best:.3f} hv {front['hypervolume']:.3f}")

    def _tick(self, note: str) -> None:
        if self._bar is not None:
            self._bar.n = len(self._rows())
            self._bar.set_postfix_str(note)
            self._bar.refresh()

    def run(self) -> dict:
        """Run (or resume) the study to its budget; returns the stored front."""
        optuna.storages.fail_stale_trials(self.study)
        self._bar = tqdm(total=self.spec.search.n_trials, desc=self.spec.name, unit="trial", disable=not self.progress)
        try:
            self._tick("references")
            refs = self._references()
            self._baselines(refs)
            self._search()
        finally:
            self._bar.close()
            self._bar = None
        return self.study.user_attrs[R.A_FRONT]


def _jsonable(value):
    import json

    return json.loads(json.dumps(value))

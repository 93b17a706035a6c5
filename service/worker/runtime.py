"""`mergeopt worker`: claim trials of running studies and evaluate them, forever.

Workers coordinate only through the database: Optuna's RDB storage for the search state, the
study rows for state/priority/setup, a short lock around "budget left? then ask" (service/db/locks.py).
A worker keeps the pool of its current study resident between trials; switching studies
reloads. Pause and cancel are honoured between trials; a worker that dies mid-trial leaves a
RUNNING trial whose heartbeat stops, and fail_stale_trials (run by every step) fails it after
the grace period so its budget is claimed again. Set-up (references, baselines, soups, their
validation) is split into units that every worker takes in turn, claimed the same way
(optimizer/setup.py): a dead worker's unit is taken over after the grace period, a live one's
never, and no finished unit is redone."""

from __future__ import annotations

import gc
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from datetime import datetime

import torch
from optuna.exceptions import StorageInternalError
from optuna.trial import TrialState
from sqlalchemy import select, update
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, SQLAlchemyError

from evaluators.merging.resident import pick_device
from evaluators.pool.validation import PoolError
from evaluators.scoring.suite_scorer import SuiteError
from evaluators.security.task_box import TaskBoxStopped
from optimizer import records as R
from optimizer.loop import Step, StudyFailed, StudyRunner
from optimizer.setup import has_free_work
from optimizer.spec import DEVICE_PATTERN, SpecError, parse_spec
from optimizer.storage import open_storage
from service.db.locks import study_lock
from service.db.models import Event, Study, Trial
from service.db.session import session_factory
from service.db.transitions import move_state
from service.settings import Settings
from service.studies.runs import build_evaluator
from service.worker.errors import public_error
from service.worker.listener import DbListener

log = logging.getLogger(__name__)


class SetupFailed(RuntimeError):
    """Setting a study up failed for a reason of the study's own (a device this worker lacks,
    files gone since registration, a pool too big for the device): retrying cannot help."""


FATAL = (StudyFailed, PoolError, SuiteError, SpecError, SetupFailed)
# What goes away by itself (the database restarting, a dropped connection): the worker backs off
# and retries. Any other error while setting a study up fails the study, with its reason, so
# that a study cannot fail on every pick and, with a high priority, starve all the others.
TRANSIENT = (SQLAlchemyError, StorageInternalError, ConnectionError, TimeoutError, TaskBoxStopped)
FINISHED_STATES = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's niceness by ``nice`` (Linux: niceness is per thread, and the
    threads it starts later, torch's intra-op pool included, inherit it). Elsewhere a no-op:
    there a thread id is no process id and setpriority could hit another process."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as exc:
        log.warning("could not lower worker priority: %s", exc)


def check_device(device: str) -> None:
    """SetupFailed unless torch can allocate on ``device`` on this machine."""
    if not re.match(DEVICE_PATTERN, device):
        raise SetupFailed(f"device '{device}' is not one of auto, cpu, mps, cuda, cuda:N")
    try:
        torch.empty(1, device=pick_device(device))
    except Exception as exc:  # RuntimeError (no such ordinal), AssertionError (no CUDA build)...
        raise SetupFailed(f"device '{device}' is not usable on worker {socket.gethostname()}: "
                          f"{type(exc).__name__}: {exc}") from None


class Worker:
    def __init__(self, settings: Settings, *, worker_id: str | None = None, device: str | None = None,
                 stop: threading.Event | None = None) -> None:
        if device:
            check_device(device)  # the operator's choice for every study: refused at start, not per study
        settings.guard_files()  # fileguard refuses the service's own files to every study (settings.py)
        self.settings = settings
        self.url = settings.database_url
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.device = device
        self.stop = stop or threading.Event()
        self.sessions = session_factory(self.url)
        self.storage = open_storage(self.url, heartbeat_s=settings.heartbeat_s, grace_s=settings.grace_s)
        self.runner: StudyRunner | None = None
        self.study_id: str | None = None
        self.trials_run = 0
        self.waiting_for_setup = False  # a study exists but other workers hold all its set-up work

    # ------------------------------------------------------------ study selection
    def _setup_open(self, row: Study) -> bool:
        """Whether a study being set up has a unit for this worker (read from Optuna's study
        attributes, without loading its pool)."""
        try:
            attrs = self.storage.get_study_user_attrs(self.storage.get_study_id_from_name(row.name))
        except KeyError:  # no worker has opened it yet
            return True
        return has_free_work(attrs, self.settings.grace_s)

    def pick(self) -> Study | None:
        """Highest priority, then oldest, running or queued study this worker may work on."""
        with self.sessions() as s:
            rows = s.scalars(
                select(Study).where(Study.state.in_(("queued", "running")))
                .order_by(Study.priority.desc(), Study.created_at)
            ).all()
        waiting = False
        for row in rows:
            if row.prepared or self._setup_open(row):
                self.waiting_for_setup = False
                return row
            waiting = True
        self.waiting_for_setup = waiting
        return None

    def _set_state(self, study_id: str, state: str, *, only_from: tuple[str, ...], error: str | None = None, **extra) -> None:
        with self.sessions() as s, s.begin():
            if move_state(s, study_id, state, only_from, error=error, **extra):
                s.add(Event(study_id=study_id, type="state", payload={"state": state, "error": error, "worker": self.id}))

    def _fail(self, study_id: str, exc: BaseException) -> None:
        """Fail the study with its error as stored errors are (service/worker/errors.py). Where even that
        cannot be stored (the database refuses it), fail it with a fixed reason: a study whose
        failure is not recorded would be picked, and fail, forever."""
        try:
            self._set_state(study_id, "failed", only_from=("queued", "running"),
                            error=public_error(exc, (StudyFailed, SetupFailed)))
        except (OperationalError, InterfaceError, DisconnectionError):
            raise  # the database is away: retried like any transient error
        except SQLAlchemyError as store_exc:
            log.error("study %s: its error could not be stored (%s); failing it without", study_id, store_exc)
            self._set_state(study_id, "failed", only_from=("queued", "running"),
                            error=f"failed; its error could not be stored ({type(store_exc).__name__})")

    def _stop_building(self, study_id: str) -> bool:
        """Whether a study's task build (evaluators/security/task_box.py) is to be killed: the worker is
        stopping, or the study was cancelled or paused meanwhile."""
        if self.stop.is_set():
            return True
        with self.sessions() as s:
            return s.scalar(select(Study.state).where(Study.id == study_id)) in ("cancelled", "paused", None)

    def _state(self, study_id: str) -> str | None:
        with self.sessions() as s:
            return s.scalar(select(Study.state).where(Study.id == study_id))

    # ------------------------------------------------------------ the resident study
    def _drop_runner(self) -> None:
        self.runner, self.study_id = None, None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def _runner_for(self, row: Study) -> StudyRunner:
        if self.study_id != row.id or self.runner is None:
            self._drop_runner()
            spec = parse_spec(row.spec)
            if self.device:
                spec = spec.model_copy(update={"device": self.device})
            check_device(spec.device)
            log.info("worker %s: loading study %s", self.id, row.name)
            self.runner = StudyRunner(
                spec, build_evaluator(spec, progress=False, roots=self.settings.allowed_roots,
                                      trusted_task_roots=self.settings.trusted_task_roots,
                                      task_box=self.settings.task_box(),
                                      should_stop=lambda: self._stop_building(row.id),
                                      options=self.settings.evaluator_options()), progress=False,
                listener=DbListener(self.url, row.id, self.id), claim=study_lock(self.url, row.id), storage=self.storage,
            )
            self.study_id = row.id
        return self.runner

    def _set_up(self, row: Study) -> tuple[StudyRunner, Step | None]:
        """The study's runner, after doing set-up units while any is free: Step.WAIT when
        other workers hold the rest (or a stop was asked), None once set-up is complete;
        SetupFailed for any error that is neither already fatal nor transient (see TRANSIENT)."""
        try:
            runner = self._runner_for(row)
            while (step := runner.prepare(wait=False)) is not None:
                if step is Step.WAIT or self.stop.is_set() or self._state(row.id) != "running":
                    return runner, Step.WAIT  # nothing free, or stop / pause / cancel between units
            if not row.prepared:
                with self.sessions() as s, s.begin():
                    s.execute(update(Study).where(Study.id == row.id).values(prepared=True))
            return runner, None
        except (*FATAL, *TRANSIENT):
            raise
        except Exception as exc:
            log.exception("study %s: set-up failed", row.name)  # the full text for the operator
            raise SetupFailed(f"set-up failed: {public_error(exc)}") from exc

    # ------------------------------------------------------------ the loop
    def run_once(self) -> bool:
        """Do one unit of work (a setup or a trial); False when there was nothing to do."""
        row = self.pick()
        if row is None:
            return False
        self._set_state(row.id, "running", only_from=("queued",))
        try:
            runner, setup = self._set_up(row)
            if setup is not None:
                result = setup  # set-up units left, all held by other workers
            elif self.record_missed(runner) and runner.budget_done():
                result = Step.WAIT  # complete only once every finished trial is recorded
            else:
                result = runner.step()
        except FATAL as exc:
            log.error("study %s failed: %s", row.name, exc)
            self._fail(row.id, exc)
            self._drop_runner()
            return True
        if result is Step.RAN or result is Step.FAILED:
            self.trials_run += 1
        elif result is Step.DONE:
            self._set_state(row.id, "completed", only_from=("running",))
            self._drop_runner()
        elif result is Step.WAIT:
            self.stop.wait(self.settings.worker_poll_s)
        return True

    def record_missed(self, runner: StudyRunner, min_age_s: float = 2.0) -> int:
        """Write the events of trials Optuna has finished but the listener never recorded (the
        database went away between the tell and the event, or the tell's commit landed but its
        reply did not). Trials finished under ``min_age_s`` ago are left to the worker writing
        them; returns how many are still unrecorded."""
        with self.sessions() as s:
            mirrored = dict(s.execute(select(Trial.number, Trial.state).where(Trial.study_id == self.study_id)).all())
        now, left = datetime.now(), 0  # Optuna stores naive local times
        finished = {t.number: t for t in runner.study.get_trials(deepcopy=False, states=FINISHED_STATES)}
        for row in R.trial_rows(runner.study):
            trial = finished.get(row.number)
            if trial is None or mirrored.get(row.number) == row.state:
                continue
            left += 1
            if trial.datetime_complete and (now - trial.datetime_complete).total_seconds() >= min_age_s:
                log.warning("worker %s: recording trial %d (%s), whose event was lost", self.id, row.number, row.state)
                if row.state == "FAIL":
                    runner.listener.trial_failed(row.number, row.error or "failed (event recorded late)")
                elif row.state == "PRUNED":
                    runner.listener.trial_pruned(row.number, row.to_json())
                else:
                    runner.listener.trial_finished(row.number, row.to_json())
                left -= 1
        return left

    def run_forever(self, max_idle_s: float | None = None) -> None:
        """Until stopped (or idle for ``max_idle_s``). Database errors back off and retry."""
        lower_thread_priority(self.settings.worker_nice)
        idle_since, backoff = time.monotonic(), 1.0
        while not self.stop.is_set():
            try:
                did = self.run_once()
                backoff = 1.0
            except Exception:  # the database went away, a bug in one study...: keep the worker alive
                log.exception("worker %s: error, retrying in %.0f s", self.id, backoff)
                self._drop_runner()
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            if did or self.waiting_for_setup:  # waiting for another worker's setup is not idleness
                idle_since = time.monotonic()
            elif max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                return
            else:
                self.stop.wait(self.settings.worker_poll_s)

"""Loaded by worker processes of the fault tests (PYTHONPATH=tests/hooks, MERGEOPT_TEST_HOLD_DIR set):
the first worker to start a search trial says so in a file and then holds the trial until it is
killed, so a test can SIGKILL a worker that is certainly mid-trial (no timing race)."""

import os

_HOLD = os.environ.get("MERGEOPT_TEST_HOLD_DIR")
if _HOLD:
    import time

    import service.worker.runtime as _worker

    _real = _worker.build_evaluator

    def _holding(spec, **kwargs):
        ev = _real(spec, **kwargs)
        evaluate = ev.evaluate

        def evaluate_or_hold(candidate):
            if candidate.seed > 0:  # search trials are seeded by their number; set-up work by 0
                try:
                    fd = os.open(os.path.join(_HOLD, "holding"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return evaluate(candidate)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                while True:  # until SIGKILLed
                    time.sleep(1)
            return evaluate(candidate)

        ev.evaluate = evaluate_or_hold
        return ev

    _worker.build_evaluator = _holding

# MERGEOPT_TEST_SETUP_DIR (test_setup_recovery.py): the stage to hold is read from DIR/stage at
# each set-up step (references | baselines | greedy | validation | finish; absent: none), so one
# worker process serves several studies. The first worker to reach it writes its pid to
# DIR/holding ("pid what") and holds until SIGKILLed. Every finished set-up evaluation is logged to DIR/done
# ("study label-or-number pid time"), so a test can tell that nothing finished was redone.
_SETUP = os.environ.get("MERGEOPT_TEST_SETUP_DIR")
if _SETUP:
    import time

    from optimizer import attrs as _attrs
    from optimizer import setup as _setup
    from optimizer import validation_phase as _vphase
    from optimizer.loop import StudyRunner as _Runner

    def _stage() -> str:
        try:
            with open(os.path.join(_SETUP, "stage")) as fh:
                return fh.read().strip()
        except FileNotFoundError:
            return ""

    def _hold_if(stage: str, what: str) -> None:
        if _stage() != stage:
            return
        try:
            fd = os.open(os.path.join(_SETUP, "holding"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{os.getpid()} {what}".encode())
        os.close(fd)
        while True:  # until SIGKILLed
            time.sleep(1)

    def _log(study: str, what: str) -> None:
        fd = os.open(os.path.join(_SETUP, "done"), os.O_CREAT | os.O_APPEND | os.O_WRONLY)
        os.write(fd, f"{study} {what} {os.getpid()} {time.time():.3f}\n".encode())
        os.close(fd)

    _real_run = _setup.SetupPhase._run

    def _run(self, unit):
        label = unit.label
        kind = "references" if _attrs.is_single(label) else ("greedy" if _attrs.is_soup(label) else "baselines")
        _hold_if(kind, label.replace(" ", "_"))
        out = _real_run(self, unit)
        _log(self.study.study_name, label.replace(" ", "_"))
        return out

    _real_validate = _vphase.ValidationPhase._validate

    def _validate(self, number, candidate):
        setting_up = _attrs.A_SETUP_DONE not in self.study.user_attrs
        if setting_up:
            _hold_if("validation", f"val:{number}")
        out = _real_validate(self, number, candidate)
        if setting_up:
            _log(self.study.study_name, f"val:{number}")
        return out

    _real_prepare = _Runner.prepare

    def _prepare(self, *, wait=True):
        before = self.prepared
        out = _real_prepare(self, wait=wait)
        if out is None and not before:  # set-up complete, the service not told yet, no search trial
            _hold_if("finish", "prepared")
            _log(self.spec.name, "prepared")
        return out

    _setup.SetupPhase._run = _run
    _vphase.ValidationPhase._validate = _validate
    _Runner.prepare = _prepare

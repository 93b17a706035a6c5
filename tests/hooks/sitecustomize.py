"""Loaded by worker processes of the fault tests (PYTHONPATH=tests/hooks, MERGEOPT_TEST_HOLD_DIR set):
the first worker to start a search trial says so in a file and then holds the trial until it is
killed, so a test can SIGKILL a worker that is certainly mid-trial (no timing race)."""

import os

_HOLD = os.environ.get("MERGEOPT_TEST_HOLD_DIR")
if _HOLD:
    import time

    import service.worker as _worker

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

"""Workers yield the CPU to the API and the database they share a machine with (Linux: per-thread
niceness), without touching the threads that serve requests."""

import os
import sys
import threading

import pytest
from servicekit import settings_for

from service.db.migrate import upgrade
from service.worker.runtime import Worker

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.parametrize("nice", [0, 7])
def test_worker_thread_runs_at_lower_priority_than_its_process(tmp_path, nice):
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path}/w.db").model_copy(update={"worker_nice": nice})
    upgrade(settings.database_url)
    worker = Worker(settings)
    seen: dict[str, int] = {}

    def run_once() -> bool:  # what the worker's own thread sees while it works
        seen["worker"] = _niceness()
        inner = threading.Thread(target=lambda: seen.setdefault("started_by_worker", _niceness()))
        inner.start()
        inner.join()
        return False

    worker.run_once = run_once
    before = _niceness()
    t = threading.Thread(target=worker.run_forever, kwargs={"max_idle_s": 0.0})
    t.start()
    t.join(timeout=30)
    assert seen["worker"] == min(19, before + nice)
    assert seen["started_by_worker"] == seen["worker"]  # torch's intra-op threads start this way
    assert _niceness() == before  # the caller's thread (the API's, in `serve`) is untouched

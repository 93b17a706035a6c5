"""The listener's writes outlast a database outage longer than a few retries (a PostgreSQL
restart under load), and give up with the error only after the whole back-off."""

import pytest
from sqlalchemy.exc import InterfaceError, OperationalError

from service.worker import listener


def _flaky(failures: int, exc: type[Exception]):
    calls = []

    @listener._retried
    def write():
        calls.append(1)
        if len(calls) <= failures:
            raise exc("statement", {}, Exception("server closed the connection"))
        return "written"

    return write, calls


@pytest.mark.parametrize("exc", [OperationalError, InterfaceError])
def test_a_long_outage_is_waited_out(monkeypatch, exc):
    slept = []
    monkeypatch.setattr(listener.time, "sleep", slept.append)
    write, calls = _flaky(len(listener.RETRY_DELAYS), exc)  # every retry fails but the last
    assert write() == "written" and len(calls) == len(listener.RETRY_DELAYS) + 1
    assert sum(slept) >= 120  # minutes-long restarts are outlasted, not a few seconds


def test_an_outage_longer_than_the_back_off_raises(monkeypatch):
    monkeypatch.setattr(listener.time, "sleep", lambda s: None)
    write, _ = _flaky(len(listener.RETRY_DELAYS) + 1, OperationalError)
    with pytest.raises(OperationalError):
        write()

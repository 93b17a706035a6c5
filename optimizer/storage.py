"""Optuna RDB storage with heartbeats, driven from our own ask/tell loop."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from optimizer.adapters import optuna as optuna_adapter

# Heartbeats are "experimental" in Optuna and "meant for Study.optimize"; we drive them from our
# own ask/tell loop on purpose (see heartbeat()).
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

HEARTBEAT_S, GRACE_S = 10, 60
EXAMPLES = "sqlite:///mergeopt.db, sqlite:////abs/path/x.db or postgresql+psycopg://user@host/db"


class StorageError(ValueError):
    """A storage URL that cannot work; the message says why, on one line."""


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None: not SQLite, or in memory)."""
    u = make_url(url)
    db = u.database
    if u.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def check_url(url: str, *, must_exist: bool = False) -> URL:
    """Refuse, with the reason, what SQLAlchemy would turn into a traceback later: an unparsable
    URL, an unknown dialect (``postgres://`` is not one), a driver not installed, a SQLite file
    whose folder is missing. ``must_exist``: readers refuse a missing SQLite file, because
    opening it would leave an empty database behind."""
    try:
        u = make_url(url)
    except ArgumentError:
        raise StorageError(f"storage {url!r} is not a database URL (e.g. {EXAMPLES})") from None
    backend = u.drivername.split("+")[0]
    if backend == "postgres":
        raise StorageError(f"storage {_shown(u)}: SQLAlchemy has no 'postgres' dialect; write "
                           f"postgresql+psycopg://{_shown(u).split('://', 1)[1]}")
    try:
        dialect = u.get_dialect()
    except NoSuchModuleError:
        raise StorageError(f"storage {_shown(u)}: unknown database '{u.drivername}' (use {EXAMPLES})") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        hint = "; write postgresql+psycopg://... (psycopg 3)" if backend == "postgresql" else ""
        raise StorageError(f"storage {_shown(u)}: its driver is not installed ({exc}){hint}") from None
    path = sqlite_file(url)
    if path is not None:
        if not path.parent.is_dir():
            raise StorageError(f"storage {_shown(u)}: folder {path.parent.absolute()} does not exist (create it first)")
        if must_exist and not path.is_file():
            raise StorageError(f"storage {_shown(u)}: database file {path.absolute()} does not exist (nothing stored "
                               "there yet: check the path, or pass --storage URL)")
    return u


def open_storage(url: str, *, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S,
                 must_exist: bool = False) -> optuna.storages.RDBStorage:
    """Heartbeats let a resumed run (or another worker) fail the trials of a process that died:
    a RUNNING trial whose heartbeat is older than ``grace_s`` is failed by fail_stale_trials.
    The URL is checked first (check_url); a database that refuses the connection is a
    StorageError with the driver's first line."""
    u = check_url(url, must_exist=must_exist)
    try:
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat_s,
            grace_period=grace_s,
            engine_kwargs={"pool_pre_ping": True},
        )
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "cannot connect"
        raise StorageError(f"storage {_shown(u)}: cannot open the database: {reason}") from None


def heartbeat(storage: optuna.storages.RDBStorage, trial_id: int) -> Callable[[], None]:
    """Record a heartbeat now and every interval from a daemon thread; returns the stop function."""
    stop = threading.Event()
    interval = storage.get_heartbeat_interval() or HEARTBEAT_S

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a database blip must not kill the trial; the next beat retries
                pass

    storage.record_heartbeat(trial_id)
    threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial_id}").start()
    return stop.set


def trials_without_heartbeat(storage: optuna.storages.RDBStorage, trial_ids: list[int]) -> set[int]:
    """RUNNING trials that never recorded a heartbeat (their process died between ask and the
    first beat, e.g. when the database went away). Optuna's fail_stale_trials never sees them."""
    if not trial_ids:
        return set()
    return set(trial_ids) - optuna_adapter.trials_with_heartbeat(storage, trial_ids)

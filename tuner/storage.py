"""Optuna storage from a URL: SQLite by default, PostgreSQL for many workers. URLs are never
printed with their password."""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.event
import sqlalchemy.exc
import sqlalchemy.pool
from sqlalchemy import text
from sqlalchemy.engine import make_url

from harness.errors import ConfigError, TunerError

#: Seconds SQLite waits on a lock held by another process before the command fails with
#: `locked_error` (read when a storage is opened).
SQLITE_LOCK_TIMEOUT_S = 60
#: Seconds a new PostgreSQL connection keeps trying while the server is down (a restart).
PG_RECONNECT_S = 60
#: A running trial records a heartbeat this often; one silent for GRACE_FACTOR times as long
#: belonged to a killed worker and is failed (then retried once).
HEARTBEAT_S = 60
#: A queue worker with nothing to run polls this often, doubling up to MAX_WAIT_S.
MIN_WAIT_S = 1.0
MAX_WAIT_S = 30.0
GRACE_FACTOR = 3
#: PostgreSQL advisory lock held while Optuna creates its tables (see `_schema_lock`).
_SCHEMA_LOCK_KEY = zlib.crc32(b"tuner: optuna schema")


def redact(url: str) -> str:
    """`url` with its password masked (or unchanged if it does not parse)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def open_storage(
    url: str, create: bool = True, heartbeat_s: int = HEARTBEAT_S
) -> optuna.storages.RDBStorage:
    """An RDBStorage for `url`, or a one-line TunerError saying what is wrong with it."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(f"storage: malformed URL {redact(url)!r}") from None
    kwargs: dict[str, object] = {}
    sqlite_file: Path | None = None
    if parsed.drivername.startswith("sqlite"):
        database = parsed.database or ""
        if database and database != ":memory:":
            path = Path(database)
            if not path.exists():
                if not create:
                    raise TunerError(f"storage: no database file {path}")
                path.parent.mkdir(parents=True, exist_ok=True)
            else:
                _check_sqlite(path, need_study_tables=not create)
            sqlite_file = path
        kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}
    elif parsed.get_backend_name() == "postgresql":
        # A server restarted under a study: pooled connections are tested before use and
        # replaced, and a new connection waits for the server to come back (see `_reconnect`).
        kwargs = {"pool_pre_ping": True}
    try:
        with (
            _schema_lock(url, sqlite_file),
            warnings.catch_warnings(),  # heartbeats are 'experimental'; not the user's concern
        ):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=heartbeat_s,
                grace_period=GRACE_FACTOR * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=1
                ),
            )
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"storage: {redact(url)} needs the {exc.name} driver "
            "(pip install 'batch-tuner[postgres]')"
        ) from None
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError):
        raise ConfigError(f"storage: unsupported URL {redact(url)!r}") from None
    except sqlalchemy.exc.OperationalError as exc:
        if sqlite_file is not None and is_locked(exc.orig):
            raise locked_error(sqlite_file) from None
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else "cannot connect"
        raise TunerError(f"storage: cannot open {redact(url)}: {first}") from None
    except sqlalchemy.exc.DatabaseError as exc:
        raise TunerError(
            f"storage: {redact(url)} is not a usable study database: {exc.orig}"
        ) from None
    if sqlite_file is not None:
        _say_when_locked(storage.engine, sqlite_file)
    elif parsed.get_backend_name() == "postgresql":
        sqlalchemy.event.listen(storage.engine, "do_connect", _reconnect)
    return storage


def is_locked(exc: BaseException | None) -> bool:
    """Whether `exc` is SQLite's 'database is locked' (SQLITE_BUSY): another process held a
    lock past the busy timeout."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith("SQLITE_BUSY") or "database is locked" in str(exc)


def locked_error(path: Path) -> TunerError:
    """The one line a user sees when another process holds the SQLite database too long."""
    return TunerError(
        f"storage: {path} is locked by another process (waited {SQLITE_LOCK_TIMEOUT_S} s); "
        "run again once it lets go"
    )


def _say_when_locked(engine: sqlalchemy.Engine, path: Path) -> None:
    """Every statement on `engine` that finds the database locked past the busy timeout
    raises `locked_error` (Optuna would wrap it in a StorageInternalError about invalid
    data; it ends the command with one line instead)."""

    def on_error(context: sqlalchemy.engine.ExceptionContext) -> None:
        if is_locked(context.original_exception):
            raise locked_error(path)

    sqlalchemy.event.listen(engine, "handle_error", on_error)


def _reconnect(
    dialect: sqlalchemy.engine.Dialect, record: object, cargs: Any, cparams: Any
) -> Any:
    """Connect, waiting up to PG_RECONNECT_S for a server that is down (restarting)."""
    deadline = time.monotonic() + PG_RECONNECT_S
    while True:
        try:
            return dialect.connect(*cargs, **cparams)
        except dialect.loaded_dbapi.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


@contextlib.contextmanager
def _schema_lock(url: str, sqlite_file: Path | None) -> Iterator[None]:
    """Serialize RDBStorage's table creation: processes opening a fresh database at the same
    moment otherwise collide there (duplicate key / UNIQUE constraint failed) and all but one
    fail. A file lock beside an SQLite database, an advisory lock on PostgreSQL."""
    if sqlite_file is not None:
        with contextlib.ExitStack() as stack:
            try:  # the file loop.exclusive locks too; closing it releases the lock
                handle = stack.enter_context(open(f"{sqlite_file}.lock", "a"))
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError:  # a read-only folder: no one creates a study there
                pass
            yield
        return
    if make_url(url).get_backend_name() != "postgresql":
        yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


def _check_sqlite(path: Path, need_study_tables: bool = False) -> None:
    """Refuse a file that is not an SQLite database before SQLAlchemy touches it, and (for
    commands that only read) one without Optuna's tables, which RDBStorage would add."""
    try:
        uri = f"file:{path}?mode=ro"
        with contextlib.closing(
            sqlite3.connect(uri, uri=True, timeout=SQLITE_LOCK_TIMEOUT_S)
        ) as conn:
            conn.execute("select count(*) from sqlite_master").fetchone()
            studies = conn.execute(
                "select 1 from sqlite_master where type = 'table' and name = 'studies'"
            ).fetchone()
    except sqlite3.DatabaseError as exc:
        if is_locked(exc):
            raise locked_error(path) from None
        raise TunerError(f"storage: {path} is not an SQLite study database ({exc})") from None
    if need_study_tables and studies is None:
        raise TunerError(f"storage: {path} is not a study database (it has no Optuna tables)")

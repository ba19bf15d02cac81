"""The trial loop every worker runs: ask under a study-wide lock so that any number of workers
on any number of hosts spend the budget exactly, keep a heartbeat while measuring, and tell.

A worker killed in the middle of a trial leaves it RUNNING; once its heartbeat is older than
the grace period, the next worker marks it FAIL and Optuna's retry callback enqueues its
configuration again, once. A retried failure does not count against the budget; its retry does.
"""

from __future__ import annotations

import contextlib
import fcntl
import signal
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Engine, text

from harness.errors import TunerError


def budget_used(study: optuna.Study) -> int:
    """Finished trials that count against the budget (a FAIL that was retried does not)."""
    return _used(study.get_trials(deepcopy=False))


def committed(study: optuna.Study) -> int:
    """`budget_used` plus the RUNNING trials, from one read of the study: two reads miss a
    trial that another worker finishes in between, and the budget is overspent."""
    trials = study.get_trials(deepcopy=False)
    return _used(trials) + sum(t.state == TrialState.RUNNING for t in trials)


def _used(trials: list[FrozenTrial]) -> int:
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and t.number not in retried)
        for t in trials
    )


def running(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


@contextlib.contextmanager
def exclusive(study: optuna.Study, purpose: str = "") -> Iterator[None]:
    """Hold a lock on `study` shared by every worker: an advisory lock on PostgreSQL, a file
    lock beside an SQLite database (only workers on this host can share one). A `purpose`
    names a separate lock (`confirm`) that trials never wait for."""
    engine = _engine(study)
    suffix = f".{purpose}" if purpose else ""
    key = zlib.crc32(f"{study.study_name}{suffix}".encode())
    if engine is None:
        yield
    elif engine.url.get_backend_name() == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    elif engine.url.get_backend_name() == "sqlite" and engine.url.database not in ("", ":memory:"):
        lock_path = Path(f"{engine.url.database}{suffix}.lock")
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        yield


def _engine(study: optuna.Study) -> Engine | None:
    """The SQLAlchemy engine under the study's storage (Optuna wraps RDBStorage in a cache)."""
    storage = study._storage
    rdb = getattr(storage, "_backend", storage)
    engine = getattr(rdb, "engine", None)
    return engine if isinstance(engine, Engine) else None


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, interval_s: float) -> Iterator[None]:
    """Record the trial's heartbeat every `interval_s` while the block runs."""
    storage: Any = study._storage
    if not hasattr(storage, "record_heartbeat") or not storage.get_heartbeat_interval():
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial._trial_id)
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    budget: int,
    timeout_s: float | None,
    on_done: Callable[[optuna.Study, FrozenTrial], None],
    failed: tuple[type[Exception], ...],
) -> int:
    """Run trials until the study's budget (or `timeout_s`) is spent; return how many ran here.

    `failed` exceptions end a trial as FAIL and the loop goes on; KeyboardInterrupt ends it as
    FAIL and propagates; anything else is a bug and propagates too.
    """
    started = time.monotonic()
    done = 0
    storage: Any = study._storage
    interval = storage.get_heartbeat_interval() if hasattr(storage, "record_heartbeat") else None
    while timeout_s is None or time.monotonic() - started < timeout_s:
        with _interrupt_deferred() as interrupted:
            trial = _next_trial(study, budget, interval)
        if trial is None:
            if interrupted:
                raise KeyboardInterrupt
            break
        state, values = TrialState.FAIL, None
        try:
            if interrupted:
                raise KeyboardInterrupt
            with heartbeat(study, trial, interval or 0):
                values = objective(trial)
            state = TrialState.COMPLETE
        except failed:
            pass
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                trial.set_user_attr("failure", "interrupted")
                trial.set_user_attr("fail_reason", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            raise
        study.tell(trial, values, state=state)
        done += 1
        on_done(study, study._storage.get_trial(trial._trial_id))
    return done


def _next_trial(study: optuna.Study, budget: int, interval: int | None) -> optuna.Trial | None:
    """A new trial (asked under the study-wide lock, with a first heartbeat), or None when the
    budget is spent."""
    with exclusive(study):
        if interval:
            fail_stale(study)
        if committed(study) >= budget:
            return None
        with warnings.catch_warnings():  # run_trials keeps the heartbeat itself
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        if interval:  # from now on a killed worker leaves a stale trial, not a RUNNING one
            study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
        return trial


@contextlib.contextmanager
def _interrupt_deferred() -> Iterator[list[int]]:
    """Hold Ctrl-C back while a trial is created: one landing inside `study.ask()` would leave
    the new trial RUNNING and untold. The list says whether one came; the caller raises it."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def check_budget(budget: int) -> None:
    if budget < 1:
        raise TunerError(f"trials: the budget must be at least 1, got {budget}")

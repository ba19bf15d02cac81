"""The trial loop every worker runs: ask under a study-wide lock so that any number of workers
on any number of hosts spend the budget exactly, keep a heartbeat while measuring, and tell.

Each trial records its owner (tuner.lifetime.Owner) when it is asked, under the same lock. A
worker killed in the middle of a trial leaves it RUNNING; the next worker to take the lock
(or the next `optimize`) fails it as 'worker died' at once when the owner was a process of
this host that no longer exists, and when the owner was elsewhere once its heartbeat is older
than the grace period; its configuration is enqueued again (`retry`). A retried failure does
not count against the budget; its retry does. A trial whose child was killed by a signal from
outside is retried the same way. A worker that finds the budget committed waits for the
trials still RUNNING elsewhere instead of calling the study done.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import signal
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec

import optuna
import sqlalchemy.exc
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import text

from harness.errors import TunerError
from tuner import optuna_compat as compat
from tuner.child import KILLED
from tuner.lifetime import Owner, this_process
from tuner.results import TrialRecord

#: Trial attribute: the process measuring it (Owner.to_dict()).
OWNER = "worker"
#: The failure of a trial whose worker ended while measuring it.
WORKER_DIED = "worker died"
#: Failures that say nothing sure about the configuration: it is measured again, at most
#: RETRIES[failure] times in a row (then its last FAIL stands and counts against the budget).
#: A worker never runs a configuration itself (its child does), so its death is retried
#: almost without limit; a child killed by SIGKILL may be the out-of-memory killer's doing,
#: so fewer times.
RETRIES = {WORKER_DIED: 20, KILLED: 5}
RETRIED = tuple(RETRIES)
#: Seconds between looks at trials RUNNING elsewhere, and between the lines that say so.
WAIT_POLL_S = 1.0
WAIT_SAY_S = 30.0

#: Errors of the study database itself (a PostgreSQL restart cutting a statement off, a lost
#: connection): the trial in flight cannot be told. It stays RUNNING, owned by this process,
#: which ends with one line; the next run fails it as 'worker died' and retries it.
STORAGE_ERRORS = (
    optuna.exceptions.StorageInternalError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
)

log = logging.getLogger("tuner")
_P = ParamSpec("_P")


def budget_used(study: optuna.Study) -> int:
    """Finished trials that count against the budget (a FAIL that was retried does not)."""
    return _used(study.get_trials(deepcopy=False))


def committed(study: optuna.Study) -> int:
    """`budget_used` plus the RUNNING trials, from one read of the study: two reads miss a
    trial that another worker finishes in between, and the budget is overspent."""
    return committed_of(study.get_trials(deepcopy=False))


def committed_of(trials: list[FrozenTrial]) -> int:
    """`committed` of trials already read."""
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
    engine = compat.engine(study)
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


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, interval_s: float) -> Iterator[None]:
    """Record the trial's heartbeat every `interval_s` while the block runs."""
    if not compat.heartbeat_interval(study):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                compat.record_heartbeat(study, trial)
            except Exception as exc:  # the database is locked or restarting: beat next time
                log.debug("heartbeat of trial %d not recorded: %s", trial.number, exc)
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def retry(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Enqueue `trial`'s configuration again (a trial failing or failed, to retry) unless it is
    already; False when it has failed so RETRIES times in a row already. Like Optuna's
    RetryFailedTrialCallback (the same `failed_trial` and `retry_history` system attributes),
    without the failed trial's user attributes (its failure, its owner), which would outlive
    the retry's success."""
    failure = TrialRecord.from_trial(trial).failure or WORKER_DIED
    counts = dict(trial.system_attrs.get("retries", {}))
    counts[failure] = counts.get(failure, 0) + 1
    if counts[failure] > RETRIES.get(failure, 0):
        return False
    history = [*trial.system_attrs.get("retry_history", ()), trial.number]
    for other in study.get_trials(deepcopy=False):  # retried already (then killed: recover)
        if trial.number in other.system_attrs.get("retry_history", ()):
            return True
    system_attrs = {**trial.system_attrs, "retry_history": history, "retries": counts}
    system_attrs.setdefault("failed_trial", trial.number)
    distributions: dict[str, BaseDistribution] = dict(trial.distributions)
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=dict(trial.params),
            distributions=distributions,
            system_attrs=system_attrs,
        )
    )
    return True


def recover(study: optuna.Study) -> list[str]:
    """Fail the RUNNING trials whose worker is gone and retry their configurations; call it
    holding `exclusive(study)`. Gone: an owner on this host that no longer exists, or no owner
    at all (a trial is asked and owned under that lock, so its asker died in between), or an
    owner elsewhere silent past the heartbeat's grace period. One line per trial failed."""
    stale: set[int] | None = None  # read once, and only for an owner elsewhere
    lines = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = Owner.from_dict(trial.user_attrs.get(OWNER))
        alive = owner.alive() if owner is not None else False
        if alive is None and stale is None:
            stale = set(compat.stale_trial_ids(study))
        if alive or (alive is None and compat.trial_id(trial) not in (stale or ())):
            continue
        who = owner.describe() if owner is not None else "its worker"
        why = "went silent" if alive is None else "ended"
        reason = f"{who} {why} while measuring it"
        died = TrialRecord(failure=WORKER_DIED, fail_reason=reason)
        if not compat.fail_running(study, trial, died.to_attrs()):
            continue  # finished meanwhile
        again = retry(study, compat.frozen(study, trial))
        then = "its configuration runs again" if again else "too many times in a row"
        lines.append(f"trial {trial.number}: {reason}; failed as '{WORKER_DIED}', {then}")
    return lines


def _storage_lost_is_one_line(run: Callable[_P, int]) -> Callable[_P, int]:
    """`run` with the study database's own errors (STORAGE_ERRORS) as one TunerError line."""

    @functools.wraps(run)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> int:
        try:
            return run(*args, **kwargs)
        except STORAGE_ERRORS as exc:
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise TunerError(
                f"storage: lost the study database ({first}); a trial this process was "
                "measuring is failed and retried by the next run: re-run the same command"
            ) from None

    return guarded


@_storage_lost_is_one_line
def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    budget: int,
    timeout_s: float | None,
    on_done: Callable[[optuna.Study, FrozenTrial], None],
    failed: tuple[type[Exception], ...],
    owner: str = "",
    say: Callable[[str], None] = lambda _: None,
    stop: Callable[[], bool] | None = None,
    before_tell: Callable[[optuna.Study, optuna.Trial, TrialState], None] | None = None,
) -> int:
    """Run trials until the study's budget (or `timeout_s`) is spent, or `stop()` says so
    before a new trial (a cancelled study: the running ones finish); return how many ran here.
    `before_tell` sees each trial this process ran while it can still be written to (a queue
    worker records its logs on it), with the state it is about to be told.

    Each trial is owned by this process, named `owner`. Once the budget is committed, wait
    while trials RUNNING elsewhere may still fail (and be retried here), saying which.
    `failed` exceptions end a trial as FAIL and the loop goes on, optuna.TrialPruned as PRUNED
    (it counts against the budget as a COMPLETE trial does); KeyboardInterrupt ends it as
    FAIL and propagates; the study database lost is one TunerError line; anything else is a
    bug and propagates too.
    """
    started = time.monotonic()
    done = 0
    interval = compat.heartbeat_interval(study)
    me = this_process(owner)
    waiting = _Waiting(study, say)
    while timeout_s is None or time.monotonic() - started < timeout_s:
        if stop is not None and stop():
            break
        with _interrupt_deferred() as interrupted:
            trial = _next_trial(study, budget, interval, me, say)
        if trial is None:
            if interrupted:
                raise KeyboardInterrupt
            if not waiting.still():
                break
            time.sleep(WAIT_POLL_S)
            continue
        state, values = TrialState.FAIL, None
        try:
            if interrupted:
                raise KeyboardInterrupt
            with heartbeat(study, trial, interval or 0):
                values = objective(trial)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED  # its bound, reported, is its value
        except failed:
            pass
        except BaseException as exc:
            if isinstance(exc, STORAGE_ERRORS):
                raise  # nothing can be told now; the trial is recovered as its owner's death
            if isinstance(exc, KeyboardInterrupt):
                TrialRecord(failure="interrupted", fail_reason="interrupted").store(trial)
            study.tell(trial, state=TrialState.FAIL)
            raise
        if before_tell is not None:
            before_tell(study, trial, state)
        failing = compat.frozen(study, trial) if state == TrialState.FAIL else None
        if failing is not None and TrialRecord.from_trial(failing).failure in RETRIED:
            with exclusive(study):  # retried first: a kill in between leaves no trial lost
                retry(study, failing)
                study.tell(trial, state=state)
        else:
            study.tell(trial, values, state=state)
        done += 1
        on_done(study, compat.frozen(study, trial))
    else:
        waiting.left_running()
    return done


class _Waiting:
    """Trials RUNNING elsewhere once the budget is committed: `still()` says whether to wait
    for them (saying which now and then), `left_running()` says they are left behind."""

    def __init__(self, study: optuna.Study, say: Callable[[str], None]) -> None:
        self.study = study
        self.say = say
        self.said = -WAIT_SAY_S

    def still(self) -> bool:
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if trials and time.monotonic() - self.said >= WAIT_SAY_S:
            self.said = time.monotonic()
            for trial in trials:
                self.say(f"waiting for trial {trial.number}: {_whereabouts(trial)}")
        return bool(trials)

    def left_running(self) -> None:
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.say(f"trial {trial.number} is left running: {_whereabouts(trial)}")


def _whereabouts(trial: FrozenTrial) -> str:
    """`worker 2 (pid 4711 on host-a) measures it, started 40 s ago`."""
    owner = Owner.from_dict(trial.user_attrs.get(OWNER))
    who = owner.describe() if owner is not None else "a worker"
    started = trial.datetime_start
    if started is None:
        return f"{who} measures it"
    age = (datetime.now() - started).total_seconds()
    return f"{who} measures it, started {age:.0f} s ago"


def _next_trial(
    study: optuna.Study,
    budget: int,
    interval: int | None,
    owner: Owner,
    say: Callable[[str], None],
) -> optuna.Trial | None:
    """A new trial (asked under the study-wide lock, owned by `owner`, with a first heartbeat),
    or None when the budget is committed."""
    with exclusive(study):
        for line in recover(study):
            say(line)
        if committed(study) >= budget:
            return None
        with warnings.catch_warnings():  # run_trials keeps the heartbeat itself
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        trial.set_user_attr(OWNER, owner.to_dict())
        if interval:  # from now on a killed worker leaves a stale trial, not a RUNNING one
            compat.record_heartbeat(study, trial)
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

"""Every use of Optuna beyond its public API, in one place. Each is checked against the
installed Optuna by tests/tuner/test_optuna_compat.py, which fails loudly when an upgrade
breaks one; pyproject.toml bounds Optuna to the versions those tests passed with.

Why each is needed:
- `storage`, `trial_id`, `frozen`: a study's storage and a trial's storage id, to act on trials
  that another process runs (fail a dead worker's trial) and to read a trial as stored now;
  Optuna's `Study` offers that only for trials of this process.
- `heartbeat_interval`, `record_heartbeat`: run_trials keeps a trial's heartbeat itself (Optuna
  does so only inside `Study.optimize`, which the loop does not use).
- `stale_trial_ids`: Optuna's own staleness rule, without `fail_stale_trials`, which would also
  fail the trials of live workers on this host and retry them with the failed trial's user
  attributes.
- `engine`: the SQLAlchemy engine under the storage, for the study-wide advisory lock.
"""

from __future__ import annotations

from typing import Any, cast

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Engine


def storage(study: optuna.Study) -> BaseStorage:
    """The study's storage (Optuna wraps an RDBStorage in a cache)."""
    return cast(BaseStorage, study._storage)


def rdb(study: optuna.Study) -> RDBStorage | None:
    """The RDBStorage under the study's storage, if it has one."""
    wrapped = storage(study)
    backend = getattr(wrapped, "_backend", wrapped)
    return backend if isinstance(backend, RDBStorage) else None


def engine(study: optuna.Study) -> Engine | None:
    """The SQLAlchemy engine under the study's storage, if it has one."""
    backend = rdb(study)
    return backend.engine if backend is not None else None


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage."""
    return int(study._study_id)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The trial's id in its storage (not its number)."""
    return int(trial._trial_id)


def frozen(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    """The trial as stored now."""
    return storage(study).get_trial(trial_id(trial))


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between a running trial's heartbeats; None when the storage keeps none."""
    wrapped: Any = storage(study)
    if not hasattr(wrapped, "record_heartbeat"):
        return None
    interval = wrapped.get_heartbeat_interval()
    return int(interval) if interval else None


def record_heartbeat(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> None:
    wrapped: Any = storage(study)
    wrapped.record_heartbeat(trial_id(trial))


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """Ids of the RUNNING trials whose heartbeat is older than the grace period."""
    backend = rdb(study)
    if backend is None or not backend.heartbeat_interval:
        return []
    return list(backend._get_stale_trial_ids(study._study_id))


def fail_running(study: optuna.Study, trial: FrozenTrial, attrs: dict[str, Any]) -> bool:
    """Set `attrs` on a RUNNING trial of another process and fail it; False when it finished
    meanwhile."""
    wrapped = storage(study)
    try:
        for key, value in attrs.items():
            wrapped.set_trial_user_attr(trial_id(trial), key, value)
        return wrapped.set_trial_state_values(trial_id(trial), state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False

"""Each private use of Optuna (tuner.optuna_compat) against the installed Optuna, on a real
SQLite storage: when an upgrade breaks one, this fails, naming it."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import Engine

from tuner import optuna_compat as compat


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'compat.db'}", heartbeat_interval=1, grace_period=1
    )
    return optuna.create_study(study_name="compat", storage=storage)


def test_storage_engine_and_ids(study: optuna.Study) -> None:
    assert isinstance(compat.rdb(study), optuna.storages.RDBStorage)
    assert isinstance(compat.engine(study), Engine)
    first, second = study.ask(), study.ask()
    assert compat.trial_id(first) != compat.trial_id(second)
    stored = compat.frozen(study, second)
    assert stored.number == second.number and stored.state == TrialState.RUNNING
    assert compat.trial_id(stored) == compat.trial_id(second)
    in_memory = optuna.create_study()
    assert compat.rdb(in_memory) is None and compat.engine(in_memory) is None
    assert compat.heartbeat_interval(in_memory) is None
    assert compat.stale_trial_ids(in_memory) == []


def test_heartbeats_and_stale_trials(study: optuna.Study) -> None:
    assert compat.heartbeat_interval(study) == 1
    beating, silent = study.ask(), study.ask()
    compat.record_heartbeat(study, silent)
    assert compat.stale_trial_ids(study) == []
    time.sleep(2.5)  # past the 1 s grace period
    compat.record_heartbeat(study, beating)
    assert compat.stale_trial_ids(study) == [compat.trial_id(silent)]


def test_fail_running_sets_attributes_then_fails_and_refuses_a_finished_trial(
    study: optuna.Study,
) -> None:
    trial = study.ask()
    assert compat.fail_running(study, compat.frozen(study, trial), {"failure": "worker died"})
    failed = compat.frozen(study, trial)
    assert failed.state == TrialState.FAIL and failed.user_attrs == {"failure": "worker died"}
    assert not compat.fail_running(study, failed, {"failure": "again"})
    assert compat.frozen(study, trial).user_attrs == {"failure": "worker died"}

"""The study database lost in the middle of a trial (a PostgreSQL restart that cuts a statement
off): the process ends with one line, the trial stays RUNNING under its owner, and the next
run fails it as 'worker died' and retries it. (tests/tuner/test_storage_faults.py restarts a
real PostgreSQL between statements; the cut statement is raised here as SQLAlchemy raises it.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from harness.errors import TunerError
from tuner import optuna_compat as compat
from tuner.lifetime import Owner
from tuner.loop import OWNER, WORKER_DIED, budget_used, recover, run_trials

_LOST = "server closed the connection unexpectedly"


def _lost(trial: optuna.Trial) -> float:
    trial.suggest_categorical("batch_size", [1, 2])
    raise sqlalchemy.exc.OperationalError("UPDATE trials ...", {}, Exception(_LOST))


def _done(_: optuna.Study, __: FrozenTrial) -> None:
    pass


def test_a_lost_database_mid_trial_is_one_line_and_the_trial_is_recovered_later(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    with pytest.raises(TunerError) as caught:
        run_trials(study, _lost, budget=1, timeout_s=None, on_done=_done, failed=())
    message = str(caught.value)
    assert "\n" not in message and _LOST in message and "re-run the same command" in message
    (trial,) = study.get_trials()
    assert trial.state == TrialState.RUNNING  # nothing could be told
    assert Owner.from_dict(trial.user_attrs[OWNER]) is not None

    # The next run, in another process: this one is "dead" only once it has exited, so the
    # trial's owner is rewritten to a process that has.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    owner: dict[str, Any] = dict(trial.user_attrs[OWNER], pid=int(gone.stdout), start=1)
    compat.storage(study).set_trial_user_attr(compat.trial_id(trial), OWNER, owner)
    lines = recover(study)
    assert lines and f"failed as '{WORKER_DIED}', its configuration runs again" in lines[0]
    ran = run_trials(
        study,
        lambda t: float(t.suggest_categorical("batch_size", [1, 2])),
        budget=1,
        timeout_s=None,
        on_done=_done,
        failed=(),
    )
    assert ran == 1 and budget_used(study) == 1
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.get_trials()[1].params == trial.params

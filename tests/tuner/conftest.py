"""Tuner fixtures: one small Offline study made by `python -m tuner optimize` (null backend,
tiny model) once per session, shared read-only by the CLI tests."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.tuner.cli_checks import NULL_OPTIMIZE
from tuner.cli import main

#: Trials of the shared study: the enqueued baseline and two sampled configurations.
SHARED_TRIALS = 3


@dataclass(frozen=True)
class MadeStudy:
    """A study database written by `optimize`; copy it before changing anything."""

    db: Path
    name: str
    cache_dir: Path
    trials: int

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def load(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=self.url)

    def copy_to(self, folder: Path) -> MadeStudy:
        db = folder / self.db.name
        shutil.copyfile(self.db, db)
        return MadeStudy(db, self.name, self.cache_dir, self.trials)


@pytest.fixture(scope="session")
def offline_study(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> MadeStudy:
    """`optimize` on the simulated backend: 3 COMPLETE Offline trials in a fresh SQLite file,
    the top 3 confirmed by one more run each."""
    folder = tmp_path_factory.mktemp("offline-study")
    db = folder / "study.db"
    argv = [
        *NULL_OPTIMIZE,
        "--backend-option",
        "per_sample_ms=0.05",
        "--trials",
        str(SHARED_TRIALS),
        "--confirm-runs",  # confirmed: the tests read the winner and its median
        "1",
        "--storage",
        f"sqlite:///{db}",
        "--cache-dir",
        str(cache_dir),
        "--runs-dir",
        str(folder / "runs"),
        "--duration-s",
        "0.3",
        "--quiet",
    ]
    assert main(argv) == 0
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    made = MadeStudy(db, summary.study_name, cache_dir, SHARED_TRIALS)
    trials = made.load().get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * SHARED_TRIALS
    return made

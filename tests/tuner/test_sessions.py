"""Where a study's time went (tuner.sessions): each `optimize` run appends its session, the
summary says its measuring share, `report` the study's, and `report --json` writes it as
`measuring_share`. Real LoadGen on the null backend, real SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from harness.loadgen_log import read_run
from tests.tuner.cli_checks import NULL_OPTIMIZE
from tuner.cli import main
from tuner.results import baseline_trial
from tuner.sessions import (
    SESSIONS,
    Session,
    loadgen_seconds,
    measuring_line,
    measuring_share,
    sessions,
)


def session(wall: float, processes: int, trials: float, confirm: float) -> Session:
    return Session("2026-12-04T00:00:00+00:00", wall, processes, 3, trials, 2, confirm)


def test_the_share_is_loadgen_seconds_over_wall_time_times_processes() -> None:
    assert session(100, 1, 40, 20).share == pytest.approx(0.6)
    assert session(100, 2, 40, 20).share == pytest.approx(0.3)
    assert session(0, 1, 0, 0).share is None
    attrs = {SESSIONS: [session(100, 1, 40, 20).to_dict(), session(50, 2, 30, 0).to_dict()]}
    assert measuring_share(attrs) == pytest.approx(90 / 200)
    assert [s.wall_s for s in sessions(attrs)] == [100, 50]
    assert measuring_line(attrs).startswith("measuring share: 45% (90.0 s inside LoadGen runs")
    assert "not recorded" in measuring_line({})
    assert measuring_share({}) is None


def test_loadgen_seconds_sum_the_logged_spans() -> None:
    assert loadgen_seconds([{"duration_s": 2.5}, {"duration_s": None}, {"duration_s": 1}]) == 3.5
    assert loadgen_seconds(None) == 0.0


def _run_dirs(folder: Path) -> list[Path]:
    """The LoadGen runs of one measurement's folder (an Offline run too short is run again
    in a folder of its own)."""
    return sorted(p.parent for p in folder.rglob("mlperf_log_detail.txt"))


def _argv(tmp_path: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [
        *NULL_OPTIMIZE,
        "--trials",
        "4",
        "--confirm-top",
        "1",
        "--confirm-runs",
        "1",
        "--duration-s",
        "0.3",
        "--storage",
        f"sqlite:///{tmp_path / 'study.db'}",
        "--cache-dir",
        str(cache_dir),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--study",
        "s",
        *extra,
    ]


@pytest.mark.parametrize("isolate", [False, True], ids=["warm worker", "child per trial"])
def test_each_run_records_its_session_and_report_json_writes_the_share(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str], isolate: bool
) -> None:
    extra = ("--isolate-trials",) if isolate else ()
    assert main(_argv(tmp_path, cache_dir, *extra)) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    (first,) = sessions(study.user_attrs)
    base, (top,) = baseline_trial(study), study.user_attrs["confirmed_top"]
    confirmed = 1 if base is None or base.number == top else 2  # the top 1, and the baseline
    assert (first.trials, first.confirm_runs, first.processes) == (4, confirmed, 1)
    assert first.trials_measuring_s > 0 and first.confirm_measuring_s > 0
    # The confirmation's LoadGen spans are those its logs give (one folder per repeat).
    folders = sorted((tmp_path / "runs" / "s").glob("confirm-*"))
    assert len(folders) == confirmed
    logged = sum(read_run(d).duration_s or 0.0 for f in folders for d in _run_dirs(f))
    assert first.confirm_measuring_s == pytest.approx(logged, abs=0.01)
    # The share by its definition; measuring happens inside the session (an order of
    # spans, not a speed).
    assert first.share == first.measuring_s / first.wall_s
    assert first.measuring_s <= first.wall_s
    assert f"measuring share: {first.share:.0%} of {first.wall_s:.0f} s inside LoadGen" in out
    # The trials' LoadGen spans are the ones their records keep.
    spans = sum(r["duration_s"] for t in study.get_trials() for r in t.user_attrs["loadgen_runs"])
    assert first.trials_measuring_s == pytest.approx(spans, abs=0.01)

    # A run with nothing left to measure records nothing.
    assert main(_argv(tmp_path, cache_dir, *extra)) == 0
    assert "nothing measured in this run" in capsys.readouterr().out
    # A larger budget: a second session.
    assert main([*_argv(tmp_path, cache_dir, *extra), "--trials", "6"]) == 0
    capsys.readouterr()
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    recorded = sessions(study.user_attrs)
    assert [s.trials for s in recorded] == [4, 2]

    report = tmp_path / "report.json"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["report", "--storage", storage, "--study", "s", "--json", str(report)]) == 0
    text = capsys.readouterr().out
    doc = json.loads(report.read_text())
    assert doc["measuring_share"] == pytest.approx(measuring_share(study.user_attrs))
    assert len(doc["sessions"]) == 2 and doc["trials"]["total"] == 6
    assert doc["best"]["value"] > 0 and doc["baseline"]["params"]["batch_size"] == 1
    assert f"measuring share: {doc['measuring_share']:.0%}" in text

"""A study with no feasible trial says how far its latency bound was: the lowest latency any
Server run measured at the study's percentile (its QPS and configuration) and a bound it would
have met, in `optimize`'s summary and in `report`'s. Real Optuna studies in SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from harness.loadgen_log import read_run
from tests.tuner.test_report import _spec, build_study
from tuner import report
from tuner.config import StudyConfig
from tuner.results import compact_run
from tuner.summary import NO_FEASIBLE, render_summary, round_up

DATA = Path(__file__).parents[1] / "harness" / "data" / "loadgen"


def server_runs(*runs: tuple[float, float, bool], **extra: Any) -> list[dict[str, Any]]:
    """Compact runs as `tuner.results.TrialRecord` stores them: the Offline bound, then Server runs
    of (target QPS, p99 ms, valid)."""
    offline = {"scenario": "Offline", "target_qps": None, "valid": True, "p99_ms": 900.0}
    return [offline] + [
        {
            "scenario": "Server",
            "target_qps": qps,
            "valid": valid,
            "p99_ms": p99,
            "scheduled_qps": qps,
            "invalid_reasons": [] if valid else ["latency over the bound"],
            **extra,
        }
        for qps, p99, valid in runs
    ]


def unreachable(tmp: Path) -> optuna.Study:
    """A 15 ms p99 study (build_study's) whose every trial is INVALID; the fastest run is an
    int8 trial's that fails the accuracy floor, so the one named is fp32's 20.84 ms."""
    return build_study(
        tmp,
        "server",
        [
            _spec(
                1,
                1,
                "fp32",
                0.0,
                deque=2000,
                valid=False,
                runs=server_runs((102.0, 25.0, False), (61.2, 22.5, False), (28.9, 20.84, False)),
            ),
            _spec(
                1,
                1,
                "int8",
                0.0,
                deque=500,
                valid=False,
                top1=0.5,
                runs=server_runs((150.0, 40.0, False), (30.0, 16.0, False)),
            ),
            _spec(
                4,
                2,
                "fp32",
                0.0,
                deque=8000,
                valid=False,
                runs=server_runs((300.0, 90.0, False), (10.0, 31.0, False)),
            ),
        ],
    )


LOWEST = (
    "lowest p99 measured: 20.84 ms at 28.9 QPS, trial 0 (fp32, batch 1, 1 stream, "
    "deque 2,000 us); a bound of 21 ms at p99 would have been met"
)


def test_optimize_summary_names_the_lowest_latency_and_a_bound_it_would_meet(
    tmp_path: Path,
) -> None:
    study = unreachable(tmp_path)
    cfg = StudyConfig(scenario="server", latency_ms=15.0, storage=f"sqlite:///{tmp_path}/s.db")
    lines = render_summary(study, cfg).splitlines()
    assert lines[lines.index(NO_FEASIBLE) + 1] == LOWEST


def test_report_summary_names_it_too(tmp_path: Path) -> None:
    lines = report.summary_lines(unreachable(tmp_path))
    assert lines[1] == "best: no feasible trial yet"
    assert lines[2] == LOWEST


def test_the_study_percentile_is_read_from_each_run(tmp_path: Path) -> None:
    """A p90 study: the runs' `percentile_ms` (the latency at LoadGen's own percentile), not
    their p99, and the bound rounded up at 2 significant figures."""
    runs = server_runs((80.0, 30.0, False), (40.0, 25.0, False))
    runs[1]["percentile_ms"], runs[2]["percentile_ms"] = 9.0, 7.31
    study = build_study(tmp_path, "server", [_spec(2, 1, "fp16", 0.0, valid=False, runs=runs)])
    study.set_user_attr("percentile", 90.0)
    study.set_user_attr("latency_ms", 5.0)
    lines = report.summary_lines(study)
    assert lines[2] == (
        "lowest p90 measured: 7.31 ms at 40.0 QPS, trial 0 (fp16, batch 2, 1 stream); "
        "a bound of 7.4 ms at p90 would have been met"
    )


def test_a_lowest_latency_within_the_bound_says_why_its_run_failed(tmp_path: Path) -> None:
    runs = server_runs((50.0, 14.0, False))
    runs[1]["invalid_reasons"] = ["Early stopping: too few queries"]
    study = build_study(tmp_path, "server", [_spec(1, 1, "fp32", 0.0, valid=False, runs=runs)])
    lines = report.summary_lines(study)
    assert lines[2].startswith("lowest p99 measured: 14.00 ms at 50.0 QPS, trial 0")
    assert lines[2].endswith("within the 15 ms bound, yet Early stopping: too few queries")


def test_without_a_server_run_the_fastest_warm_up_batch_is_named(tmp_path: Path) -> None:
    """Trials the warm-up found infeasible (one batch over the bound) ran no Server run."""
    specs = [_spec(8, 1, "fp32", 0.0, valid=False), _spec(1, 1, "fp32", 0.0, valid=False)]
    study = build_study(tmp_path, "server", specs)
    lines = report.summary_lines(study)
    assert lines[2] == (
        "no Server run measured a latency: the fastest warm-up batch took 2.00 ms (median), "
        "trial 0 (fp32, batch 8, 1 stream), against the 15 ms bound"
    )


def test_an_offline_study_has_no_latency_line(tmp_path: Path) -> None:
    study = build_study(tmp_path, "offline", [_spec(1, 1, "fp32", 10.0, valid=False)])
    lines = report.summary_lines(study)
    assert lines[1] == "best: no feasible trial yet" and lines[2].startswith("baseline:")


@pytest.mark.parametrize(
    ("ms", "bound"),
    [(20.84, 21.0), (14.9, 15.0), (21.0, 21.0), (8.5, 8.5), (112.79, 120.0), (0.734, 0.74)],
)
def test_round_up_keeps_two_significant_figures(ms: float, bound: float) -> None:
    assert round_up(ms) == bound


@pytest.mark.parametrize("name", ["server_valid", "server_invalid_latency"])
def test_compact_runs_keep_the_latency_at_loadgens_percentile(name: str) -> None:
    run = read_run(DATA / name)
    assert run.target_percentile is not None
    compact = compact_run(run.to_dict())
    assert compact["percentile_ms"] == run.percentile_ms(run.target_percentile * 100)
    assert compact["percentile_ms"] is not None

"""Tests for harness.loadgen_log on real LoadGen 6.0.17 logs (data/loadgen/make_fixtures.py).

Expected numbers are copied from the fixture files; after regenerating them, update the values.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.errors import ScenarioError
from harness.loadgen_log import (
    DETAIL_FILE,
    SUMMARY_FILE,
    LoadgenRun,
    parse_detail,
    parse_summary,
    read_run,
)

DATA = Path(__file__).parent / "data" / "loadgen"
EARLY_STOP_190 = (
    "Early stopping: Run unsuccessful. Processed 190 queries. Would need to run at least 269"
    " more queries, with the run being successful if every additional query were under latency."
)
EARLY_STOP_600 = (
    "Early stopping: Run unsuccessful. Processed 600 queries. Would need to run at least 65320"
    " more queries, with the run being successful if every additional query were under latency."
)
LATENCY_KEYS = ["min", "max", "mean", "p50", "p90", "p95", "p97", "p99", "p99.9"]


def _line(key: str, value: object, *, error: bool = False, warning: bool = False) -> str:
    """One detail-log line in LoadGen's format."""
    entry = {
        "key": key,
        "value": value,
        "time_ms": 1.0,
        "namespace": "mlperf::logging",
        "event_type": "POINT_IN_TIME",
        "metadata": {"is_error": error, "is_warning": warning, "file": "x.cc", "line_no": 1},
    }
    return ":::MLLOG " + json.dumps(entry)


def test_offline_valid() -> None:
    run = read_run(DATA / "offline_valid")
    assert run.scenario == "Offline"
    assert run.valid is True
    assert run.samples_per_second == 1760.06
    assert run.throughput == 1760.06
    assert run.scheduled_qps is None and run.completed_qps is None
    assert run.target_qps == 4000.0
    assert run.target_latency_ms is None and run.target_percentile is None
    assert list(run.latency_ms) == LATENCY_KEYS
    assert run.latency_ms["p99"] == 2476163328 / 1e6
    assert run.latency_ms["p99.9"] == 2497761865 / 1e6
    assert run.percentile_ms(99) == 2476163328 / 1e6
    assert run.percentile_ms(50.0) == 1245391854 / 1e6
    assert run.percentile_ms(42) is None
    assert (run.query_count, run.sample_count) == (1, 4400)
    assert (run.min_duration_met, run.min_queries_met, run.early_stopping_met) == (
        True,
        True,
        True,
    )
    assert run.perf_constraints_met is None and run.overlatency_query_count is None
    assert run.invalid_reasons == () and run.errors == () and run.warnings == ()
    assert run.duration_s == 2499919411 / 1e9
    assert run.log_dir == str(DATA / "offline_valid")


def test_offline_invalid_min_duration() -> None:
    run = read_run(DATA / "offline_invalid")
    assert (run.scenario, run.valid) == ("Offline", False)
    assert run.samples_per_second == 1828.51
    assert run.target_qps == 200.0
    assert run.latency_ms["p99"] == 119238807 / 1e6
    assert (run.query_count, run.sample_count) == (1, 220)
    assert run.min_duration_met is False
    assert run.min_queries_met is True and run.early_stopping_met is True
    assert run.invalid_reasons == (
        "Increase expected QPS so the loadgen pre-generates a larger (coalesced) query.",
    )


def test_offline_sut_errors_are_collected_and_counted() -> None:
    run = read_run(DATA / "offline_sut_errors")
    assert run.valid is True
    assert run.samples_per_second == 1771.75
    assert run.errors == ("error_runtime: Attempted to complete a sample twice. (3 times)",)
    detail = parse_detail((DATA / "offline_sut_errors" / DETAIL_FILE).read_text())
    assert detail["errors"] == ["error_runtime: Attempted to complete a sample twice."] * 3
    assert detail["num_errors"] == 3


def test_server_valid() -> None:
    run = read_run(DATA / "server_valid")
    assert (run.scenario, run.valid) == ("Server", True)
    assert run.samples_per_second is None
    assert run.scheduled_qps == 494.649
    assert run.completed_qps == 494.36
    assert run.throughput == 494.36
    assert run.target_qps == 500.0
    assert run.target_latency_ms == 50.0
    assert run.target_percentile == 0.99
    assert run.percentile_ms(run.target_percentile * 100) == 1443194 / 1e6
    assert list(run.latency_ms) == LATENCY_KEYS
    assert (run.query_count, run.sample_count, run.overlatency_query_count) == (1000, 1000, 0)
    assert run.perf_constraints_met is True and run.early_stopping_met is True
    assert run.invalid_reasons == ()
    assert run.duration_s == pytest.approx(999 / 494.36)


def test_server_invalid_latency() -> None:
    run = read_run(DATA / "server_invalid_latency")
    assert (run.scenario, run.valid) == ("Server", False)
    assert run.completed_qps == 295.177 and run.scheduled_qps == 298.194
    assert run.target_latency_ms == 10.0
    assert run.latency_ms["p99"] == 20611632 / 1e6
    assert run.latency_ms["p99"] > run.target_latency_ms
    assert (run.query_count, run.overlatency_query_count) == (600, 600)
    assert run.perf_constraints_met is False and run.early_stopping_met is False
    assert run.min_duration_met is True and run.min_queries_met is True
    assert run.invalid_reasons == ("Reduce target QPS to improve latency.", EARLY_STOP_600)


def test_server_invalid_early_stopping() -> None:
    run = read_run(DATA / "server_invalid_early_stopping")
    assert (run.scenario, run.valid) == ("Server", False)
    assert run.completed_qps == 187.612
    assert run.latency_ms["p99"] == 1576944 / 1e6
    assert (run.query_count, run.overlatency_query_count) == (190, 0)
    assert run.perf_constraints_met is True and run.early_stopping_met is False
    assert run.invalid_reasons == (EARLY_STOP_190,)


@pytest.mark.parametrize("case", sorted(p.name for p in DATA.iterdir() if p.is_dir()))
def test_summary_alone_gives_the_same_result(case: str, tmp_path: Path) -> None:
    full = read_run(DATA / case)
    shutil.copy(DATA / case / SUMMARY_FILE, tmp_path)
    alone = read_run(tmp_path)
    for name in (
        "scenario",
        "valid",
        "samples_per_second",
        "target_qps",
        "latency_ms",
        "target_latency_ms",
        "perf_constraints_met",
        "min_duration_met",
        "min_queries_met",
        "early_stopping_met",
        "invalid_reasons",
    ):
        assert getattr(alone, name) == getattr(full, name), name
    # The summary rounds the Server rates to 2 decimals and only counts errors.
    for name in ("scheduled_qps", "completed_qps"):
        assert getattr(alone, name) == pytest.approx(getattr(full, name), abs=0.005), name
    assert bool(alone.errors) == bool(full.errors)


def test_to_dict_is_json_safe() -> None:
    for case in DATA.iterdir():
        if case.is_dir():
            d = read_run(case).to_dict()
            assert json.loads(json.dumps(d, allow_nan=False)) == d
    d = LoadgenRun("Server", False, "x", completed_qps=float("nan"), errors=("e",)).to_dict()
    assert d["completed_qps"] is None and d["throughput"] is None and d["errors"] == ["e"]


def test_parse_detail_keeps_last_value_and_flags() -> None:
    text = "\n".join(
        [
            "not a log line",
            _line("result_validity", "INVALID"),
            _line("warning_generic_message", "slow", warning=True),
            _line("result_validity", "VALID"),
            _line("error_runtime", "boom", error=True),
            ':::MLLOG {"key": "result_query_count", "value": 1',  # cut-off last line
        ]
    )
    detail = parse_detail(text)
    assert detail["result_validity"] == "VALID"
    assert "result_query_count" not in detail
    assert detail["errors"] == ["error_runtime: boom"]
    assert detail["warnings"] == ["warning_generic_message: slow"]


def test_parse_summary_reads_key_value_lines() -> None:
    summary = parse_summary((DATA / "server_invalid_latency" / SUMMARY_FILE).read_text())
    assert summary["Result is"] == "INVALID"
    assert summary["Completed samples per second"] == "295.18"
    assert summary["99.00 percentile latency (ns)"] == "20611632"
    assert summary["Early stopping satisfied"] == "NO"
    assert summary["target_latency (ns)"] == "10000000"
    assert "Recommendations" not in summary


def test_empty_folder_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=f"no logs in {tmp_path}"):
        read_run(tmp_path)


def test_detail_without_result_raises(tmp_path: Path) -> None:
    lines = (DATA / "server_valid" / DETAIL_FILE).read_text().splitlines()
    cut = next(i for i, line in enumerate(lines) if '"result_validity"' in line)
    (tmp_path / DETAIL_FILE).write_text("\n".join(lines[:cut]) + "\n" + lines[cut][:40])
    with pytest.raises(ScenarioError, match=f"no result in {tmp_path}"):
        read_run(tmp_path)


def test_truncated_detail_keeps_what_is_there(tmp_path: Path) -> None:
    text = (DATA / "server_valid" / DETAIL_FILE).read_text()
    cut = text.index('"result_50.00_percentile_latency_ns"') + 20
    (tmp_path / DETAIL_FILE).write_text(text[:cut])
    run = read_run(tmp_path)
    assert (run.scenario, run.valid, run.completed_qps) == ("Server", True, 494.36)
    assert list(run.latency_ms) == ["min", "max", "mean"]
    assert run.percentile_ms(99) is None


def test_unreadable_log_raises(tmp_path: Path) -> None:
    (tmp_path / DETAIL_FILE).mkdir()
    with pytest.raises(ScenarioError, match=str(tmp_path / DETAIL_FILE)):
        read_run(tmp_path)


def test_why_invalid_names_the_checks_loadgen_failed_never_a_met_bound() -> None:
    """A percentile under the bound is never given as the cause: the early-stopping run says
    it was under, how many queries were late and what LoadGen would have needed."""
    early = read_run(DATA / "server_invalid_early_stopping")
    assert early.why_invalid(99.0) == (
        "early stopping failed (p99 1.58 ms is under the 50 ms bound): 0 of 190 queries over "
        "the bound; LoadGen: " + EARLY_STOP_190.removeprefix("Early stopping: ")
    )
    late = read_run(DATA / "server_invalid_latency")
    assert late.why_invalid(99.0) == (
        "p99 20.61 ms over the 10 ms bound; early stopping failed: 600 of 600 queries over "
        "the bound; LoadGen: " + EARLY_STOP_600.removeprefix("Early stopping: ")
    )
    assert read_run(DATA / "offline_invalid").why_invalid(99.0) == "minimum duration not reached"
    assert read_run(DATA / "server_valid").why_invalid(99.0) == ""

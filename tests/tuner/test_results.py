"""tuner.results: the trial record written and read back through a real SQLite study, and the
queries on it, old studies' attribute names included."""

from __future__ import annotations

import copy
import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest

from harness.errors import TunerError
from tests.tuner.conftest import MadeStudy
from tuner import export, report
from tuner.child import INFEASIBLE
from tuner.config import from_stored
from tuner.export import choose_trial
from tuner.results import (
    CONFIRM_SCORES,
    CONFIRMED_SCORE,
    TrialRecord,
    best_trial,
    compact_run,
    confirm_scores,
    confirmed_value,
    engine_builds,
    measured_throughput,
    rate,
    robust_value,
    study_setting,
    study_settings,
)
from tuner.summary import render_summary


def _result(**over: Any) -> dict[str, Any]:
    """A harness result as `harness.measure` returns it (to_dict), cut to what is stored."""
    run = {
        "scenario": "Server",
        "target_qps": 120.0,
        "valid": True,
        "samples_per_second": 119.0,
        "scheduled_qps": 120.0,
        "completed_qps": 119.5,
        "latency_ms": {"p99": 9.5, "p99.9": 11.0},
        "target_percentile": 0.999,
        "invalid_reasons": [],
        "log_dir": "/runs/s/trial-0003/server-1",
    }
    result = {
        "score": 120.0,
        "valid": True,
        "samples_per_second": 119.0,
        "qps": 120.0,
        "latency_ms": {"p50": 2.0, "p90": 5.0, "p99": 9.5},
        "agreement": {"top1": 0.97, "metric": "top1", "value": 0.97, "samples": 64},
        "loadgen_runs": [run],
        "engine_build_s": 1.5,
        "warmup": {"batch_ms": 3.25},
        "device": "Test CPU",
        "backend": "null",
        "versions": {"onnx": "1"},
        "simulated": True,
        "variant_sha256": "ab" * 32,
        "variant_path": "/cache/m.fp16.onnx",
        "variant_build_s": 0.5,
        "engine_cached": False,
        "note": "",
    }
    return {**result, **over}


def _study(tmp_path: Path, *records: tuple[TrialRecord, float]) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = f"sqlite:///{tmp_path / 'r.db'}"
    study = optuna.create_study(study_name="r", storage=storage, direction="maximize")
    for record, value in records:
        trial = study.ask()
        record.store(trial)
        study.tell(trial, value)
    return optuna.load_study(study_name="r", storage=storage)


def test_a_measurement_round_trips_through_the_storage(tmp_path: Path) -> None:
    record = TrialRecord.from_result(_result(), seconds=4.567)
    study = _study(tmp_path, (record, 120.0))
    (trial,) = study.get_trials()
    read = TrialRecord.from_trial(trial)
    assert read == record and read.extra == {}
    attrs = trial.user_attrs
    # The stored schema, by name: studies made before this type read the same.
    assert attrs["trial_seconds"] == 4.57 and attrs["p99_ms"] == 9.5 and attrs["qps"] == 120.0
    assert attrs["agreement_value"] == 0.97 and attrs["agreement_output"] == ""
    assert attrs["agreement_max_abs_error"] is None  # measured, so stored even when None
    assert attrs["log_dir"] == "/runs/s/trial-0003"
    assert attrs["loadgen_runs"][0]["percentile_ms"] == 11.0
    assert "failure" not in attrs and "inputs" not in attrs and "gpu" not in attrs
    assert engine_builds(study) == 1
    attrs = study.user_attrs
    assert measured_throughput(trial) == robust_value(trial, attrs) == 120.0
    assert rate(trial, "server", attrs) == 120.0 and rate(trial, "offline", attrs) == 119.0


def test_an_infeasible_and_a_failed_record_store_only_what_they_know() -> None:
    assert TrialRecord.infeasible("no int8", 2.0).to_attrs() == {
        "trial_seconds": 2.0,
        "failure": INFEASIBLE,
        "fail_reason": "no int8",
        "score": 0.0,
        "valid": False,
    }
    failed = TrialRecord(1.0, "oom", "out of memory")
    assert failed.to_attrs() == {
        "trial_seconds": 1.0,
        "failure": "oom",
        "fail_reason": "out of memory",
    }
    assert not failed.measured


def test_a_copy_leaves_the_confirmation_runs_to_the_trial_it_copies() -> None:
    record = TrialRecord.from_result(_result())
    confirmed = replace(record, confirm_scores=[1.0, 3.0], confirmed_score=2.0)
    copy = confirmed.copy_of(4).to_attrs()
    assert copy["duplicate_of"] == 4
    assert CONFIRM_SCORES not in copy and CONFIRMED_SCORE not in copy


def test_an_old_trial_reads(tmp_path: Path) -> None:
    """Top-1 only (before agreement_value and _metric), unknown attributes kept as read."""
    old = TrialRecord(
        score=50.0,
        valid=True,
        samples_per_second=50.0,
        agreement_top1=0.9,
        extra={"worker": {"pid": 1}},
    )
    confirmed = TrialRecord(
        score=80.0,
        valid=True,
        samples_per_second=80.0,
        confirm_scores=[80.0, 60.0, 70.0],
        confirmed_score=70.0,
    )
    study = _study(tmp_path, (old, 50.0), (confirmed, 80.0))
    first, second = study.get_trials()
    record = TrialRecord.from_trial(first)
    assert (record.agreement, record.metric) == (0.9, "top1")
    assert record.extra == {"worker": {"pid": 1}}
    assert engine_builds(study) is None  # no trial recorded engine_cached
    attrs = study.user_attrs
    assert robust_value(second, attrs) == 70.0 and measured_throughput(second) == 80.0
    assert confirm_scores(second, attrs) == [80.0, 60.0, 70.0]
    assert confirm_scores(first, attrs) == []
    assert rate(second, "offline", attrs) == 70.0


def test_rate_refuses_a_trial_without_a_positive_rate(tmp_path: Path) -> None:
    study = _study(tmp_path, (TrialRecord(score=0.0, valid=True, samples_per_second=0.0), 0.0))
    with pytest.raises(TunerError, match=r"samples_per_second=0\.0, not a positive rate"):
        rate(study.get_trials()[0], "offline", study.user_attrs)


def test_a_confirmed_score_is_the_median_once_every_repeat_has_run() -> None:
    trial = optuna.trial.create_trial(value=80.0)
    key = f"confirm:{trial.number}"
    attrs: dict[str, Any] = {"config": {"confirm_runs": 2}, key: [80.0, 60.0]}
    assert confirmed_value(trial, attrs) is None  # a repeat missing
    assert robust_value(trial, attrs) == 80.0 and confirm_scores(trial, attrs) == [80.0, 60.0]
    attrs[key] = [80.0, 60.0, 0.0]
    assert confirmed_value(trial, attrs) == robust_value(trial, attrs) == 60.0


def test_compact_run_without_a_percentile() -> None:
    run = compact_run({"scenario": "Offline", "latency_ms": {"p99": 4.0}})
    assert run["p99_ms"] == 4.0 and run["percentile_ms"] is None


def test_study_settings_come_from_the_stored_config() -> None:
    config = {"scenario": "offline", "backend": "null", "latency_ms": 15.0, "trials": 12}
    attrs = {"config": config, "scenario": "stale", "model": "tiny"}
    assert study_setting(attrs, "scenario") == "offline"
    assert study_setting(attrs, "latency_ms") is None  # an Offline study has no bound
    assert study_setting(attrs, "trials_budget") == 12
    assert study_setting(attrs, "model") == "tiny"  # not a setting: the attribute
    server = {"config": {**config, "scenario": "server", "percentile": 99.0}}
    assert (study_setting(server, "latency_ms"), study_setting(server, "percentile")) == (
        15.0,
        99.0,
    )
    old = {"scenario": "server", "latency_ms": 10.0}  # made without a config
    assert study_setting(old, "latency_ms") == 10.0
    assert study_settings(old) == old


def test_a_study_without_the_settings_beside_its_config_reads_the_same(
    tmp_path: Path, offline_study: MadeStudy
) -> None:
    """Readers take the settings from the stored config: a study that no longer stores them
    as attributes of their own reports, summarises and exports exactly as before."""
    source = offline_study.load()
    storage = f"sqlite:///{tmp_path / 'lean.db'}"
    lean = optuna.create_study(
        study_name=source.study_name, storage=storage, directions=source.directions
    )
    for key, value in source.user_attrs.items():
        if key not in _DUPLICATED:
            lean.set_user_attr(key, value)
    lean.add_trials(source.get_trials())
    assert not _DUPLICATED & set(lean.user_attrs)
    cfg = from_stored(source.user_attrs["config"], storage=storage)
    assert report.summary_lines(lean) == report.summary_lines(source)
    assert report.trials_table(lean) == report.trials_table(source)
    assert render_summary(lean, cfg) == render_summary(source, cfg)
    for fmt in sorted(set(export.FORMATS) - {"json"}):  # json: stamped with the time
        assert export.FORMATS[fmt](export.study_context(lean), choose_trial(lean)) == (
            export.FORMATS[fmt](export.study_context(source), choose_trial(source))
        )


_DUPLICATED = {
    "backend",
    "scenario",
    "latency_ms",
    "percentile",
    "objectives",
    "accuracy_floor",
    "duration_s",
    "trials_budget",
}


def test_a_study_confirmed_by_an_earlier_version_reads_the_same(
    tmp_path: Path, offline_study: MadeStudy
) -> None:
    """Earlier versions stored each candidate's scores and median on the trial
    (`confirm_scores`, `confirmed_score`) instead of as a study attribute: such a study names
    the same winner with the same value everywhere."""
    source = offline_study.load()
    attrs = source.user_attrs
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(
        study_name=source.study_name, storage=storage, directions=source.directions
    )
    for key, value in attrs.items():
        if not key.startswith("confirm:"):
            old.set_user_attr(key, value)
    trials = []
    for trial in source.get_trials():
        scores = confirm_scores(trial, attrs)
        if scores:
            trial = copy.deepcopy(trial)
            trial.user_attrs = {
                **trial.user_attrs,
                CONFIRM_SCORES: scores,
                CONFIRMED_SCORE: statistics.median(scores),
            }
        trials.append(trial)
    old.add_trials(trials)
    confirmed = [t for t in source.get_trials() if confirmed_value(t, attrs) is not None]
    assert confirmed and not any(k.startswith("confirm:") for k in old.user_attrs)
    best, old_best = best_trial(source), best_trial(old)
    assert best is not None and old_best is not None and old_best.number == best.number
    assert robust_value(old_best, old.user_attrs) == robust_value(best, attrs)
    assert robust_value(best, attrs) == statistics.median(confirm_scores(best, attrs))
    for trial, old_trial in zip(source.get_trials(), old.get_trials(), strict=True):
        assert confirmed_value(old_trial, old.user_attrs) == confirmed_value(trial, attrs)
        assert confirm_scores(old_trial, old.user_attrs) == confirm_scores(trial, attrs)
    cfg = from_stored(attrs["config"], storage=storage)
    assert report.summary_lines(old) == report.summary_lines(source)
    assert report.trials_table(old) == report.trials_table(source)
    assert render_summary(old, cfg) == render_summary(source, cfg)
    for fmt in sorted(set(export.FORMATS) - {"json"}):
        assert export.FORMATS[fmt](export.study_context(old), choose_trial(old)) == (
            export.FORMATS[fmt](export.study_context(source), choose_trial(source))
        )
    docs = [
        json.loads(export.render_json(export.study_context(s), choose_trial(s)))["trial"]
        for s in (old, source)
    ]
    assert docs[0]["value"] == docs[1]["value"] and docs[0]["confirmed"] == docs[1]["confirmed"]

"""`python -m tuner optimize` end to end through `main([...])`: real LoadGen, real SQLite, the
simulated backend or real ONNX Runtime, each trial in a real child process."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.harness.search_checks import check_answer
from tests.tuner.cli_checks import NULL_OPTIMIZE, NULL_SERVER
from tuner.cli import main
from tuner.results import study_setting


def common(tmp_path: Path, cache_dir: Path, db: str = "study.db") -> list[str]:
    return [
        "--storage",
        f"sqlite:///{tmp_path / db}",
        "--cache-dir",
        str(cache_dir),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--duration-s",
        "0.3",
        "--confirm-runs",  # confirmation has tests of its own (test_confirm.py)
        "0",
    ]


def null_args(tmp_path: Path, cache_dir: Path) -> list[str]:
    return [
        *NULL_OPTIMIZE,
        "--backend-option",
        "per_sample_ms=0.05",
        *common(tmp_path, cache_dir),
    ]


def load(tmp_path: Path, db: str = "study.db") -> optuna.Study:
    storage = f"sqlite:///{tmp_path / db}"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def test_optimize_null_backend_stores_every_trial_and_resumes(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*null_args(tmp_path, cache_dir), "--trials", "4"]) == 0
    out = capsys.readouterr().out
    study = load(tmp_path)
    trials = study.get_trials()
    assert len(trials) == 4
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].params == {"batch_size": 1, "streams": 1, "precision": "fp32"}
    measured = [t for t in trials if "duplicate_of" not in t.user_attrs]
    for t in measured:
        attrs = t.user_attrs
        assert attrs["simulated"] is True and attrs["backend"] == "null"
        assert attrs["samples_per_second"] > 0 and attrs["valid"] is True
        assert attrs["loadgen_runs"] and attrs["loadgen_runs"][0]["scenario"] == "Offline"
        assert Path(attrs["log_dir"]).is_dir()
    assert study.user_attrs["model"] == "tiny"
    assert study_setting(study.user_attrs, "scenario") == "offline"
    assert study.user_attrs["simulated"] is True
    assert "speed-up over the baseline" in out and "simulated" in out
    # Re-running the same command with a larger budget resumes the same study.
    assert main([*null_args(tmp_path, cache_dir), "--trials", "6"]) == 0
    again = load(tmp_path)
    assert again.study_name == study.study_name
    assert len(again.get_trials()) == 6
    assert [t.number for t in again.get_trials()[:4]] == [0, 1, 2, 3]
    # The budget is spent: nothing more runs.
    assert main([*null_args(tmp_path, cache_dir), "--trials", "6"]) == 0
    assert len(load(tmp_path).get_trials()) == 6


def test_crash_oom_and_hang_become_failed_trials_and_the_study_goes_on(
    tmp_path: Path, cache_dir: Path
) -> None:
    args = [
        "optimize",
        "--model",
        "tiny",
        "--backend",
        "null",
        "--batch-sizes",
        "1,2,4,8",
        "--streams",
        "1",
        "--precisions",
        "fp32",
        "--sampler",
        "grid",
        "--trials",
        "4",
        "--trial-timeout",
        "20",
        "--backend-option",
        "oom_batch=2",  # batch 4 and 8 run out of memory ...
        "--backend-option",
        "crash_at_batch=8",  # ... but batch 8 crashes first
        *common(tmp_path, cache_dir),
    ]
    assert main(args) == 0
    trials = {t.params["batch_size"]: t for t in load(tmp_path).get_trials()}
    assert set(trials) == {1, 2, 4, 8}
    assert trials[1].state == trials[2].state == TrialState.COMPLETE
    assert trials[4].state == TrialState.FAIL
    assert trials[4].user_attrs["failure"] == "out of memory"
    assert trials[8].state == TrialState.FAIL
    assert trials[8].user_attrs["failure"] == "crash"
    assert "SIGABRT" in trials[8].user_attrs["fail_reason"]


def test_hung_trial_times_out(tmp_path: Path, cache_dir: Path) -> None:
    args = [
        "optimize",
        "--model",
        "tiny",
        "--backend",
        "null",
        "--batch-sizes",
        "1,2",
        "--streams",
        "1",
        "--precisions",
        "fp32",
        "--sampler",
        "grid",
        "--trials",
        "2",
        "--trial-timeout",
        "8",
        "--backend-option",
        "hang_at_batch=2",
        *common(tmp_path, cache_dir),
    ]
    assert main(args) == 0
    trials = {t.params["batch_size"]: t for t in load(tmp_path).get_trials()}
    assert trials[1].state == TrialState.COMPLETE
    assert trials[2].state == TrialState.FAIL
    assert trials[2].user_attrs["failure"] == "timeout"
    assert trials[2].user_attrs["fail_reason"] == "timeout after 8 s"


def test_server_study_with_null_backend_finds_a_valid_qps(tmp_path: Path, cache_dir: Path) -> None:
    args = [
        *NULL_SERVER,
        "--sampler",
        "grid",
        "--trials",
        "2",
        "--backend-option",
        "latency_ms=2",
        "--backend-option",
        "per_sample_ms=0.5",
        *common(tmp_path, cache_dir),
    ]
    assert main(args) == 0
    study = load(tmp_path)
    assert study_setting(study.user_attrs, "latency_ms") == 20.0
    assert study_setting(study.user_attrs, "percentile") == 99.0
    trials = study.get_trials()
    assert len(trials) == 2
    valid = [t for t in trials if t.user_attrs["valid"] is True]
    # A few ms per batch under a 20 ms bound: a search that finds no VALID QPS is a failure,
    # not a case to skip.
    assert valid, [t.user_attrs.get("note") for t in trials]
    for trial in trials:
        assert trial.state == TrialState.COMPLETE
        runs = trial.user_attrs["loadgen_runs"]
        assert runs[0]["scenario"] == "Offline"  # the upper bound
        assert any(r["scenario"] == "Server" for r in runs)
    for trial in valid:
        server_runs = [r for r in trial.user_attrs["loadgen_runs"] if r["scenario"] == "Server"]
        # The largest target below every INVALID one, VALID each time it ran (twice once the
        # search converged); the score is its lowest scheduled QPS.
        check_answer(server_runs, trial.value, confirmed=not trial.user_attrs["note"])
        assert trial.user_attrs["p99_ms"] <= 20.0


def test_onnxruntime_on_a_tiny_model_measures_int8_agreement(
    tmp_path: Path, cache_dir: Path, mlp_model: Path
) -> None:
    args = [
        "optimize",
        "--model",
        str(mlp_model),
        "--backend",
        "onnxruntime",
        "--batch-sizes",
        "1,8",
        "--streams",
        "1",
        "--precisions",
        "fp32,int8",
        "--sampler",
        "grid",
        "--trials",
        "4",
        "--prune",  # every point measured: both int8 trials report their agreement
        "off",
        *common(tmp_path, cache_dir),
    ]
    assert main(args) == 0
    study = load(tmp_path)
    assert study_setting(study.user_attrs, "backend") == "onnxruntime"
    assert not study.user_attrs["simulated"]
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    int8 = [t for t in trials if t.params["precision"] == "int8"]
    assert len(int8) == 2
    # One variant, its agreement measured once: the same on both int8 trials, a count of
    # agreeing samples, above the study's floor (so the accuracy constraint holds).
    ((top1, samples),) = {
        (t.user_attrs["agreement_top1"], t.user_attrs["agreement_samples"]) for t in int8
    }
    floor = study_setting(study.user_attrs, "accuracy_floor")
    assert floor == 0.8 and floor <= top1 <= 1.0 and samples > 0
    assert (top1 * samples).is_integer()
    assert all(t.constraints["accuracy"] <= 0 for t in int8)
    assert not [t for t in trials if t not in int8 and "agreement_top1" in t.user_attrs]
    assert all("onnxruntime" in t.user_attrs["versions"] for t in trials)

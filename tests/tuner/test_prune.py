"""Pruned trials: a Server study that prunes opens with its likeliest winners, stops the
configurations whose bound cannot reach the best at that bound, stores them as Optuna's PRUNED
(the bound their value), counts them against the budget and never declares one best. Real
LoadGen, real SQLite, the null backend (int8 8x faster than fp32), trials in a warm worker."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.tuner.cli_checks import run
from tuner.cli import main
from tuner.config import Space, StudyConfig
from tuner.replay import LandscapeReplay
from tuner.results import best_trial
from tuner.space import resolve_space
from tuner.study import opening_points, prepare, prune_below

SERVER = [
    "optimize",
    "--model",
    "tiny",
    "--backend",
    "null",
    "--scenario",
    "server",
    "--latency-ms",
    "20",
    "--min-queries",
    "600",
    "--batch-sizes",
    "1,2",
    "--streams",
    "1",
    "--precisions",
    "fp32,int8",
    "--deque-timeouts-us",
    "2000",
    "--backend-option",
    "latency_ms=2",
    "--backend-option",
    "per_sample_ms=0.5",
    "--backend-option",
    'speedup={"int8": 8}',
    "--answer-runs",
    "1",
    "--qps-tolerance",
    "0.05",
    "--duration-s",
    "0.3",
    "--confirm-runs",
    "0",
    "--trials",
    "4",
]


def args(tmp_path: Path, cache_dir: Path, *more: str) -> list[str]:
    db = tmp_path / "study.db"
    return [
        *SERVER,
        "--storage",
        f"sqlite:///{db}",
        "--study",
        "s",
        "--cache-dir",
        str(cache_dir),
        "--runs-dir",
        str(tmp_path / "runs"),
        *more,
    ]


def load(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")


def test_a_server_study_prunes_the_configurations_that_cannot_reach_its_best(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args(tmp_path, cache_dir)) == 0
    out, progress = capsys.readouterr()
    study = load(tmp_path)
    trials = study.get_trials()
    assert len(trials) == 4  # a pruned trial counts against the budget
    # It opens with the likeliest winner (int8 at the smallest batch above 1), then the other
    # precision's, then the baseline.
    assert [t.params for t in trials[:3]] == [
        {"batch_size": 2, "streams": 1, "precision": "int8", "deque_timeout_us": 2000},
        {"batch_size": 2, "streams": 1, "precision": "fp32", "deque_timeout_us": 2000},
        {"batch_size": 1, "streams": 1, "precision": "fp32", "deque_timeout_us": 2000},
    ]
    assert trials[0].state == TrialState.COMPLETE and trials[0].value > 0
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    # fp32 runs an eighth as fast: its bounds cannot reach what int8 answered.
    assert [t.number for t in pruned][:2] == [1, 2]
    for trial in pruned:
        why = trial.user_attrs["pruned"]
        assert why["bound"] in ("Offline throughput", "queueing model") and why["best"] > 0
        assert why["value"] * (1 + why["margin"]) < why["best"]
        assert trial.intermediate_values == {0: pytest.approx(why["value"])}
        assert trial.value == pytest.approx(why["value"])  # Optuna's: the last reported
        runs = trial.user_attrs["loadgen_runs"]
        assert runs and all(r["scenario"] == "Offline" for r in runs)  # no Server run
        assert trial.user_attrs["note"].startswith(f"pruned: its {why['bound']}")
        assert f"trial {trial.number}: pruned: its {why['bound']}" in progress
    best = best_trial(study)
    assert best is not None and best.state == TrialState.COMPLETE
    assert f"{len(pruned)} pruned" in out
    assert "pruned: trials 1, 2" in out
    # The baseline was pruned: its Offline throughput bounds its Server QPS, so the speed-up
    # is at least the best over it.
    (offline,) = [r for r in trials[2].user_attrs["loadgen_runs"] if r["scenario"] == "Offline"]
    floor = best.value / offline["samples_per_second"]
    assert f"speed-up over the baseline: at least {floor:.2f}x" in out

    # The report and the studies listing say so too.
    report = tmp_path / "report.json"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert run(["report", "--storage", storage, "--study", "s", "--json", str(report)]) == 0
    assert f"{len(pruned)} pruned" in capsys.readouterr().out
    doc = json.loads(report.read_text())
    assert doc["trials"]["pruned"] == len(pruned)
    assert doc["speed_up"] is None and doc["speed_up_at_least"] == pytest.approx(floor)
    assert run(["studies", "--storage", storage]) == 0
    header, _, row = capsys.readouterr().out.splitlines()[:3]
    at = header.index("pruned")  # the columns are aligned
    assert row[at : at + len("pruned")].strip() == str(len(pruned))
    at = header.index("speed-up")
    assert row[at:].split()[:2] == [">=", f"{floor:.2f}x"]


def test_with_pruning_off_every_trial_is_measured_in_full_from_the_baseline(
    tmp_path: Path, cache_dir: Path
) -> None:
    assert main(args(tmp_path, cache_dir, "--prune", "off", "--trials", "3")) == 0
    trials = load(tmp_path).get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].params["batch_size"] == 1 and trials[0].params["precision"] == "fp32"
    assert all("pruned" not in t.user_attrs for t in trials)
    assert all(
        any(r["scenario"] == "Server" for r in t.user_attrs["loadgen_runs"]) for t in trials
    )


def test_a_bad_prune_value_is_one_line(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(args(tmp_path, cache_dir, "--prune", "maybe")) == 2
    err = capsys.readouterr().err
    assert "--prune" in err and "expected on or off, got 'maybe'" in err
    assert not (tmp_path / "study.db").exists()


def cfg(**kw: object) -> StudyConfig:
    space = Space(batch_sizes=(1, 2, 4), streams=(1, 2), precisions=("fp32", "int8"))
    base: dict[str, object] = {
        "model": "tiny",
        "backend": "null",
        "scenario": "server",
        "space": space,
        "trials": 12,
    }
    return StudyConfig(**{**base, **kw})  # type: ignore[arg-type]


def point(batch: int, streams: int, precision: str) -> dict[str, object]:
    return {"batch_size": batch, "streams": streams, "precision": precision}


def test_a_server_study_that_prunes_opens_with_its_likeliest_winners() -> None:
    c = cfg()
    space = resolve_space(c)
    deque = space.baseline()["deque_timeout_us"]
    openers = [point(2, 2, "int8"), point(2, 2, "fp32"), point(1, 1, "fp32")]
    assert opening_points(c, space) == [{**p, "deque_timeout_us": deque} for p in openers]
    # The budget keeps the baseline, the speed-up's denominator.
    assert opening_points(cfg(trials=2), space) == [
        {**point(2, 2, "int8"), "deque_timeout_us": deque},
        {**point(1, 1, "fp32"), "deque_timeout_us": deque},
    ]
    assert opening_points(cfg(trials=1), space) == [space.baseline()]
    # The user's own points lead.
    mine = cfg(enqueue=({"batch_size": 4, "streams": 1, "precision": "int8"},))
    assert opening_points(mine, space)[0] == {**point(4, 1, "int8"), "deque_timeout_us": deque}


@pytest.mark.parametrize(
    "kw", [{"prune": False}, {"scenario": "offline"}, {"objectives": ("throughput", "p99")}]
)
def test_other_studies_open_with_the_baseline(kw: dict[str, object]) -> None:
    c = cfg(**kw)
    assert opening_points(c, resolve_space(c)) == [resolve_space(c).baseline()]


def test_every_worker_prunes_against_the_best_any_worker_stored(
    tmp_path: Path, cache_dir: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    c = cfg(storage=storage, name="shared", cache_dir=cache_dir, runs_dir=tmp_path / "runs")
    mine = prepare(c).study
    assert prune_below(mine, c) is None  # nothing measured yet
    # Another worker (its own connection to the same database) stores a feasible trial.
    theirs = optuna.load_study(study_name="shared", storage=storage)
    theirs.tell(theirs.ask(), 250.0)
    assert prune_below(mine, c) == 250.0
    assert prune_below(mine, cfg(storage=storage, name="shared", prune=False)) is None


def server_landscape(path: Path) -> Path:
    """Two recorded Server configurations: int8 answers 300 QPS (Offline 400), fp32 answers
    60 (Offline 100)."""

    def repeat(answer: float, offline: float) -> dict[str, object]:
        return {
            "score": answer,
            "valid": True,
            "p50_ms": 5.0,
            "p99_ms": 20.0,
            "warmup_batch_ms": 5.0,
            "warmup_samples_per_second": offline,
            "engine_build_s": 1.0,
            "seconds": 30.0,
            "loadgen_runs": [
                {"scenario": "Offline", "valid": True, "samples_per_second": offline},
                {"scenario": "Server", "valid": True, "target_qps": answer * 0.9},
                {"scenario": "Server", "valid": True, "target_qps": answer},
            ],
        }

    points = [
        {"params": point(1, 1, "int8"), "repeats": [repeat(300.0, 400.0)]},
        {"params": point(1, 1, "fp32"), "repeats": [repeat(60.0, 100.0)]},
    ]
    data = {
        "format": 1,
        "model": "tiny",
        "scenario": "server",
        "duration_s": 2.0,
        "min_queries": 600,
        "space": {"batch_size": [1], "streams": [1], "precision": ["fp32", "int8"]},
        "points": points,
    }
    path.write_text(json.dumps(data))
    return path


def test_a_replayed_trial_is_pruned_as_the_harness_would_prune_it(tmp_path: Path) -> None:
    from harness.config import RunConfig, ScenarioSpec

    replay = LandscapeReplay(server_landscape(tmp_path / "l.json"))
    run_cfg = RunConfig(model="tiny", backend="replay", precision="fp32")
    spec = ScenarioSpec(scenario="server", find_max_qps=True)
    full = replay(run_cfg, spec, 60.0)
    assert full.result is not None and full.result["score"] == 60.0 and full.seconds == 30.0
    # In full: an Offline run (2 s) and Server runs of 600 queries at 54 and 60 QPS.
    assert replay.loadgen_s == pytest.approx(2.0 + 600 / 54 + 600 / 60)

    before = replay.loadgen_s
    pruned = replay(
        run_cfg, ScenarioSpec(scenario="server", find_max_qps=True, prune_below=300.0), 60.0
    )
    assert pruned.result is not None and pruned.result["pruned"]["bound"] == "Offline throughput"
    assert pruned.result["score"] == 0.0 and not pruned.result["valid"]
    assert replay.loadgen_s - before == pytest.approx(2.0)  # the Offline run only
    assert pruned.seconds == pytest.approx(30.0 - 600 / 54 - 600 / 60)
    assert replay.pruned == 1


def test_an_offline_trial_far_under_the_best_stops_after_its_warm_up(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study_file = tmp_path / "study.toml"
    study_file.write_text(
        """
[study]
trials = 3
confirm_runs = 0

[model]
name = "tiny"

[backend]
name = "null"
options = {latency_ms = 2, per_sample_ms = 0.5, speedup = {int8 = 8}}

[scenario]
duration_s = 0.3

[space]
batch_sizes = [1, 2]
streams = [1]
precisions = ["fp32", "int8"]

[[enqueue]]
batch_size = 2
precision = "int8"

[[enqueue]]
batch_size = 2
precision = "fp32"
"""
    )
    argv = ["optimize", "--config", str(study_file), *args(tmp_path, cache_dir)[len(SERVER) :]]
    assert main(argv) == 0
    trials = load(tmp_path).get_trials()
    # The baseline first (an Offline study's order), then the user's points in theirs.
    assert [t.params["precision"] for t in trials] == ["fp32", "int8", "fp32"]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED]
    why = trials[2].user_attrs["pruned"]
    assert why["bound"] == "warm-up estimate" and why["margin"] == 1.0
    assert why["best"] == pytest.approx(trials[1].value)
    assert trials[2].user_attrs["loadgen_runs"] == []  # stopped before its Offline run
    assert "1 pruned" in capsys.readouterr().out

"""Replayed trials (tuner.replay) and the no-repeat sampler (tuner.sampling), through the real
study code on SQLite: the pieces `benchmarks/tuner_efficiency.py` stands on."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.config import RunConfig, ScenarioSpec
from harness.errors import ConfigError
from tuner.config import Space, StudyConfig
from tuner.pipeline import optimize
from tuner.replay import LandscapeReplay
from tuner.results import CONFIRMED_BEST, best_trial, confirmed_value

BATCHES, STREAMS, PRECISIONS = (1, 2, 4), (1, 2), ("fp32", "int8")


def landscape(
    path: Path,
    value: Any = None,
    failed: tuple[int, int, str] | None = None,
    repeats: int = 3,
    session: Any = None,
) -> Path:
    """A recorded Offline landscape: configuration (b, s, p) scored value(b, s, p, repeat);
    `session(repeat)` tags each repeat with its recording session (untagged: None)."""
    value = value or (lambda b, s, p, r: 10.0 * b + s + (5.0 if p == "int8" else 0.0) + r)
    points = []
    for p in PRECISIONS:
        for b in BATCHES:
            for s in STREAMS:
                recorded: list[dict[str, Any]] = [
                    {
                        "score": value(b, s, p, r),
                        "valid": True,
                        "p50_ms": 10.0,
                        "p99_ms": 20.0,
                        "warmup_batch_ms": 5.0 * b,
                        "agreement_top1": 0.9 if p == "int8" else None,
                        "engine_build_s": 1.5,
                        "seconds": 3.0,
                    }
                    | ({} if session is None else {"session": session(r)})
                    for r in range(repeats)
                ]
                if failed == (b, s, p):
                    recorded = [{"failure": "out of memory", "reason": "oom", "seconds": 1.0}]
                params = {"batch_size": b, "streams": s, "precision": p}
                points.append({"params": params, "repeats": recorded})
    data = {
        "format": 1,
        "model": "tiny",
        "scenario": "offline",
        "backend": "onnxruntime",
        "device": "Test CPU (2 cores)",
        "space": {
            "batch_size": list(BATCHES),
            "streams": list(STREAMS),
            "precision": ["fp32", "int8"],
        },
        "points": points,
        "versions": {"onnxruntime": "0"},
    }
    path.write_text(json.dumps(data))
    return path


def run_of(b: int, s: int, p: str) -> RunConfig:
    return RunConfig(model="tiny", backend="replay", precision=p, batch_size=b, streams=s)


SPEC = ScenarioSpec(scenario="offline")


def test_truth_is_the_median_of_the_recorded_repeats_and_draws_are_recorded_ones(
    tmp_path: Path,
) -> None:
    replay = LandscapeReplay(landscape(tmp_path / "l.json"), seed=3)
    assert replay.truth({"batch_size": 2, "streams": 1, "precision": "fp32"}) == 22.0
    key, best = replay.best()
    assert key == ("int8", 4, 2, None) and best == 40 + 2 + 5 + 1
    # Below the accuracy floor, int8 scores nothing: the best is fp32 then.
    assert replay.best(accuracy_floor=0.95) == (("fp32", 4, 2, None), 43.0)
    scores = [replay(run_of(4, 2, "int8"), SPEC, 60.0).result["score"] for _ in range(60)]  # type: ignore[index]
    assert set(scores) == {47.0, 48.0, 49.0}  # every draw is a recorded repeat, all of them seen
    assert replay.calls == 60


def test_a_study_draws_from_one_recording_session_unless_told_otherwise(tmp_path: Path) -> None:
    # Repeats 0-2 recorded in session 0, 3-5 in session 1 (+100: a drift between them).
    path = landscape(
        tmp_path / "l.json",
        value=lambda b, s, p, r: 10.0 * b + s + r + (100.0 if r >= 3 else 0.0),
        repeats=6,
        session=lambda r: 0 if r < 3 else 1,
    )
    seen_sessions = set()
    for seed in range(8):
        replay = LandscapeReplay(path, seed=seed)
        assert replay.session in (0, 1)
        seen_sessions.add(replay.session)
        scores = {replay(run_of(2, 1, "fp32"), SPEC, 60.0).result["score"] for _ in range(40)}  # type: ignore[index]
        wanted = {21.0, 22.0, 23.0} if replay.session == 0 else {124.0, 125.0, 126.0}
        assert scores == wanted  # only that session's repeats, all of them
        # The truth stays the median of every repeat, whatever the session.
        assert replay.truth({"batch_size": 2, "streams": 1, "precision": "fp32"}) == 73.5
    assert seen_sessions == {0, 1}  # the seed picks the session
    everything = LandscapeReplay(path, seed=0, noise="all")
    assert everything.session is None
    scores = {everything(run_of(2, 1, "fp32"), SPEC, 60.0).result["score"] for _ in range(200)}  # type: ignore[index]
    assert scores == {21.0, 22.0, 23.0, 124.0, 125.0, 126.0}
    with pytest.raises(ConfigError, match="noise"):
        LandscapeReplay(path, noise="some")


def test_a_configuration_without_repeats_in_the_session_draws_from_all_it_has(
    tmp_path: Path,
) -> None:
    path = landscape(tmp_path / "l.json", repeats=3, session=lambda r: 0)
    data = json.loads(path.read_text())
    data["points"][0]["repeats"].append(dict(data["points"][0]["repeats"][0], session=1))
    path.write_text(json.dumps(data))
    replay = next(r for seed in range(20) if (r := LandscapeReplay(path, seed=seed)).session == 1)
    first = data["points"][0]["params"]
    run = run_of(first["batch_size"], first["streams"], first["precision"])
    assert {replay(run, SPEC, 60.0).result["score"] for _ in range(20)} == {  # type: ignore[index]
        data["points"][0]["repeats"][0]["score"]
    }
    other = run_of(4, 2, "int8")  # recorded in session 0 only: all of its repeats
    assert {replay(other, SPEC, 60.0).result["score"] for _ in range(60)} == {47.0, 48.0, 49.0}  # type: ignore[index]


def test_a_replayed_result_says_so_and_knows_its_engines(tmp_path: Path) -> None:
    replay = LandscapeReplay(landscape(tmp_path / "l.json"))
    first = replay(run_of(2, 1, "int8"), SPEC, 60.0).result
    again = replay(run_of(2, 2, "int8"), SPEC, 60.0).result  # same engine: precision, batch
    other = replay(run_of(4, 1, "int8"), SPEC, 60.0).result
    assert first is not None and again is not None and other is not None
    assert first["simulated"] is True and first["backend"] == "replay"
    assert first["device"] == "Test CPU (2 cores) (replayed)"
    assert "replayed from l.json" in first["note"]
    assert (first["engine_cached"], again["engine_cached"], other["engine_cached"]) == (
        False,
        True,
        False,
    )
    assert first["engine_build_s"] == 1.5 and again["engine_build_s"] == 0.0
    assert first["agreement"] == {"top1": 0.9} and first["samples_per_second"] == first["score"]


def test_a_recorded_failure_replays_as_one_and_an_unknown_point_is_an_error(
    tmp_path: Path,
) -> None:
    replay = LandscapeReplay(landscape(tmp_path / "l.json", failed=(4, 2, "fp32")))
    outcome = replay(run_of(4, 2, "fp32"), SPEC, 60.0)
    assert outcome.result is None and outcome.failure == "out of memory"
    assert replay.truth({"batch_size": 4, "streams": 2, "precision": "fp32"}) == 0.0
    outcome = replay(run_of(8, 1, "fp32"), SPEC, 60.0)
    assert outcome.result is None and outcome.failure == "error"
    assert "not in landscape l.json" in outcome.reason


def study_config(tmp_path: Path, path: Path, sampler: str, trials: int, **kw: Any) -> StudyConfig:
    return StudyConfig(
        name=f"replay-{sampler}-{trials}",
        storage=f"sqlite:///{tmp_path / 'r.db'}",
        trials=trials,
        sampler=sampler,
        model="tiny",
        backend="replay",
        backend_options={"landscape": str(path)},
        space=Space(batch_sizes=BATCHES, streams=STREAMS, precisions=PRECISIONS),
        cache_dir=kw.pop("cache_dir"),
        runs_dir=tmp_path / "runs",
        **kw,
    )


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_samplers_never_repeat_a_configuration_until_the_space_is_spent(
    tmp_path: Path, cache_dir: Path, sampler: str
) -> None:
    path = landscape(tmp_path / "l.json")
    size = len(BATCHES) * len(STREAMS) * len(PRECISIONS)
    cfg = study_config(tmp_path, path, sampler, size, cache_dir=cache_dir, confirm_runs=0)
    replay = LandscapeReplay(path, seed=1)
    study = optimize(cfg, lambda line: None, measure=replay).study
    seen = Counter(json.dumps(t.params, sort_keys=True) for t in study.get_trials())
    assert len(seen) == size and set(seen.values()) == {1}  # every configuration, once
    assert replay.calls == size
    assert not any("duplicate_of" in t.user_attrs for t in study.get_trials())

    # Past the space's size, repeats come back and are answered from the earlier trial.
    cfg = study_config(tmp_path, path, sampler, size + 3, cache_dir=cache_dir, confirm_runs=0)
    replay = LandscapeReplay(path, seed=1)
    study = optimize(cfg, lambda line: None, measure=replay).study
    copies = [t for t in study.get_trials() if "duplicate_of" in t.user_attrs]
    assert len(copies) == 3 and replay.calls == size


def test_a_precision_under_the_accuracy_floor_is_measured_once(
    tmp_path: Path, cache_dir: Path
) -> None:
    """The landscape's int8 agrees 0.9 with fp32; under a 0.95 floor the first int8 trial
    shows it, and every other int8 configuration of the grid (enqueued) is stored as
    infeasible as that trial without being measured."""
    path = landscape(tmp_path / "l.json")
    size = len(BATCHES) * len(STREAMS) * len(PRECISIONS)
    cfg = study_config(
        tmp_path, path, "grid", size, cache_dir=cache_dir, confirm_runs=0, accuracy_floor=0.95
    )
    replay = LandscapeReplay(path, seed=1)
    study = optimize(cfg, lambda line: None, measure=replay).study
    int8 = sorted(
        (t for t in study.get_trials() if t.params["precision"] == "int8"),
        key=lambda t: t.number,
    )
    first, others = int8[0], int8[1:]
    assert replay.calls == size - len(others)  # fp32's points and one int8
    assert first.user_attrs["agreement_top1"] == 0.9 and "infeasible_as" not in first.user_attrs
    assert len(others) == len(BATCHES) * len(STREAMS) - 1
    for trial in others:
        assert trial.value == 0.0 and trial.user_attrs["infeasible_as"] == first.number
        assert trial.user_attrs["fail_reason"] == "under the accuracy floor (top1 0.9000 < 0.95)"
    assert best_trial(study).params["precision"] == "fp32"


def test_a_replayed_study_confirms_and_declares_the_true_best(
    tmp_path: Path, cache_dir: Path
) -> None:
    """A configuration with one lucky repeat (100 among 30s) wins its trial but loses the
    confirmation: the study declares the configuration whose median is truly best."""
    lucky = {"batch_size": 4, "streams": 2, "precision": "fp32"}

    def value(b: int, s: int, p: str, r: int) -> float:
        if (b, s, p) == (4, 2, "fp32"):
            return 100.0 if r == 0 else 30.0
        return 10.0 * b + s if p == "fp32" else 1.0

    path = landscape(tmp_path / "l.json", value=value, repeats=9)
    size = len(BATCHES) * len(STREAMS) * len(PRECISIONS)
    for seed in range(20):  # deterministic: the first seed whose lucky trial drew 100
        cfg = study_config(tmp_path, path, "grid", size, cache_dir=cache_dir, confirm_runs=2)
        cfg = replace(cfg, name=f"lucky-{seed}", seed=seed)
        replay = LandscapeReplay(path, seed=seed)
        study = optimize(cfg, lambda line: None, measure=replay).study
        (trial,) = [t for t in study.get_trials() if t.params == lucky]
        if trial.value == 100.0:
            break
    else:
        pytest.fail("no seed drew the lucky repeat first")
    assert replay.truth(lucky) == 30.0
    scores = study.user_attrs[f"confirm:{trial.number}"]
    assert scores[0] == 100.0
    assert confirmed_value(trial, study.user_attrs) == statistics.median(scores)
    winner = best_trial(study)
    assert winner is not None and study.user_attrs[CONFIRMED_BEST] == winner.number
    assert winner.params == {"batch_size": 4, "streams": 1, "precision": "fp32"}
    assert replay.truth(winner.params) == 41.0 == replay.best()[1]

"""One measure pipeline (harness.runner.measure_devices) behind `measure` and `measure_system`:
a device is a system of one, and a system's Server search starts from the queueing model's
guess and refits it, as a single device's does. Null backend, real LoadGen."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from harness import runner
from harness.config import RunConfig, ScenarioSpec
from harness.queueing import SutModel
from harness.result import Result
from harness.scenarios import measure, server
from harness.system import SystemResult, measure_system


def null_run(cache_dir: Path, **kw: Any) -> RunConfig:
    options = {"latency_ms": 1.0, "per_sample_ms": 0.25, **kw.pop("backend_options", {})}
    return RunConfig(
        model="tiny", backend="null", cache_dir=cache_dir, backend_options=options, **kw
    )


def test_a_system_of_one_measures_what_measure_measures(tmp_path: Path, cache_dir: Path) -> None:
    run = null_run(cache_dir, batch_size=4, streams=2)
    single = runner.measure(run, ScenarioSpec(duration_s=0.3, out_dir=tmp_path / "one"))
    system = measure_system(run, ScenarioSpec(duration_s=0.3, out_dir=tmp_path / "sys"), ["cpu"])

    assert isinstance(single, Result) and isinstance(system, SystemResult)
    one, many = single.to_dict(), system.to_dict()
    assert set(one) == {f.name for f in fields(Result)}  # the JSON the tuner stores
    assert set(many) == {f.name for f in fields(SystemResult)}
    json.dumps(one), json.dumps(many)
    for key in sorted(set(one) & set(many) - {"score", "samples_per_second", "seconds"}):
        if key in ("latency_ms", "loadgen_runs", "gpu", "versions"):
            continue  # measured figures; compared by shape below
        assert one[key] == many[key], key
    assert single.valid and system.valid and single.simulated and system.simulated
    assert single.scenario == system.scenario == "offline"
    assert [r["scenario"] for r in one["loadgen_runs"]] == ["Offline"] * len(one["loadgen_runs"])
    assert [r["scenario"] for r in many["loadgen_runs"]] == ["Offline"] * len(many["loadgen_runs"])
    assert set(one["loadgen_runs"][0]) == set(many["loadgen_runs"][0])
    assert set(single.latency_ms) == set(system.latency_ms)
    # The one device took every sample LoadGen issued, in batches of at most 4.
    (device,) = system.devices
    issued = sum(r["sample_count"] for r in many["loadgen_runs"])
    assert device["device"] == "cpu" and device["samples"] == issued and device["share"] == 1.0
    assert device["name"] == single.device
    assert issued / 4 <= device["batches"] <= issued
    assert device["score_share"] == pytest.approx(system.score)  # score x samples / samples
    # What only a single-device Result carries is still there.
    assert single.warmup["batch_ms"] is not None and single.warmup["batch_ms"] > 0
    assert single.inputs["tensors"]
    # A fresh load (nothing kept from before), its time recorded (how long: a benchmark's).
    assert not single.backend_reused and isinstance(single.engine_build_s, float)


class Spy:
    """Records the queueing model's guesses and refits while calling the real functions."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.models: list[SutModel] = []
        self.guesses: list[float] = []
        self.refits: list[float] = []
        predict, calibrate = measure.predict_max_qps, measure.calibrate

        def spy_predict(model: SutModel, *args: Any, **kwargs: Any) -> float:
            self.models.append(model)
            self.guesses.append(predict(model, *args, **kwargs))
            return self.guesses[-1]

        def spy_calibrate(model: SutModel, qps: float, *args: Any, **kwargs: Any) -> float:
            self.refits.append(qps)
            return calibrate(model, qps, *args, **kwargs)

        monkeypatch.setattr(measure, "predict_max_qps", spy_predict)
        monkeypatch.setattr(measure, "calibrate", spy_calibrate)


#: LoadGen logs a run's target QPS to two decimals.
QPS_LOGGED = 0.01


def first_probe(spec: ScenarioSpec, guess: float, upper: float) -> float:
    """Where the search puts a first guess: not under the lowest load, a tolerance under the
    bound at most (server._Bracket)."""
    return min(max(guess, server.lowest_qps(spec, upper)), upper / (1 + spec.qps_tolerance))


def test_the_system_server_search_starts_at_the_models_guess_and_refits_it(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two simulated devices, B=1, one stream each, 1 ms a batch: the system serves about
    2000 QPS. The queueing model of the system (two servers, every device's warm-up batches)
    guesses the first Server probe; the first run refits it."""
    spy = Spy(monkeypatch)
    run = null_run(
        cache_dir,
        deque_timeout_us=0,
        samples=64,
        backend_options={"latency_ms": 1.0, "per_sample_ms": 0.0},
    )
    spec = ScenarioSpec(
        scenario="server",
        find_max_qps=True,
        duration_s=0.1,
        latency_ms=10.0,
        percentile=90.0,
        min_queries=600,
        qps_tolerance=0.05,
        out_dir=tmp_path,
    )
    result = measure_system(run, spec, ["cuda:0", "cuda:1"])

    offline, *probes = result.loadgen_runs
    assert offline["scenario"] == "Offline" and probes
    assert all(p["scenario"] == "Server" for p in probes)
    assert spy.models and all(m.streams == 2 for m in spy.models)  # streams x devices
    assert spy.guesses and spy.guesses[0] > 0
    upper = offline["samples_per_second"]
    first = first_probe(spec, spy.guesses[0], upper)
    assert probes[0]["target_qps"] == pytest.approx(first, abs=QPS_LOGGED)
    assert probes[0]["target_qps"] != pytest.approx(server.FIRST_PROBE * upper, abs=QPS_LOGGED)
    # Unless the first run is the answer (the late-count search: its late count in the band),
    # the model is refitted to it for the next probe.
    if len(probes) > 1:
        assert spy.refits[0] == pytest.approx(probes[0]["target_qps"], abs=QPS_LOGGED)
    assert result.valid == (result.score > 0)
    assert sum(d["samples"] for d in result.devices) == sum(
        r["sample_count"] for r in [offline, *probes]
    )


def test_a_single_device_is_a_system_of_one_in_the_model_too(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    run = null_run(cache_dir, deque_timeout_us=0, samples=64, streams=2)
    spec = ScenarioSpec(
        scenario="server",
        find_max_qps=True,
        duration_s=0.1,
        latency_ms=10.0,
        percentile=90.0,
        min_queries=300,
        qps_tolerance=0.1,
        max_search_runs=2,
        out_dir=tmp_path,
    )
    offline, probe, *_ = runner.measure(run, spec).loadgen_runs
    assert spy.models and all(m.streams == 2 for m in spy.models)  # streams x 1 device
    upper = offline["samples_per_second"]
    assert probe["target_qps"] == pytest.approx(
        first_probe(spec, spy.guesses[0], upper), abs=QPS_LOGGED
    )


def test_system_warmup_pools_the_devices() -> None:
    a = runner.Warmup(2.0, 500.0, (0.002, 0.0021), single_ms=1.0)
    b = runner.Warmup(4.0, 250.0, (0.004,), single_ms=3.0)
    assert runner.system_warmup([a]) is a
    both = runner.system_warmup([a, b])
    assert both == runner.Warmup(4.0, 750.0, (0.002, 0.0021, 0.004), single_ms=3.0)


def test_an_infeasible_batch_on_a_system_runs_no_loadgen(tmp_path: Path, cache_dir: Path) -> None:
    run = null_run(cache_dir, batch_size=4, backend_options={"latency_ms": 30.0})
    spec = ScenarioSpec(scenario="server", find_max_qps=True, latency_ms=10.0, out_dir=tmp_path)
    result = measure_system(run, spec, ["cuda:0", "cuda:1"])
    assert not result.valid and result.score == 0.0 and result.loadgen_runs == []
    assert result.note.startswith("infeasible: one batch of 4 takes ")
    assert all(d["samples"] == 0 for d in result.devices)

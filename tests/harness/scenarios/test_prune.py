"""Pruning in the measure pipeline: a bound under the score to beat (after its margin) stops the
measurement where the bound is known, with real LoadGen runs on the null backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness import runner
from harness.backends import BackendOptions
from harness.backends.null import NullBackend
from harness.config import RunConfig, ScenarioSpec
from harness.dataset import SampleSet
from harness.scenarios import Outcome, measure, prune
from harness.scenarios.measure import Context, Warmup
from harness.scenarios.prune import Pruned
from harness.sut import BatchingSUT

SAMPLES = SampleSet({"input": np.zeros((64, 4), np.float32)})


def test_without_a_best_nothing_is_pruned() -> None:
    assert prune.check("Offline throughput", 10.0, None) is None
    assert prune.check("Offline throughput", 10.0, 0.0) is None


@pytest.mark.parametrize("bound", list(prune.MARGINS))
def test_a_bound_prunes_only_where_its_margin_cannot_reach_the_best(bound: str) -> None:
    margin = prune.MARGINS[bound]
    reach = 100.0 * (1 + margin)
    assert prune.check(bound, 100.0, reach) is None  # the bound with its margin reaches it
    found = prune.check(bound, 100.0, reach * 1.001)
    assert found == Pruned(bound, 100.0, margin, reach * 1.001)
    assert found.reason.startswith(f"pruned: its {bound}, 100.0 (+{margin:.0%} margin: ")
    assert found.reason.endswith(f"cannot reach the study's best, {reach * 1.001:,.1f}")
    assert found.to_dict() == {
        "bound": bound,
        "value": 100.0,
        "margin": margin,
        "best": round(reach * 1.001, 4),
    }


def test_a_warm_up_estimate_prunes_only_far_under_the_best() -> None:
    # An estimate is a bound only doubled: an Offline run read up to 1.95x its warm-up.
    assert prune.check("warm-up estimate", 100.0, 199.0) is None
    assert prune.check("warm-up estimate", 100.0, 201.0) is not None


def null_run(cache_dir: Path, **kw: object) -> RunConfig:
    return RunConfig(
        model="tiny",
        backend="null",
        cache_dir=cache_dir,
        backend_options={"latency_ms": 1.0, "per_sample_ms": 0.0},
        **kw,  # type: ignore[arg-type]
    )


def test_an_offline_measurement_far_under_the_best_stops_after_its_warm_up(
    tmp_path: Path, cache_dir: Path
) -> None:
    spec = ScenarioSpec(duration_s=0.3, out_dir=tmp_path, prune_below=1e9)
    result = runner.measure(null_run(cache_dir), spec)
    assert result.pruned is not None and result.pruned["bound"] == "warm-up estimate"
    assert result.pruned["value"] == pytest.approx(result.warmup["samples_per_second"], rel=1e-3)
    assert result.loadgen_runs == []  # no LoadGen run was made
    assert not result.valid and result.score == 0.0
    assert result.note.startswith("pruned: its warm-up estimate")


def test_an_offline_measurement_that_may_reach_the_best_runs_in_full(
    tmp_path: Path, cache_dir: Path
) -> None:
    spec = ScenarioSpec(duration_s=0.3, out_dir=tmp_path, prune_below=1.0)
    result = runner.measure(null_run(cache_dir), spec)
    assert result.pruned is None and result.valid and result.score > 1.0
    assert [r["scenario"] for r in result.loadgen_runs][:1] == ["Offline"]


def server_spec(tmp_path: Path, best: float) -> ScenarioSpec:
    return ScenarioSpec(
        scenario="server",
        find_max_qps=True,
        duration_s=0.2,
        latency_ms=20.0,
        percentile=90.0,
        min_queries=100,
        out_dir=tmp_path,
        prune_below=best,
    )


def null_backend() -> NullBackend:
    backend = NullBackend(
        Path("unused.onnx"), BackendOptions(extra={"latency_ms": 1.0, "per_sample_ms": 0.0})
    )
    backend.load()
    return backend


def server_search(tmp_path: Path, batch_s: float, best: float) -> Outcome:
    """The Server scenario on the null backend (1 ms per batch of 1: under 1,000 samples/s),
    real LoadGen, with `best` to beat and a warm-up whose batches took `batch_s` each (what
    the queueing model is fed)."""
    warmup = Warmup(batch_ms=1.0, samples_per_second=900.0, batch_latencies_s=(batch_s,) * 20)
    run = RunConfig(model="tiny", backend="null", deque_timeout_us=0)
    with BatchingSUT(null_backend(), SAMPLES, 1, 1, 0) as sut:
        ctx = Context(run, server_spec(tmp_path, best), sut, warmup, tmp_path)
        return measure.SCENARIOS["server"](ctx)


def test_a_server_search_whose_offline_throughput_cannot_reach_the_best_runs_no_server_run(
    tmp_path: Path,
) -> None:
    # 1.5x under 1,000 samples/s misses 100,000. A Server search does not prune on the
    # warm-up's estimate (it bounds nothing for sure): its Offline run comes first.
    outcome = server_search(tmp_path, 0.001, 1e5)
    assert outcome.pruned is not None and outcome.pruned.bound == "Offline throughput"
    assert outcome.runs and {r.scenario for r in outcome.runs} == {"Offline"}
    assert outcome.pruned.value == outcome.runs[-1].samples_per_second
    assert outcome.primary is outcome.runs[-1]
    assert not outcome.valid and outcome.score == 0.0 and outcome.note == outcome.pruned.reason


def test_a_server_search_whose_queueing_model_cannot_reach_the_best_runs_no_server_run(
    tmp_path: Path,
) -> None:
    # The Offline run reads ~1,000 samples/s (1.5x reaches the best of 600), but the warm-up's
    # batches took 5 ms each: under a 20 ms bound at p90 the model finds ~130 QPS.
    outcome = server_search(tmp_path, 0.005, 600.0)
    upper = outcome.runs[-1].samples_per_second
    assert upper is not None and upper * 1.5 >= 600.0, "the Offline run itself would prune"
    assert outcome.pruned is not None and outcome.pruned.bound == "queueing model"
    assert 0 < outcome.pruned.value * 1.5 < 600.0
    assert {r.scenario for r in outcome.runs} == {"Offline"}


def test_a_server_search_that_may_reach_the_best_searches(tmp_path: Path) -> None:
    outcome = server_search(tmp_path, 0.001, 1.0)
    assert outcome.pruned is None
    assert "Server" in {r.scenario for r in outcome.runs} and outcome.valid


def test_a_bound_not_measured_prunes_nothing() -> None:
    assert prune.check("warm-up estimate", 0.0, 100.0) is None
    assert prune.check("queueing model", float("nan"), 100.0) is None

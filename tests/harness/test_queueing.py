"""The queueing model against closed forms (M/D/1, M/M/1, M/M/c) and the batcher's rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.queueing import (
    CALIBRATION_BOUNDS,
    ServiceDraw,
    SutModel,
    allowed_late,
    calibrate,
    meets_bound,
    predict_max_qps,
    predict_percentile_ms,
    predict_run_percentile_ms,
    predict_valid,
    scaled,
    simulate,
)

MU = 1000.0  # services per second


def exponential(rate: float) -> ServiceDraw:
    def draw(rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.exponential(1.0 / rate, size)

    return draw


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in M/M/c with offered load a = lambda / mu."""
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


def test_md1_mean_wait_matches_pollaczek_khinchine() -> None:
    lam = 500.0
    rho = lam / MU
    latencies = simulate(lam, SutModel(1, 1, 0.0, [1.0 / MU]), samples=200_000, seed=1)
    wait = latencies - 1.0 / MU
    assert wait.min() >= -1e-12
    assert wait.mean() == pytest.approx(rho / (2 * MU * (1 - rho)), rel=0.03)


def test_mm1_sojourn_p99_matches_the_exponential() -> None:
    lam = 600.0
    model = SutModel(1, 1, 0.0, exponential(MU))
    p99 = predict_percentile_ms(lam, model, 99.0, samples=200_000, seed=2)
    assert p99 == pytest.approx(math.log(100) / (MU - lam) * 1000.0, rel=0.04)


@pytest.mark.parametrize("streams", [2, 3])
def test_mmc_waiting_probability_and_mean_wait_match_erlang_c(streams: int) -> None:
    lam = 0.7 * streams * MU
    drawn: list[np.ndarray] = []

    def draw(rng: np.random.Generator, size: int) -> np.ndarray:
        drawn.append(rng.exponential(1.0 / MU, size))
        return drawn[-1]

    latencies = simulate(lam, SutModel(1, streams, 0.0, draw), samples=100_000, seed=3)
    # Batch size 1: batch k is sample k, served in the k-th draw.
    wait = latencies - drawn[0]
    c = erlang_c(streams, lam / MU)
    assert np.mean(wait > 1e-12) == pytest.approx(c, abs=0.02)
    assert wait.mean() == pytest.approx(c / (streams * MU - lam), rel=0.06)


def test_batches_wait_for_the_timeout_at_very_low_load() -> None:
    timeout, service = 0.005, 0.001
    latencies = simulate(1.0, SutModel(8, 1, timeout, [service]), samples=2000, seed=4)
    # At 1 QPS almost every batch holds one sample, dispatched when the timeout expires.
    assert np.median(latencies) == pytest.approx(timeout + service, rel=1e-6)
    assert latencies.mean() == pytest.approx(timeout + service, rel=0.02)


def test_partial_batches_scale_with_the_fixed_fraction() -> None:
    full = 0.008
    flat = simulate(1.0, SutModel(8, 1, 0.0, [full]), samples=500, seed=5)
    linear = simulate(1.0, SutModel(8, 1, 0.0, [full], fixed_fraction=0.5), samples=500, seed=5)
    # Zero timeout, 1 QPS: batches of one sample, full price by default, (0.5 + 0.5/8) x else.
    assert np.median(flat) == pytest.approx(full)
    assert np.median(linear) == pytest.approx(full * (0.5 + 0.5 / 8))


def test_full_batches_do_not_wait_at_high_load() -> None:
    model = SutModel(4, 2, 1.0, [0.002])  # a 1 s timeout that full batches never reach
    latencies = simulate(3000.0, model, samples=20_000, seed=6)
    assert np.percentile(latencies, 99) < 0.05


def test_max_qps_is_below_capacity_and_meets_the_bound() -> None:
    model = SutModel(8, 2, 0.002, [0.004])
    capacity = 2 * 8 / 0.004
    assert model.capacity_qps() == pytest.approx(capacity)
    qps = predict_max_qps(model, bound_ms=15.0, percentile=99.0, tolerance=0.02)
    assert 0 < qps < capacity
    assert predict_percentile_ms(qps, model, 99.0) <= 15.0
    assert predict_percentile_ms(qps * 1.05, model, 99.0) > 15.0


def test_max_qps_is_zero_when_no_load_meets_the_bound() -> None:
    model = SutModel(8, 1, 0.002, [0.004])  # every batch takes 4 ms
    assert predict_max_qps(model, bound_ms=3.0, upper_qps=2000.0) == 0.0


def test_max_qps_finds_the_band_above_a_light_load_that_waits_out_the_timeout() -> None:
    # A 10 ms timeout: a light load waits it out (12 ms and more), a heavy one fills batches.
    model = SutModel(8, 1, 0.010, [0.002])
    assert predict_percentile_ms(20.0, model, 99.0) > 10.0
    qps = predict_max_qps(model, bound_ms=10.0, upper_qps=4000.0)
    assert 2000.0 < qps < 4000.0
    assert predict_percentile_ms(qps, model, 99.0) <= 10.0


def test_early_stopping_needs_459_queries_at_p99() -> None:
    model = SutModel(1, 1, 0.0, [0.001])
    assert predict_max_qps(model, 10.0, 99.0, upper_qps=1000.0, min_queries=458) == 0.0
    assert 0 < predict_max_qps(model, 10.0, 99.0, upper_qps=1000.0, min_queries=600) < 1000.0


def test_a_short_run_near_capacity_passes_where_the_steady_state_does_not() -> None:
    # M/D/1 at 80 % load: the long-run p99 is about 11.7 ms, over a 10 ms bound, but a run of
    # 600 queries from an empty queue usually stays under it (as LoadGen's runs do).
    model = SutModel(1, 1, 0.0, [0.001])
    assert predict_percentile_ms(800.0, model, 99.0) > 10.0
    assert not predict_valid(800.0, model, 10.0, 99.0)
    assert predict_valid(800.0, model, 10.0, 99.0, queries=600)
    assert not predict_valid(900.0, model, 10.0, 99.0, queries=600)


def test_allowed_late_matches_loadgen_early_stopping() -> None:
    # LoadGen needs 459 queries at p99 with none late, and about 662 with one.
    assert allowed_late(458, 99.0) == -1
    assert allowed_late(459, 99.0) == 0
    assert allowed_late(661, 99.0) == 0
    assert allowed_late(662, 99.0) == 1
    assert 0 < allowed_late(270_336, 99.0) < 0.01 * 270_336


def test_meets_bound_checks_percentile_and_late_count() -> None:
    latencies = np.full(1000, 0.001)
    latencies[:5] = 0.1  # 0.5 % late
    assert meets_bound(latencies, 10.0, 99.0)
    assert not meets_bound(latencies, 10.0, 99.0, queries=600)  # 3 late where none may be
    assert meets_bound(latencies, 10.0, 99.0, queries=5000)  # 25 late, 33 may be
    assert not meets_bound(latencies, 10.0, 99.9)


def test_a_seed_reproduces_the_simulation() -> None:
    model = SutModel(4, 2, 0.001, exponential(500.0))
    first = simulate(1500.0, model, samples=5000, seed=7)
    assert np.array_equal(first, simulate(1500.0, model, samples=5000, seed=7))
    assert not np.array_equal(first, simulate(1500.0, model, samples=5000, seed=8))
    assert first.shape == (5000,) and first.min() > 0


def test_bad_models_are_rejected() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        SutModel(0, 1, 0.0, [0.001])
    with pytest.raises(ValueError, match="positive"):
        SutModel(1, 1, 0.0, [])
    with pytest.raises(ValueError, match="qps"):
        simulate(0.0, SutModel(1, 1, 0.0, [0.001]))


def test_scaling_the_service_scales_the_latencies_and_the_qps() -> None:
    # Without a batching timeout, service times x k at QPS / k is the same queue in a slower
    # clock: every latency is k times longer (common random numbers: the same draws).
    for model in (SutModel(1, 1, 0.0, [0.001, 0.002]), SutModel(2, 2, 0.0, exponential(800.0))):
        slow = scaled(model, 1.5)
        base = simulate(600.0, model, samples=4000, seed=3)
        assert np.allclose(simulate(400.0, slow, samples=4000, seed=3), 1.5 * base)
    with pytest.raises(ValueError, match="factor"):
        scaled(SutModel(1, 1, 0.0, [0.001]), 0.0)


def test_a_runs_percentile_is_the_median_of_short_runs_from_an_empty_queue() -> None:
    model = SutModel(1, 1, 0.0, [0.001])
    steady = predict_percentile_ms(800.0, model, 99.0)
    assert predict_run_percentile_ms(800.0, model, 99.0) == steady  # queries 0: steady state
    short = predict_run_percentile_ms(800.0, model, 99.0, queries=600)
    assert short < steady  # short runs start empty: the queue has no time to grow
    runs = [np.percentile(simulate(800.0, model, 600, r), 99) * 1000 for r in range(33)]
    assert short == pytest.approx(float(np.median(runs)))


@pytest.mark.parametrize("truth", [0.8, 1.0, 1.25])
def test_calibrate_recovers_the_service_factor_behind_a_measured_percentile(truth: float) -> None:
    # A "measured" p90 from the same SUT with service times x truth (another seed: a
    # different run), at a load where the percentile is steep in the factor.
    model = SutModel(2, 2, 0.0005, exponential(900.0), fixed_fraction=0.4)
    measured = predict_run_percentile_ms(1100.0, scaled(model, truth), 90.0, 600, seed=11)
    factor = calibrate(model, 1100.0, measured, 90.0, queries=600)
    assert factor == pytest.approx(truth, rel=0.05)
    # Then the refitted model predicts the true SUT's max QPS.
    true_max = predict_max_qps(scaled(model, truth), 10.0, 90.0, upper_qps=5000.0, min_queries=600)
    fitted_max = predict_max_qps(
        scaled(model, factor), 10.0, 90.0, upper_qps=5000.0, min_queries=600
    )
    assert fitted_max == pytest.approx(true_max, rel=0.06)


def test_calibrate_stops_at_its_bounds() -> None:
    model = SutModel(1, 1, 0.0, [0.001])
    low, high = CALIBRATION_BOUNDS
    assert calibrate(model, 500.0, 0.01, 90.0) == low  # faster than any factor explains
    assert calibrate(model, 500.0, 1e4, 90.0) == high  # slower than any factor explains
    with pytest.raises(ValueError, match="measured_ms"):
        calibrate(model, 500.0, 0.0, 90.0)

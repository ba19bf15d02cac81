"""The batching SUT under real LoadGen, with the simulated backend (no model needed)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.backends import BackendOptions
from harness.backends.null import NullBackend
from harness.config import ScenarioSpec
from harness.dataset import SampleSet
from harness.errors import BackendError
from harness.scenarios import offline, server
from harness.sut import BatchingSUT
from tests.harness.search_checks import answer_runs, check_answer


def null_backend(batch: int, streams: int, **extra: object) -> NullBackend:
    backend = NullBackend(
        Path("unused.onnx"), BackendOptions(max_batch=batch, streams=streams, extra=extra)
    )
    backend.load()
    return backend


def samples(n: int = 64) -> SampleSet:
    return SampleSet({"input": np.arange(n * 4, dtype=np.float32).reshape(n, 4)})


class RecordingBackend(NullBackend):
    """Null backend that records the batch sizes it is given."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sizes: list[int] = []

    def _infer(self, inputs: Mapping[str, np.ndarray], stream: int) -> list[np.ndarray]:
        self.sizes.append(len(inputs["input"]))
        return super()._infer(inputs, stream)


def test_offline_completes_every_sample_in_batches_of_at_most_batch_size(tmp_path: Path) -> None:
    backend = RecordingBackend(
        Path("x"), BackendOptions(max_batch=8, streams=2, extra={"latency_ms": 0.5})
    )
    backend.load()
    spec = ScenarioSpec(duration_s=0.5)
    with BatchingSUT(backend, samples(), 8, 2, 2000) as sut:
        outcome = offline.run(sut, spec, estimate_sps=10_000, out_dir=tmp_path)
    run = outcome.primary
    assert run is not None and run.sample_count is not None
    assert sut.samples_done == sum(r.sample_count or 0 for r in outcome.runs)
    # Offline issues each run's samples at once, whole rounds of batches (8 x 2 streams): every
    # batch is full, none is padded or waits out the deque timeout at the end.
    assert sum(backend.sizes) == sut.samples_done
    assert set(backend.sizes) == {8}, backend.sizes
    assert all((r.sample_count or 0) % 16 == 0 for r in outcome.runs)
    assert outcome.score == run.samples_per_second and outcome.score > 0
    assert (tmp_path / "offline-1" / "mlperf_log_detail.txt").exists()


def test_an_offline_query_is_loadgens_size_rounded_up_to_whole_rounds_of_batches() -> None:
    spec = ScenarioSpec(duration_s=2.0)
    assert offline.query_samples(spec, 100.0, 1) == 220  # LoadGen's 1.1 x 2 s x 100
    assert offline.query_samples(spec, 100.0, 16) == 224
    assert offline.query_samples(spec, 100.0, 220) == 220
    assert offline.query_samples(spec, 0.1, 16) == 16  # never less than one round
    compliance = ScenarioSpec(duration_s=2.0, compliance=True)
    assert offline.query_samples(compliance, 0.01, 1) == 24_576  # MLPerf's minimum
    assert offline.query_samples(compliance, 0.01, 7 * 3) == 24_591  # 1171 rounds of 21


def test_offline_too_small_expected_qps_is_rerun_with_a_measured_size(tmp_path: Path) -> None:
    backend = null_backend(16, 1, latency_ms=0.2, per_sample_ms=0.0)
    spec = ScenarioSpec(duration_s=0.5)
    with BatchingSUT(backend, samples(), 16, 1, 0) as sut:
        outcome = offline.run(sut, spec, estimate_sps=5.0, out_dir=tmp_path)
    assert outcome.runs[0].min_duration_met is False
    assert 2 <= len(outcome.runs) <= 3
    assert outcome.valid and outcome.runs[-1].min_duration_met
    assert outcome.primary is outcome.runs[-1]


class WaitRecordingSUT(BatchingSUT):
    """A BatchingSUT that notes, on the clock its batcher reads (time.monotonic), when LoadGen
    issued each sample (before the batcher can see it) and when each batch was taken (after
    the batcher let it go): per batch, (size, its first sample issued, taken)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.issued: dict[int, float] = {}
        self.taken: list[tuple[int, float, float]] = []

    def issue(self, ids: list[int], indices: list[int]) -> None:
        now = time.monotonic()
        self.issued.update(dict.fromkeys(ids, now))
        super().issue(ids, indices)

    def _take(self) -> tuple[list[int], list[int]] | None:
        batch = super()._take()
        if batch and batch[0]:
            self.taken.append((len(batch[0]), self.issued[batch[0][0]], time.monotonic()))
        return batch


def test_server_run_at_low_qps_is_valid_and_batches_wait_for_the_timeout(tmp_path: Path) -> None:
    """At 500 QPS queries arrive ~2 ms apart, so batches of 4 rarely fill within a 5 ms deque
    timeout: such a batch goes out only once the timeout has run since its first sample came
    (one stream: that sample started the batcher's wait). Order on one clock, not a speed."""
    timeout_us, batch = 5000, 4
    backend = null_backend(batch, 1, latency_ms=0.5, per_sample_ms=0.0)
    spec = ScenarioSpec(
        scenario="server", target_qps=500.0, duration_s=0.5, latency_ms=50.0, min_queries=600
    )
    with WaitRecordingSUT(backend, samples(), batch, 1, timeout_us) as sut:
        outcome = server.run(sut, spec, tmp_path)
    run = outcome.primary
    assert run is not None and outcome.valid
    assert run.query_count is not None and run.query_count >= 600
    sizes = [size for size, _, _ in sut.taken]
    assert sum(sizes) == sut.samples_done == run.sample_count  # every sample in one batch
    assert len(sizes) == sut.batches and all(1 <= size <= batch for size in sizes)
    partial = [(issued, taken) for size, issued, taken in sut.taken if size < batch]
    assert partial, sizes
    late = [(issued, taken) for issued, taken in partial if taken < issued + timeout_us / 1e6]
    assert not late, late[:5]  # no partial batch left before its first sample's deadline
    assert any(size > 1 for size in sizes), sizes  # waiting gathered later samples in


def test_engine_error_mid_run_fails_the_measurement_without_hanging(tmp_path: Path) -> None:
    backend = null_backend(4, 2, latency_ms=0.1, fail_after_batches=5)
    spec = ScenarioSpec(duration_s=0.3)
    with (
        BatchingSUT(backend, samples(), 4, 2, 0) as sut,
        pytest.raises(BackendError, match="simulated failure after 5 batches"),
    ):
        offline.run(sut, spec, estimate_sps=20_000, out_dir=tmp_path)


def test_more_streams_than_batches_in_flight_finishes(tmp_path: Path) -> None:
    backend = null_backend(64, 8, latency_ms=0.2)
    spec = ScenarioSpec(
        scenario="server", target_qps=200.0, duration_s=0.3, latency_ms=50.0, min_queries=100
    )
    with BatchingSUT(backend, samples(), 64, 8, 100) as sut:
        outcome = server.run(sut, spec, tmp_path)
    assert outcome.primary is not None
    assert sut.samples_done == outcome.primary.sample_count


def test_server_overloaded_run_ends_invalid(tmp_path: Path) -> None:
    # 1 stream of 5 ms per sample serves 200 samples/s at most; 400 QPS cannot meet 10 ms.
    backend = null_backend(1, 1, latency_ms=5.0, per_sample_ms=0.0)
    spec = ScenarioSpec(
        scenario="server", target_qps=400.0, duration_s=0.5, latency_ms=10.0, min_queries=200
    )
    with BatchingSUT(backend, samples(), 1, 1, 0) as sut:
        outcome = server.run(sut, spec, tmp_path)
    assert not outcome.valid
    p99 = outcome.primary.percentile_ms(99) if outcome.primary else None
    assert p99 is not None and p99 > 10.0


def test_find_max_qps_brackets_the_capacity_of_a_deterministic_backend(tmp_path: Path) -> None:
    # One stream, batch 1, 2 ms per sample: capacity 500/s; a 20 ms p99 bound is met up to
    # roughly 0.8-0.9 of it (M/D/1 queueing). The search must land inside (0, 500).
    backend = null_backend(1, 1, latency_ms=2.0, per_sample_ms=0.0)
    spec = ScenarioSpec(
        scenario="server",
        find_max_qps=True,
        duration_s=0.5,
        latency_ms=20.0,
        min_queries=600,
        qps_tolerance=0.05,
    )
    with BatchingSUT(backend, samples(), 1, 1, 0) as sut:
        outcome = server.find_max_qps(sut, spec, upper_qps=500.0, out_dir=tmp_path)
    assert outcome.valid and 0 < outcome.score < 500
    check_answer(outcome.runs, outcome.score, confirmed=not outcome.note)
    assert outcome.primary in answer_runs(outcome.runs)

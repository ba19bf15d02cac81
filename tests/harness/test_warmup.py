"""The runner's warm-up: what it measures for the Server search's queueing model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.backends import BackendOptions
from harness.backends.null import NullBackend
from harness.config import RunConfig
from harness.dataset import SampleSet
from harness.runner import Warmup, run_warmup


@pytest.mark.parametrize(
    ("batch_ms", "single_ms", "batch", "fraction"),
    [
        (10.0, 10.0, 8, 1.0),  # a batch costs the same whatever its size
        (8.0, 1.0, 8, 0.0),  # purely per sample
        (10.0, 7.5, 2, 0.5),  # t1 = tB * (f + (1 - f) / B)
        (10.0, 12.0, 4, 1.0),  # noise above a full batch: clamped
        (10.0, 0.5, 4, 0.0),  # noise below a sample's share: clamped
        (10.0, None, 4, 1.0),  # unmeasured: the conservative model
        (10.0, 3.0, 1, 1.0),  # batch 1 has no partial batches
    ],
)
def test_fixed_fraction(
    batch_ms: float, single_ms: float | None, batch: int, fraction: float
) -> None:
    warm = Warmup(batch_ms=batch_ms, samples_per_second=1.0, single_ms=single_ms)
    assert warm.fixed_fraction(batch) == pytest.approx(fraction)


@pytest.mark.parametrize("single", [False, True])
def test_one_sample_batches_are_timed_only_when_asked(single: bool) -> None:
    options = BackendOptions(
        max_batch=4, streams=2, extra={"latency_ms": 0.5, "per_sample_ms": 0.1}
    )
    backend = NullBackend(Path("unused.onnx"), options)
    backend.load()
    run = RunConfig(model="tiny", backend="null", batch_size=4, streams=2)
    samples = SampleSet({"input": np.zeros((16, 4), np.float32)})
    warm = run_warmup(backend, samples, run, single=single)
    assert warm.batch_latencies_s and warm.batch_ms > 0
    assert (warm.single_ms is not None) is single
    if single:  # the share a batch pays whatever its size, from the two medians timed
        share = (warm.single_ms / warm.batch_ms - 1 / 4) / (1 - 1 / 4)  # type: ignore[operator]
        assert warm.fixed_fraction(4) == pytest.approx(min(1.0, max(0.0, share)))
    else:  # nothing timed: the conservative model, every batch costs a full one
        assert warm.fixed_fraction(4) == 1.0

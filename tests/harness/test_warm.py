"""What a warm trial worker keeps between measurements (harness.warm): the model and its
samples, each variant, each variant's agreement with fp32, and a loaded backend where the next
configuration measures the same on it. Real ONNX Runtime, real LoadGen; the null backend where a
backend must fail."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness import runner
from harness.backends.base import BackendOptions
from harness.backends.null import NullBackend
from harness.backends.onnxruntime import OnnxRuntimeBackend
from harness.config import RunConfig, ScenarioSpec
from harness.device import cpu_count
from harness.errors import BackendError
from harness.warm import Warm


def ort_run(cache_dir: Path, **kw: Any) -> RunConfig:
    return RunConfig(model="tiny", backend="onnxruntime", cache_dir=cache_dir, **kw)


def spec(tmp_path: Path, name: str) -> ScenarioSpec:
    return ScenarioSpec(duration_s=0.2, out_dir=tmp_path / name)


def test_another_batch_size_keeps_the_loaded_session(tmp_path: Path, cache_dir: Path) -> None:
    warm = Warm()
    first = runner.measure(ort_run(cache_dir, batch_size=1), spec(tmp_path, "a"), warm)
    second = runner.measure(ort_run(cache_dir, batch_size=8), spec(tmp_path, "b"), warm)

    assert first.valid and second.valid
    assert not first.backend_reused and second.backend_reused
    assert (warm.loaded, warm.reused) == (1, 1)
    assert second.batch_size == 8 and second.score > 0
    # The variant was found once; the second measurement built nothing.
    assert second.engine_cached and second.variant_build_s == 0
    warm.close()


def test_streams_that_change_the_thread_count_load_another_session(
    tmp_path: Path, cache_dir: Path
) -> None:
    one, two = ort_run(cache_dir, streams=1), ort_run(cache_dir, streams=2)
    # The cores split among the streams: 1 stream runs them all, 2 streams half each; the
    # same thread count only where there is one core.
    same = cpu_count() == 1
    warm = Warm()
    runner.measure(one, spec(tmp_path, "a"), warm)
    second = runner.measure(two, spec(tmp_path, "b"), warm)

    assert second.backend_reused == same  # on 2+ cores: 1 stream runs 2 threads, 2 run 1 each
    assert (warm.loaded, warm.reused) == ((1, 1) if same else (2, 0))
    warm.close()


def test_agreement_is_measured_once_per_variant(
    tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    warm = Warm()
    with caplog.at_level(logging.INFO, logger="harness"):
        a = runner.measure(
            ort_run(cache_dir, precision="int8", batch_size=2), spec(tmp_path, "a"), warm
        )
        b = runner.measure(
            ort_run(cache_dir, precision="int8", batch_size=4), spec(tmp_path, "b"), warm
        )
    measured = [r for r in caplog.records if r.getMessage().startswith("agreement with fp32 on")]
    assert len(measured) == 1
    assert a.agreement is not None and a.agreement == b.agreement
    warm.close()


def test_ort_serves_any_batch_but_not_another_thread_count_or_model_setting(
    tmp_path: Path, cache_dir: Path
) -> None:
    from harness.models import resolve_model

    model = resolve_model("tiny", cache_dir)
    options = BackendOptions(precision="fp32", max_batch=1, streams=1, threads=1)
    backend = OnnxRuntimeBackend(model.path, options)
    assert not backend.serves(options)  # not loaded: nothing to keep
    with backend:
        assert backend.serves(replace(options, max_batch=64))
        assert backend.serves(replace(options, streams=2))  # threads given: 1 per stream
        assert not backend.serves(replace(options, threads=2))
        assert not backend.serves(replace(options, precision="int8"))
        assert not backend.serves(replace(options, extra={"graph_optimization": "basic"}))
        backend.retarget(replace(options, max_batch=64))
        assert backend.options.max_batch == 64
        with pytest.raises(ValueError, match="onnxruntime"):
            backend.retarget(replace(options, threads=2))
    if cpu_count() > 1:
        split = BackendOptions(precision="fp32", max_batch=1, streams=1)
        with OnnxRuntimeBackend(model.path, split) as backend:
            assert not backend.serves(replace(split, streams=cpu_count()))


def test_a_failed_measurement_closes_its_backend(tmp_path: Path, cache_dir: Path) -> None:
    warm = Warm()
    options = {"latency_ms": 0.5, "per_sample_ms": 0.1}
    run = RunConfig(model="tiny", backend="null", cache_dir=cache_dir, backend_options=options)
    runner.measure(run, spec(tmp_path, "ok"), warm)
    assert len(warm._idle) == 1
    failing = replace(run, backend_options={**options, "fail_after_batches": 3})
    with pytest.raises(BackendError, match="simulated failure"):
        runner.measure(failing, spec(tmp_path, "bad"), warm)
    assert len(warm._idle) == 1  # the first is kept; the failed one is closed, not kept
    warm.close()
    assert warm._idle == []


def test_beyond_max_backends_the_least_recently_used_is_closed(cache_dir: Path) -> None:
    closed: list[int] = []

    class Counted(NullBackend):
        def close(self) -> None:
            closed.append(self.options.max_batch)

    warm = Warm(max_backends=2)
    path = Path("unused.onnx")
    for batch in (1, 2, 3):
        backend, kept = warm.backend(Counted, path, BackendOptions(max_batch=batch))
        assert not kept
        warm.release(backend, ok=True)
    assert closed == [1]
    again, kept = warm.backend(Counted, path, BackendOptions(max_batch=3))
    assert kept and again.options.max_batch == 3  # identical options: kept by default
    warm.release(again, ok=True)
    warm.close()
    assert sorted(closed) == [1, 2, 3]


def test_keeping_nothing_is_the_single_measurement(tmp_path: Path, cache_dir: Path) -> None:
    warm = Warm(max_backends=0)
    runner.measure(ort_run(cache_dir), spec(tmp_path, "a"), warm)
    second = runner.measure(ort_run(cache_dir), spec(tmp_path, "b"), warm)
    assert not second.backend_reused and warm._idle == [] and warm.loaded == 2

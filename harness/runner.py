"""Measure one configuration: model -> precision variant -> backend -> batching SUT -> LoadGen.

`measure` is the harness's single entry point; the tuner calls it once per trial (in its warm
worker, harness.warm keeping what a measurement loads for the next). It knows nothing of
Optuna. It runs the one measure pipeline (`measure_devices`) on a system of one device;
`harness.system.measure_system` runs the same pipeline on several, so both get the same checks,
warm-up and scenarios (harness.scenarios.measure: the Server search's queueing-model start and
refit included).
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.backends import BackendOptions, check_precision, get_backend
from harness.backends.base import Backend, BackendInfo
from harness.config import RunConfig, ScenarioSpec
from harness.dataset import (
    InputRange,
    SampleSet,
    check_fits,
    default_sample_count,
    input_ranges,
    load_samples_from,
    synthetic_samples,
)
from harness.device import cuda_ordinal
from harness.errors import BackendError, ConfigError
from harness.gpus import GpuSampler, sampler_for
from harness.loadgen_log import LoadgenRun
from harness.models import ModelInfo, TensorSpec, resolve_model
from harness.precision import (
    CALIBRATION_SAMPLES,
    Agreement,
    Variant,
    agreement,
    make_variant,
    output_index,
    source_precision,
)
from harness.result import Result
from harness.scenarios import Outcome
from harness.scenarios.measure import SCENARIOS, Context, Warmup, system_warmup
from harness.sut import BatchingSUT, SystemSUT
from harness.warm import Warm, inputs_key

log = logging.getLogger("harness")

#: Seconds of timed warm-up (after one untimed batch per stream); sizes the Offline query and
#: checks that one batch fits the latency bound. Never used as a score.
WARMUP_S = 0.5
#: One-sample batches each stream times after the warm-up of a Server search.
SINGLE_RUNS = 5


@dataclass(frozen=True)
class Measurement:
    """What the measure pipeline found on a system of one or more devices."""

    model: ModelInfo
    ranges: dict[str, InputRange]
    variant: Variant
    devices: tuple[str, ...]
    #: Each device's backend, read after the LoadGen runs (an engine's build details).
    infos: tuple[BackendInfo, ...]
    warmups: tuple[Warmup, ...]
    #: Seconds to load every device's backend (build or deserialize the engines).
    build_s: float
    agreement: Agreement | None
    outcome: Outcome
    #: Samples LoadGen's queries sent to each device, and the batches each device ran.
    routed: tuple[int, ...]
    batches: tuple[int, ...]
    gpu: dict[str, Any] | None
    #: Every backend was kept loaded from an earlier measurement (harness.warm).
    reused: bool = False

    @property
    def simulated(self) -> bool:
        return any(info.simulated for info in self.infos)


def measure(run: RunConfig, spec: ScenarioSpec, warm: Warm | None = None) -> Result:
    """Measure `run` in the scenario `spec` with LoadGen and return the result: the measure
    pipeline on a system of one device, `run.device`. `warm` keeps what it loads for the next
    call in this process (harness.warm); without it everything is loaded and freed here."""
    measured = measure_devices(run, spec, [run.device], agreement=True, warm=warm)
    return _result(run, spec, measured)


def measure_devices(
    run: RunConfig,
    spec: ScenarioSpec,
    devices: Sequence[str],
    agreement: bool = False,
    warm: Warm | None = None,
) -> Measurement:
    """The measure pipeline: model -> precision variant -> one backend per device of
    `devices` (loaded, checked on one batch, warmed up) -> a batching SUT each, behind one
    `SystemSUT` -> the scenario under LoadGen (`run.device` is ignored). With `agreement`,
    the first device's outputs are also scored against ONNX Runtime fp32. With `warm`, the
    loads are kept for the next measurement (a backend only where it measures the same)."""
    if not devices or len(set(devices)) != len(devices):
        raise ConfigError(f"devices: give distinct devices, got {list(devices)!r}")
    backend_cls = get_backend(run.backend)
    for device in devices:
        check_precision(backend_cls, run.precision, device)
    cache = warm if warm is not None else Warm(max_backends=0)
    model, ranges, samples, variant = prepare_inputs(run, backend_cls, cache)
    started = time.perf_counter()
    backends: list[Backend] = []
    reused: list[bool] = []
    ok = False
    try:
        for device in devices:
            backend, kept = cache.backend(backend_cls, variant.path, backend_options(run, device))
            backends.append(backend)
            reused.append(kept)
        build_s = time.perf_counter() - started
        infos = [backend.info() for backend in backends]
        simulated = any(info.simulated for info in infos)
        names = ", ".join(info.device for info in infos)
        how = "kept from an earlier measurement" if all(reused) else "loaded"
        log.info("%s %s %s on %s in %.2f s", how, model.name, run.precision, names, build_s)
        warmups = []
        for device, backend in zip(devices, backends, strict=True):
            check_batch(backend, samples, model, run, ranges)
            warm_up = run_warmup(backend, samples, run, single=spec.find_max_qps)
            log.info(
                "warm-up %s: %.2f ms per batch of %d, ~%.1f samples/s",
                device,
                warm_up.batch_ms,
                run.batch_size,
                warm_up.samples_per_second,
            )
            warmups.append(warm_up)
        agree = None
        if (
            agreement
            and not simulated
            and (run.precision != "fp32" or run.backend != "onnxruntime")
        ):
            key = (
                variant.sha256,
                run.backend,
                devices[0],
                run.accuracy_metric,
                run.accuracy_output,
                run.agreement_samples,
                inputs_key(run),
            )
            first = backends[0]
            agree = cache.agreement(key, lambda: _agreement(first, model, samples, run))
        sampler = gpu_sampler(list(devices), simulated)
        suts = [
            BatchingSUT(backend, samples, run.batch_size, run.streams, run.deque_timeout_us)
            for backend in backends
        ]
        system = SystemSUT(suts, [w.samples_per_second for w in warmups])
        with system, sampler:
            warm_all = system_warmup(warmups)
            ctx = Context(run, spec, system, warm_all, spec.out_dir, len(devices))
            outcome = SCENARIOS[spec.scenario](ctx)
        infos = [backend.info() for backend in backends]
        ok = True
    finally:
        for backend in backends:
            cache.release(backend, ok)
    return Measurement(
        model=model,
        ranges=ranges,
        variant=variant,
        devices=tuple(devices),
        infos=tuple(infos),
        warmups=tuple(warmups),
        build_s=build_s,
        agreement=agree,
        outcome=outcome,
        routed=tuple(system.routed),
        batches=tuple(sut.batches for sut in suts),
        gpu=sampler.telemetry(),
        reused=all(reused),
    )


def prepare_inputs(
    run: RunConfig, backend_cls: type[Backend], warm: Warm | None = None
) -> tuple[ModelInfo, dict[str, InputRange], SampleSet, Variant]:
    """The model with its dims bound, the synthetic inputs' ranges (none with --data), the
    samples, and the precision variant the backend loads (each made once per `warm`)."""
    cache = warm if warm is not None else Warm(max_backends=0)

    def inputs() -> tuple[ModelInfo, dict[str, InputRange], SampleSet]:
        model = resolve_model(run.model, run.cache_dir, run.dims, run.shapes)
        if run.accuracy_output is not None:
            output_index([t.name for t in model.outputs], run.accuracy_output)
        ranges = input_ranges(model, run.input_ranges) if run.data_dir is None else {}
        return model, ranges, load_samples(run, model, ranges)

    key = inputs_key(run)
    model, ranges, samples = cache.inputs(key, inputs)
    source = source_precision(run.precision, backend_cls.casts_precision)
    variant = cache.variant(
        (key, source),
        lambda: make_variant(model, source, samples.head(CALIBRATION_SAMPLES), run.cache_dir),
    )
    return model, ranges, samples, variant


def backend_options(run: RunConfig, device: str) -> BackendOptions:
    """What the backend of `run` on `device` is told beyond the model file."""
    return BackendOptions(
        precision=run.precision,
        max_batch=run.batch_size,
        streams=run.streams,
        device=device,
        threads=run.threads,
        extra=run.backend_options,
        cache_dir=run.cache_dir,
        dims=dict(run.dims),
        shapes=dict(run.shapes),
    )


def describe_inputs(
    model: ModelInfo, run: RunConfig, ranges: dict[str, InputRange]
) -> dict[str, Any]:
    """What the model was fed, for the result: bound dims, each input's shape and the range its
    synthetic values were drawn from (or the data they came from)."""
    return {
        "dims": dict(model.dims),
        "data": str(run.data_dir) if run.data_dir is not None else None,
        "tensors": [
            {
                "name": t.name,
                "dtype": t.dtype,
                "sample_shape": list(t.sample_shape),
                **({"range": ranges[t.name].to_dict()} if t.name in ranges else {}),
            }
            for t in model.inputs
        ],
    }


def check_batch(
    backend: Backend,
    samples: SampleSet,
    model: ModelInfo,
    run: RunConfig,
    ranges: dict[str, InputRange],
) -> None:
    """Run one batch before measuring; a model that rejects it gets an error naming the input
    at fault (the one whose Gather the runtime's message names, else every integer input with
    its range) and what to do about it."""
    batch = samples.gather(_batch_indices(samples, min(run.batch_size, samples.count)))
    try:
        backend.infer(batch, 0)
    except BackendError as exc:
        raise BackendError(f"{exc}; {_blame(str(exc), model, run, ranges)}") from exc


def _blame(error: str, model: ModelInfo, run: RunConfig, ranges: dict[str, InputRange]) -> str:
    if run.data_dir is not None:
        return f"the model rejects the samples of --data {run.data_dir}"
    named = [t for t in model.inputs if any(n and n in error for n in t.index_nodes)]
    suspects = named or [t for t in model.inputs if t.name in ranges]
    if not suspects:
        return "the model rejects its synthetic samples; give real ones with --data"
    what = ", ".join(
        f"{t.name!r} drawn from {ranges[t.name].low:g}..{ranges[t.name].high:g}"
        f" ({ranges[t.name].source})"
        for t in suspects
        if t.name in ranges
    )
    return (
        f"the model rejects synthetic input {what}: set the values with "
        "--input-range NAME=LO:HI or give real samples with --data"
    )


def gpu_sampler(devices: list[str], simulated: bool) -> GpuSampler:
    """The telemetry sampler of the GPUs a measurement runs on: one that samples nothing on
    a CPU, on a simulated backend, or where NVML is absent (the reason is logged)."""
    if simulated or any(cuda_ordinal(d) is None for d in devices):
        return GpuSampler([])
    sampler = sampler_for(devices)
    if sampler.error:
        log.info("%s", sampler.error)
    return sampler


def load_samples(
    run: RunConfig, model: ModelInfo, ranges: dict[str, InputRange] | None = None
) -> SampleSet:
    """The QSL's samples: the data's (--data), else synthetic ones within `ranges`; a
    ConfigError first if one batch of them cannot fit in memory."""
    check_fits(model, run.samples or 1, run.batch_size)
    if run.data_dir is not None:
        return load_samples_from(run.data_dir, model, run.samples)
    count = run.samples or default_sample_count(model)
    return synthetic_samples(model, count, run.seed, ranges)


def _batch_indices(samples: SampleSet, batch: int, offset: int = 0) -> np.ndarray:
    return (np.arange(batch, dtype=np.intp) + offset) % samples.count


def run_warmup(
    backend: Backend, samples: SampleSet, run: RunConfig, single: bool = False
) -> Warmup:
    """One untimed batch per stream, then all streams at once for WARMUP_S (an estimate);
    with `single`, then SINGLE_RUNS one-sample batches per stream, all streams at once."""
    latencies: list[float] = []
    singles: list[float] = []
    rates = [0.0] * run.streams
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(run.streams)

    def work(stream: int) -> None:
        try:
            inputs = samples.gather(_batch_indices(samples, run.batch_size, stream))
            backend.infer(inputs, stream)
            barrier.wait()
            start = time.perf_counter()
            done = 0
            while True:
                t0 = time.perf_counter()
                backend.infer(inputs, stream)
                t1 = time.perf_counter()
                with lock:
                    latencies.append(t1 - t0)
                done += run.batch_size
                if t1 - start >= WARMUP_S:
                    break
            rates[stream] = done / (t1 - start)
            if single and run.batch_size > 1:
                one = samples.gather(_batch_indices(samples, 1, stream))
                for _ in range(SINGLE_RUNS):
                    t0 = time.perf_counter()
                    backend.infer(one, stream)
                    with lock:
                        singles.append(time.perf_counter() - t0)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(s,)) for s in range(run.streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real:
        error = real[0]
        raise error if isinstance(error, BackendError) else BackendError(repr(error)) from error
    return Warmup(
        batch_ms=statistics.median(latencies) * 1000.0,
        samples_per_second=sum(rates),
        batch_latencies_s=tuple(latencies),
        single_ms=statistics.median(singles) * 1000.0 if singles else None,
    )


def _agreement(
    backend: Backend, model: ModelInfo, samples: SampleSet, run: RunConfig
) -> Agreement:
    """Top-1 agreement and max abs error of this backend's outputs against ONNX Runtime fp32."""
    import onnxruntime as ort

    n = min(run.agreement_samples, samples.count)
    # Compare on samples the int8 calibration did not see, where the set is large enough.
    first = CALIBRATION_SAMPLES if samples.count >= CALIBRATION_SAMPLES + n else 0
    options = ort.SessionOptions()
    reference_session = ort.InferenceSession(
        str(model.path), options, providers=["CPUExecutionProvider"]
    )
    reference: list[list[np.ndarray]] = []
    candidate: list[list[np.ndarray]] = []
    specs = {t.name: t for t in model.outputs}
    names = [o.name for o in reference_session.get_outputs()]
    for start in range(first, first + n, run.batch_size):
        indices = np.arange(start, min(first + n, start + run.batch_size), dtype=np.intp)
        inputs = samples.gather(indices)
        count = len(indices)
        reference.append(_stacked(names, specs, reference_session.run(None, inputs), count))
        candidate.append(_stacked(names, specs, backend.infer(inputs, 0), count))
    concat = lambda batches: [np.concatenate(parts) for parts in zip(*batches, strict=True)]  # noqa: E731
    index = output_index(names, run.accuracy_output)
    labels = samples.labels[first : first + n] if samples.labels is not None else None
    result = agreement(
        concat(reference), concat(candidate), run.accuracy_metric, index, names[index], labels
    )
    log.info(
        "agreement with fp32 on %d samples of %s: %s %.4f, max abs error %.4g",
        result.samples,
        result.output,
        result.metric,
        result.value,
        result.max_abs_error,
    )
    return result


def _stacked(
    names: Sequence[str],
    specs: Mapping[str, TensorSpec],
    outputs: Sequence[np.ndarray],
    count: int,
) -> list[np.ndarray]:
    """One batch's outputs (`count` samples) with each output's samples on axis 0."""
    return [
        (specs[name] if name in specs else TensorSpec(name, "float32", ())).stack(
            np.asarray(out), count
        )
        for name, out in zip(names, outputs, strict=True)
    ]


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("mlcommons-loadgen", "numpy", "onnx", "batch-tuner"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _result(run: RunConfig, spec: ScenarioSpec, measured: Measurement) -> Result:
    """The Result of a system of one."""
    model, variant, outcome = measured.model, measured.variant, measured.outcome
    (info,), (warm,) = measured.infos, measured.warmups
    primary: LoadgenRun | None = outcome.primary
    latency = dict(primary.latency_ms) if primary is not None else {}
    offline_mode = spec.scenario == "offline"
    return Result(
        scenario=spec.scenario,
        valid=outcome.valid,
        score=outcome.score,
        samples_per_second=outcome.score if offline_mode else None,
        qps=None if offline_mode else outcome.score,
        latency_ms=latency,
        loadgen_runs=[r.to_dict() for r in outcome.runs],
        model=model.name,
        model_sha256=model.sha256,
        variant_sha256=variant.sha256,
        variant_path=str(variant.path),
        variant_build_s=round(variant.build_seconds, 4),
        # An engine-building backend (TensorRT) says whether it found its engine cached.
        engine_cached=bool(info.details.get("engine_cached", variant.cached)),
        backend=run.backend,
        device=info.device,
        precision=run.precision,
        batch_size=run.batch_size,
        streams=run.streams,
        simulated=info.simulated,
        versions={**_versions(), **info.versions},
        engine_build_s=round(measured.build_s, 4),
        warmup={
            "batch_ms": warm.batch_ms,
            "samples_per_second": warm.samples_per_second,
            "single_ms": warm.single_ms,
        },
        agreement=(
            {**measured.agreement.to_dict(), "floor": run.accuracy_floor}
            if measured.agreement is not None
            else None
        ),
        latency_bound_ms=None if offline_mode else spec.latency_ms,
        percentile=None if offline_mode else spec.percentile,
        note=outcome.note,
        pruned=outcome.pruned.to_dict() if outcome.pruned is not None else None,
        backend_details=dict(info.details),
        gpu=measured.gpu,
        inputs=describe_inputs(model, run, measured.ranges),
        backend_reused=measured.reused,
    )

"""Several devices measured as one system (NVIDIA's multi-GPU MLPerf harness): one backend and
one batching SUT (`harness.sut.BatchingSUT`, its own streams and batcher) per device, behind a
single LoadGen SUT that routes every issued batch of samples to the least-loaded device
(outstanding samples over the device's warm-up throughput). An Offline query is cut into
batch-size chunks spread that way, i.e. in proportion to each device's speed; a Server query
goes whole to the least-loaded device.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, cast

from harness.backends import check_precision, get_backend
from harness.backends.base import Backend
from harness.config import RunConfig, ScenarioSpec
from harness.errors import ConfigError
from harness.runner import Warmup, backend_options, gpu_sampler, prepare_inputs, run_warmup
from harness.scenarios import Outcome, offline, server
from harness.sut import BatchingSUT

log = logging.getLogger("harness")


class SystemSUT:
    """One LoadGen SUT over several BatchingSUTs (one per device). Use as a context manager."""

    def __init__(self, suts: Sequence[BatchingSUT], weights: Sequence[float]) -> None:
        if not suts or len(suts) != len(weights):
            raise ValueError("give one weight per device SUT, and at least one SUT")
        self.suts = list(suts)
        self.samples = self.suts[0].samples
        positive = [w for w in weights if w > 0]
        fallback = min(positive) if positive else 1.0
        self.weights = [w if w > 0 else fallback for w in weights]
        #: Samples routed to each device so far (over every LoadGen run).
        self.routed = [0] * len(self.suts)
        self._chunk = min(s.batch_size for s in self.suts)
        self._lock = threading.Lock()
        self._next = 0

    @property
    def error(self) -> BaseException | None:
        return next((s.error for s in self.suts if s.error is not None), None)

    @property
    def samples_done(self) -> int:
        return sum(s.samples_done for s in self.suts)

    # LoadGen callbacks: they run on LoadGen's threads and must never raise.
    def issue(self, ids: list[int], indices: list[int]) -> None:
        with self._lock:
            parts: list[tuple[list[int], list[int]]] = [([], []) for _ in self.suts]
            outstanding = [r - s.samples_done for r, s in zip(self.routed, self.suts, strict=True)]
            for start in range(0, len(ids), self._chunk):
                end = min(start + self._chunk, len(ids))
                device = self._least_loaded(outstanding, end - start)
                outstanding[device] += end - start
                self.routed[device] += end - start
                parts[device][0].extend(ids[start:end])
                parts[device][1].extend(indices[start:end])
        for sut, (part_ids, part_indices) in zip(self.suts, parts, strict=True):
            if part_ids:
                sut.issue(part_ids, part_indices)

    def _least_loaded(self, outstanding: list[int], size: int) -> int:
        """The device that would finish `size` more samples first; ties rotate."""
        n = len(self.suts)
        best, best_load = self._next, float("inf")
        for k in range(n):
            device = (self._next + k) % n
            load = (outstanding[device] + size) / self.weights[device]
            if load < best_load:
                best, best_load = device, load
        self._next = (best + 1) % n
        return best

    def flush(self) -> None:
        """LoadGen's flush: nothing is held back beyond each batcher's timeout."""

    def __enter__(self) -> SystemSUT:
        for sut in self.suts:
            sut.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sut in self.suts:
            sut.stop()


@dataclass(frozen=True)
class SystemResult:
    """One system measurement: LoadGen's score for all devices together, and each device's
    share of the samples (over every LoadGen run made)."""

    scenario: str
    valid: bool
    score: float
    samples_per_second: float | None
    qps: float | None
    latency_ms: dict[str, float]
    loadgen_runs: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    model: str
    backend: str
    precision: str
    batch_size: int
    streams: int
    deque_timeout_us: int
    simulated: bool
    seconds: float
    note: str = ""
    latency_bound_ms: float | None = None
    percentile: float | None = None
    log_dir: str = ""
    gpu: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_system(run: RunConfig, spec: ScenarioSpec, devices: Sequence[str]) -> SystemResult:
    """Measure `run` on every device of `devices` at once, as one LoadGen system under test
    (`run.device` is ignored). Server with find_max_qps searches the system's max VALID QPS."""
    if not devices or len(set(devices)) != len(devices):
        raise ConfigError(f"devices: give distinct devices, got {list(devices)!r}")
    started = time.perf_counter()
    backend_cls = get_backend(run.backend)
    for device in devices:
        check_precision(backend_cls, run.precision, device)
    model, _, samples, variant = prepare_inputs(run, backend_cls)
    backends: list[Backend] = [
        backend_cls(variant.path, backend_options(run, device)) for device in devices
    ]
    with contextlib.ExitStack() as stack:
        for backend in backends:
            stack.enter_context(backend)
        warm = [run_warmup(backend, samples, run) for backend in backends]
        for device, w in zip(devices, warm, strict=True):
            log.info("warm-up %s: ~%.1f samples/s", device, w.samples_per_second)
        suts = [
            BatchingSUT(b, samples, run.batch_size, run.streams, run.deque_timeout_us)
            for b in backends
        ]
        infos = [b.info() for b in backends]
        simulated = any(i.simulated for i in infos)
        sampler = gpu_sampler(list(devices), simulated)
        system = SystemSUT(suts, [w.samples_per_second for w in warm])
        with system, sampler:
            outcome = _scenario(system, spec, warm)
    primary = outcome.primary
    total = sum(system.routed) or 1
    offline_mode = spec.scenario == "offline"
    per_device = [
        {
            "device": device,
            "name": info.device,
            "samples": routed,
            "batches": sut.batches,
            "share": routed / total,
            "score_share": outcome.score * routed / total,
            "warmup_samples_per_second": w.samples_per_second,
        }
        for device, info, routed, sut, w in zip(
            devices, infos, system.routed, suts, warm, strict=True
        )
    ]
    return SystemResult(
        scenario=spec.scenario,
        valid=outcome.valid,
        score=outcome.score,
        samples_per_second=outcome.score if offline_mode else None,
        qps=None if offline_mode else outcome.score,
        latency_ms=dict(primary.latency_ms) if primary is not None else {},
        loadgen_runs=[r.to_dict() for r in outcome.runs],
        devices=per_device,
        model=model.name,
        backend=run.backend,
        precision=run.precision,
        batch_size=run.batch_size,
        streams=run.streams,
        deque_timeout_us=run.deque_timeout_us,
        simulated=simulated,
        seconds=round(time.perf_counter() - started, 2),
        note=outcome.note,
        latency_bound_ms=None if offline_mode else spec.latency_ms,
        percentile=None if offline_mode else spec.percentile,
        log_dir=str(spec.out_dir),
        gpu=sampler.telemetry(),
        versions=dict(infos[0].versions),
    )


def _scenario(system: SystemSUT, spec: ScenarioSpec, warm: Sequence[Warmup]) -> Outcome:
    # The scenario modules only use a SUT's issue/flush/samples/error, which SystemSUT has.
    sut = cast(BatchingSUT, system)
    estimate = sum(w.samples_per_second for w in warm)
    out_dir = spec.out_dir
    if spec.scenario == "offline":
        return offline.run(sut, spec, estimate, out_dir)
    if not spec.find_max_qps:
        return server.run(sut, spec, out_dir)
    slowest = max(w.batch_ms for w in warm)
    if slowest > spec.latency_ms:
        note = (
            f"infeasible: one batch takes {slowest:.1f} ms, over the {spec.latency_ms:g} ms bound"
        )
        return Outcome(valid=False, score=0.0, primary=None, runs=(), note=note)
    bound = offline.run(sut, spec, estimate, out_dir)
    log.info("system upper bound from Offline: %.1f samples/s", bound.score)
    found = server.find_max_qps(sut, spec, bound.score, out_dir)
    return Outcome(found.valid, found.score, found.primary, bound.runs + found.runs, found.note)

"""Several devices measured as one system (NVIDIA's multi-GPU MLPerf harness): the measure
pipeline of `harness.runner` (`measure_devices`) with one backend and one batching SUT per
device behind a single LoadGen SUT (`harness.sut.SystemSUT`, which routes every issued batch
of samples to the least-loaded device). `harness.runner.measure` is the same pipeline on a
system of one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.config import RunConfig, ScenarioSpec
from harness.runner import measure_devices
from harness.sut import SystemSUT

__all__ = ["SystemResult", "SystemSUT", "measure_system"]


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
    #: Why the measurement stopped at a bound (harness.scenarios.prune); None: in full.
    pruned: dict[str, Any] | None = None
    latency_bound_ms: float | None = None
    percentile: float | None = None
    log_dir: str = ""
    gpu: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_system(run: RunConfig, spec: ScenarioSpec, devices: Sequence[str]) -> SystemResult:
    """Measure `run` on every device of `devices` at once, as one LoadGen system under test
    (`run.device` is ignored). Server with find_max_qps searches the system's max VALID QPS,
    from the queueing model's guess as `measure` does."""
    started = time.perf_counter()
    measured = measure_devices(run, spec, devices)
    outcome = measured.outcome
    primary = outcome.primary
    total = sum(measured.routed) or 1
    offline_mode = spec.scenario == "offline"
    per_device = [
        {
            "device": device,
            "name": info.device,
            "samples": routed,
            "batches": batches,
            "share": routed / total,
            "score_share": outcome.score * routed / total,
            "warmup_samples_per_second": warm.samples_per_second,
        }
        for device, info, routed, batches, warm in zip(
            measured.devices,
            measured.infos,
            measured.routed,
            measured.batches,
            measured.warmups,
            strict=True,
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
        model=measured.model.name,
        backend=run.backend,
        precision=run.precision,
        batch_size=run.batch_size,
        streams=run.streams,
        deque_timeout_us=run.deque_timeout_us,
        simulated=measured.simulated,
        seconds=round(time.perf_counter() - started, 2),
        note=outcome.note,
        pruned=outcome.pruned.to_dict() if outcome.pruned is not None else None,
        latency_bound_ms=None if offline_mode else spec.latency_ms,
        percentile=None if offline_mode else spec.percentile,
        log_dir=str(spec.out_dir),
        gpu=measured.gpu,
        versions=dict(measured.infos[0].versions),
    )

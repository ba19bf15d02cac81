"""The result of measuring one configuration, as the CLI prints it and the tuner stores it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Result:
    """Everything one `measure()` call found. `score` is what the tuner maximises."""

    scenario: str
    valid: bool
    score: float
    samples_per_second: float | None
    qps: float | None
    latency_ms: dict[str, float]
    loadgen_runs: list[dict[str, Any]]
    model: str
    model_sha256: str
    variant_sha256: str
    variant_path: str
    variant_build_s: float
    #: The precision variant was already cached: this measurement built nothing.
    engine_cached: bool
    backend: str
    device: str
    precision: str
    batch_size: int
    streams: int
    simulated: bool
    versions: dict[str, str]
    engine_build_s: float
    warmup: dict[str, float | None]
    agreement: dict[str, Any] | None = None
    latency_bound_ms: float | None = None
    percentile: float | None = None
    note: str = ""
    backend_details: dict[str, Any] = field(default_factory=dict)
    #: GPU telemetry while LoadGen ran (harness.gpus.GpuSampler.telemetry); None on a CPU or a
    #: simulated backend, or where NVML is absent.
    gpu: dict[str, Any] | None = None
    #: What the model was fed: bound dims, each input's shape and the range of its synthetic
    #: values or the data folder (harness.runner.describe_inputs).
    inputs: dict[str, Any] = field(default_factory=dict)
    #: The backend was kept loaded from an earlier measurement in the same process (a warm
    #: trial worker, harness.warm): `engine_build_s` is then ~0.
    backend_reused: bool = False
    #: Why the measurement stopped at a bound instead of measuring in full
    #: (harness.scenarios.prune.Pruned.to_dict()); None where it was measured in full.
    pruned: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

"""The validated inputs of one measurement: `RunConfig` (what runs) and `ScenarioSpec` (how
LoadGen measures it). Every value is checked here, once; code past this edge trusts the types.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

#: bf16 has no ONNX variant: a backend that runs it (torch) casts the fp32 model itself.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
SCENARIO_NAMES = ("offline", "server")
#: How a variant's outputs are compared with fp32 (harness.precision.agreement): `auto` picks
#: accuracy where the data has labels, else top1 for class scores [N, C], relative for one
#: value per sample, cosine otherwise. `accuracy` is task accuracy relative to fp32's.
ACCURACY_METRICS = ("auto", "accuracy", "top1", "cosine", "relative")
#: The least agreement a variant must keep unless told otherwise (the study's floor).
DEFAULT_ACCURACY_FLOOR = 0.8

#: MLPerf v0.5 Server minimum query count for image models, and the minimum run length.
COMPLIANCE_SERVER_QUERIES = 270_336
COMPLIANCE_OFFLINE_SAMPLES = 24_576
COMPLIANCE_DURATION_S = 60.0
#: Enough Server queries for LoadGen's early-stopping check at p99 with a few late queries
#: (459 are needed with none late; see reference/feasibility.md).
SEARCH_SERVER_QUERIES = 600


def default_cache_dir() -> Path:
    """Where built models, precision variants and engines are cached unless a run says:
    `$XDG_CACHE_HOME/batch-tuner` (`~/.cache/batch-tuner`). The one default of every config
    and CLI, so a model built by `harness run` is found by `tuner optimize`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "batch-tuner"


def check_int(key: str, value: object, minimum: int) -> int:
    """`value` as an int >= `minimum`, or a ConfigError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key}: must be an integer >= {minimum}, got {value}")
    return value


def check_float(key: str, value: object, low: float, high: float = math.inf) -> float:
    """`value` as a finite float in the open interval (low, high), or a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and low < v < high):
        where = f"> {low:g}" if high == math.inf else f"between {low:g} and {high:g} (exclusive)"
        raise ConfigError(f"{key}: must be {where}, got {value!r}")
    return v


def check_choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r} (valid: {', '.join(choices)})")
    return str(value)


def _check_table(key: str, value: object) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be a table of NAME = value, got {value!r}")
    for name in value:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{key}: names must be non-empty strings, got {name!r}")
    return value


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_dims(key: str, value: object) -> dict[str, int]:
    """Symbolic dimension name -> size (>= 1), e.g. {"sequence": 128}."""
    return {name: check_int(f"{key}.{name}", v, 1) for name, v in _check_table(key, value).items()}


def check_shapes(key: str, value: object) -> dict[str, tuple[int, ...]]:
    """Input name -> the sizes of its non-batch axes, e.g. {"input_ids": (128,)}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, dims in _check_table(key, value).items():
        if not isinstance(dims, (list, tuple)):
            raise ConfigError(f"{key}.{name}: must be a list of sizes, got {dims!r}")
        shapes[name] = tuple(check_int(f"{key}.{name}", d, 1) for d in dims)
    return shapes


def check_ranges(key: str, value: object) -> dict[str, tuple[float, float]]:
    """Input name -> (low, high), both inclusive, low <= high: the synthetic values' range."""
    ranges: dict[str, tuple[float, float]] = {}
    for name, pair in _check_table(key, value).items():
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(map(_finite, pair))):
            raise ConfigError(f"{key}.{name}: must be [low, high], got {pair!r}")
        low, high = float(pair[0]), float(pair[1])
        if low > high:
            raise ConfigError(f"{key}.{name}: low {low:g} is above high {high:g}")
        ranges[name] = (low, high)
    return ranges


@dataclass(frozen=True)
class RunConfig:
    """One configuration of one model on one backend and device."""

    model: str = "resnet50"
    backend: str = "onnxruntime"
    precision: str = "fp32"
    batch_size: int = 1
    streams: int = 1
    device: str = "cpu"
    #: Intra-op threads per stream; None splits the machine's cores among the streams.
    threads: int | None = None
    #: How long the batcher waits to fill a batch once it holds a first sample (Server).
    deque_timeout_us: int = 2000
    #: Number of samples in the QSL; None sizes it from the model's input bytes.
    samples: int | None = None
    data_dir: Path | None = None
    seed: int = 0
    #: Sizes of the model's symbolic non-batch dims, by dim name (`--dim sequence=128`).
    dims: Mapping[str, int] = field(default_factory=dict)
    #: Non-batch sizes of one input, by input name, for dims without a name (`--shape`).
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    #: Synthetic values of an input drawn within [low, high] (`--input-range`); integer inputs
    #: that index a table default to its rows (harness.models.graph).
    input_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: Samples compared against fp32 for the precision-agreement check.
    agreement_samples: int = 32
    #: How a variant is compared with fp32 (ACCURACY_METRICS), and on which output (None: the
    #: first).
    accuracy_metric: str = "auto"
    accuracy_output: str | None = None
    #: The least agreement with fp32 that makes the variant's measurement usable: under it, a
    #: warning (harness run) or an infeasible trial (the tuner).
    accuracy_floor: float = DEFAULT_ACCURACY_FLOOR
    cache_dir: Path = field(default_factory=default_cache_dir)
    #: Backend-specific settings (e.g. the null backend's latency model).
    backend_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(
                f"model: must be a built-in name or an ONNX path, got {self.model!r}"
            )
        check_choice("precision", self.precision, PRECISIONS)
        check_int("batch_size", self.batch_size, 1)
        check_int("streams", self.streams, 1)
        if self.threads is not None:
            check_int("threads", self.threads, 1)
        check_int("deque_timeout_us", self.deque_timeout_us, 0)
        if self.samples is not None:
            check_int("samples", self.samples, 1)
        check_int("seed", self.seed, 0)
        object.__setattr__(self, "dims", check_dims("dims", self.dims))
        object.__setattr__(self, "shapes", check_shapes("shapes", self.shapes))
        object.__setattr__(self, "input_ranges", check_ranges("input_ranges", self.input_ranges))
        check_int("agreement_samples", self.agreement_samples, 0)
        check_choice("accuracy_metric", self.accuracy_metric, ACCURACY_METRICS)
        check_float("accuracy_floor", self.accuracy_floor, -1e-9, 1.0 + 1e-9)
        if self.accuracy_output is not None and not (
            isinstance(self.accuracy_output, str) and self.accuracy_output
        ):
            raise ConfigError(
                f"accuracy_output: must be an output name, got {self.accuracy_output!r}"
            )


@dataclass(frozen=True)
class ScenarioSpec:
    """How LoadGen measures: the scenario, run lengths and, for Server, the latency bound."""

    scenario: str = "offline"
    #: LoadGen's min_duration for each run, in seconds.
    duration_s: float = 5.0
    #: Server: run at this QPS (None with find_max_qps searches for the largest VALID one).
    target_qps: float | None = None
    find_max_qps: bool = False
    latency_ms: float = 15.0
    percentile: float = 99.0
    #: Server: LoadGen's min_query_count (None: 600 for searching, 270,336 with compliance).
    min_queries: int | None = None
    #: MLPerf-length runs (60 s, 270,336 Server queries, 24,576 Offline samples).
    compliance: bool = False
    #: Offline: LoadGen's offline_expected_qps (None: estimated from a warm-up).
    expected_qps: float | None = None
    #: Max-QPS search stops when the VALID/INVALID bracket is this tight (relative).
    qps_tolerance: float = 0.02
    #: Upper bound on LoadGen runs one max-QPS search may make.
    max_search_runs: int = 12
    #: VALID runs a max-QPS search by bracketing needs at its answer before it reports it: the
    #: run that found it and answer_runs - 1 more. Near the edge a run passes or fails by
    #: chance; a target that fails any of them counts as INVALID. More runs cost one run each
    #: and change how often the answer passes again less than a margin below it does
    #: (benchmarks/RESULTS.md). Where early stopping lets runs have late queries the search
    #: goes by their count instead, with its margin built in (`server.late_count_search`).
    answer_runs: int = 2
    #: The search gives up rather than step down to a QPS whose run (min_queries / QPS) would
    #: take longer than this (not applied with compliance).
    max_run_s: float = 60.0
    out_dir: Path = Path("runs")
    #: The score this measurement must be able to reach (a study's best so far); a bound under
    #: it, after its noise margin, stops the measurement there (harness.scenarios.prune).
    prune_below: float | None = None

    def __post_init__(self) -> None:
        check_choice("scenario", self.scenario, SCENARIO_NAMES)
        check_float("duration_s", self.duration_s, 0.0)
        check_float("latency_ms", self.latency_ms, 0.0)
        check_float("percentile", self.percentile, 0.0, 100.0)
        check_float("qps_tolerance", self.qps_tolerance, 0.0, 1.0)
        check_int("max_search_runs", self.max_search_runs, 1)
        check_int("answer_runs", self.answer_runs, 1)
        check_float("max_run_s", self.max_run_s, 0.0)
        if self.target_qps is not None:
            check_float("target_qps", self.target_qps, 0.0)
        if self.expected_qps is not None:
            check_float("expected_qps", self.expected_qps, 0.0)
        if self.min_queries is not None:
            check_int("min_queries", self.min_queries, 1)
        if self.prune_below is not None:
            check_float("prune_below", self.prune_below, 0.0)
        if self.scenario == "offline" and (self.target_qps is not None or self.find_max_qps):
            raise ConfigError("target_qps / find_max_qps: only apply to the server scenario")
        if self.scenario == "server" and self.target_qps is None and not self.find_max_qps:
            raise ConfigError("server scenario: give target_qps or find_max_qps")
        if self.target_qps is not None and self.find_max_qps:
            raise ConfigError("target_qps and find_max_qps: give one, not both")

    @property
    def min_duration_s(self) -> float:
        return max(self.duration_s, COMPLIANCE_DURATION_S) if self.compliance else self.duration_s

    @property
    def server_min_queries(self) -> int:
        if self.min_queries is not None:
            return self.min_queries
        return COMPLIANCE_SERVER_QUERIES if self.compliance else SEARCH_SERVER_QUERIES

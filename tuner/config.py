"""A study's configuration: `studies/*.toml` and command-line flags, validated once into a
frozen `StudyConfig`. Unknown keys and bad values raise ConfigError naming the key.

Layout of a study file (every key optional):

    [study]      name, storage, trials, timeout_s, trial_timeout_s, sampler, seed,
                 objectives ("throughput" or ["throughput", "p99"] for Server), accuracy_floor,
                 accuracy_metric (auto, top1, cosine, relative), accuracy_output,
                 confirm_runs, confirm_top
    [model]      name (built-in or ONNX path), data_dir, samples,
                 dims = {sequence = 128} (symbolic dims by name),
                 shapes = {input_ids = [128]} (an input's non-batch sizes),
                 input_ranges = {token_type_ids = [0, 1]} (synthetic values, inclusive)
    [backend]    name, device, threads, options = {...}
    [scenario]   name, latency_ms, percentile, duration_s, min_queries, answer_runs
    [space]      batch_sizes (list) or max_batch, streams (list) or max_streams,
                 precisions (list), deque_timeout_us (list, Server)
    [[enqueue]]  batch_size, streams, precision, deque_timeout_us: configurations to try first
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness.config import (
    ACCURACY_METRICS,
    PRECISIONS,
    SCENARIO_NAMES,
    ScenarioSpec,
    check_choice,
    check_dims,
    check_float,
    check_int,
    check_ranges,
    check_shapes,
    default_cache_dir,
)
from harness.errors import ConfigError

SAMPLERS = ("tpe", "random", "grid")
OBJECTIVES = ("throughput", "p99")
DEFAULT_STORAGE = "sqlite:///studies/tuner.db"


@dataclass(frozen=True)
class Space:
    """The search space; None means 'derive from the backend's capabilities'."""

    batch_sizes: tuple[int, ...] | None = None
    max_batch: int = 32
    streams: tuple[int, ...] | None = None
    max_streams: int = 2
    precisions: tuple[str, ...] | None = None
    deque_timeout_us: tuple[int, ...] | None = None


@dataclass(frozen=True)
class StudyConfig:
    name: str | None = None
    storage: str = DEFAULT_STORAGE
    trials: int = 12
    timeout_s: float | None = None
    trial_timeout_s: float = 600.0
    sampler: str = "tpe"
    seed: int = 0
    objectives: tuple[str, ...] = ("throughput",)
    #: Least top-1 agreement with fp32 an fp16/int8 variant must keep. The built-in models have
    #: synthetic weights and inputs with small logit margins (int8 agrees on ~80-90% of
    #: samples); with a real model and real data, 0.99 mirrors MLPerf's 99%-of-fp32 rule.
    accuracy_floor: float = 0.8
    #: How fp16/int8 outputs are compared with fp32 (harness.precision.agreement): the floor
    #: applies to this metric's value, on this output (None: the first).
    accuracy_metric: str = "auto"
    accuracy_output: str | None = None
    #: Extra measurements of each of the `confirm_top` best configurations once the budget is
    #: spent; the best median wins (0: the best single run wins).
    confirm_runs: int = 2
    confirm_top: int = 3
    model: str = "resnet50"
    data_dir: Path | None = None
    samples: int | None = None
    #: Symbolic non-batch dims bound by name, an input's non-batch sizes, and the synthetic
    #: values' ranges (harness RunConfig.dims / shapes / input_ranges). Dims and shapes are
    #: part of the study's identity.
    dims: Mapping[str, int] = field(default_factory=dict)
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    input_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    backend: str = "onnxruntime"
    device: str = "cpu"
    threads: int | None = None
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    scenario: str = "offline"
    latency_ms: float = 15.0
    percentile: float = 99.0
    duration_s: float = 2.0
    min_queries: int | None = None
    #: Server: VALID runs each trial's max-QPS search needs at its answer.
    answer_runs: int = ScenarioSpec.answer_runs
    space: Space = Space()
    enqueue: tuple[Mapping[str, Any], ...] = ()
    cache_dir: Path = field(default_factory=default_cache_dir)
    runs_dir: Path = Path("runs")

    def __post_init__(self) -> None:
        check_int("study.trials", self.trials, 1)
        if self.timeout_s is not None:
            check_float("study.timeout_s", self.timeout_s, 0.0)
        check_float("study.trial_timeout_s", self.trial_timeout_s, 0.0)
        check_choice("study.sampler", self.sampler, SAMPLERS)
        check_int("study.seed", self.seed, 0)
        if not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise ConfigError(f"study.objectives: give distinct names, got {self.objectives!r}")
        for name in self.objectives:
            check_choice("study.objectives", name, OBJECTIVES)
        if self.objectives[0] != "throughput":
            raise ConfigError("study.objectives: the first objective must be 'throughput'")
        if self.multi_objective and self.scenario != "server":
            raise ConfigError(
                "study.objectives: p99 is an objective of the server scenario only "
                "(Offline latencies measure the whole query, not a sample)"
            )
        check_float("study.accuracy_floor", self.accuracy_floor, -1e-9, 1.0 + 1e-9)
        check_choice("study.accuracy_metric", self.accuracy_metric, ACCURACY_METRICS)
        if self.accuracy_output is not None and not (
            isinstance(self.accuracy_output, str) and self.accuracy_output
        ):
            raise ConfigError(
                f"study.accuracy_output: must be an output name, got {self.accuracy_output!r}"
            )
        object.__setattr__(self, "dims", check_dims("model.dims", self.dims))
        object.__setattr__(self, "shapes", check_shapes("model.shapes", self.shapes))
        object.__setattr__(
            self, "input_ranges", check_ranges("model.input_ranges", self.input_ranges)
        )
        check_int("study.confirm_runs", self.confirm_runs, 0)
        check_int("study.confirm_top", self.confirm_top, 1)
        check_choice("scenario.name", self.scenario, SCENARIO_NAMES)
        check_float("scenario.latency_ms", self.latency_ms, 0.0)
        check_float("scenario.percentile", self.percentile, 0.0, 100.0)
        check_float("scenario.duration_s", self.duration_s, 0.0)
        if self.min_queries is not None:
            check_int("scenario.min_queries", self.min_queries, 1)
        check_int("scenario.answer_runs", self.answer_runs, 1)
        if self.threads is not None:
            check_int("backend.threads", self.threads, 1)
        if self.samples is not None:
            check_int("model.samples", self.samples, 1)
        _check_space(self.space)
        for i, point in enumerate(self.enqueue):
            _check_point(f"enqueue[{i}]", point)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


# TOML section -> {toml key: StudyConfig field}
_SECTIONS: dict[str, dict[str, str]] = {
    "study": {
        "name": "name",
        "storage": "storage",
        "trials": "trials",
        "timeout_s": "timeout_s",
        "trial_timeout_s": "trial_timeout_s",
        "sampler": "sampler",
        "seed": "seed",
        "objectives": "objectives",
        "accuracy_floor": "accuracy_floor",
        "accuracy_metric": "accuracy_metric",
        "accuracy_output": "accuracy_output",
        "confirm_runs": "confirm_runs",
        "confirm_top": "confirm_top",
    },
    "model": {
        "name": "model",
        "data_dir": "data_dir",
        "samples": "samples",
        "dims": "dims",
        "shapes": "shapes",
        "input_ranges": "input_ranges",
    },
    "backend": {
        "name": "backend",
        "device": "device",
        "threads": "threads",
        "options": "backend_options",
    },
    "scenario": {
        "name": "scenario",
        "latency_ms": "latency_ms",
        "percentile": "percentile",
        "duration_s": "duration_s",
        "min_queries": "min_queries",
        "answer_runs": "answer_runs",
    },
}
_SPACE_KEYS = {f.name for f in fields(Space)}
#: Tables whose flags (--dim, --shape, --input-range) add entries to the study file's.
_MERGED = ("dims", "shapes", "input_ranges")
_POINT_KEYS = ("batch_size", "streams", "precision", "deque_timeout_us")


#: Fields that describe this host, not the study: never stored with it (the storage URL may
#: hold a password).
_LOCAL_FIELDS = ("storage", "cache_dir", "runs_dir")


def to_stored(cfg: StudyConfig) -> dict[str, Any]:
    """The study's configuration as JSON-safe data, for workers that join it later."""
    data = asdict(cfg)
    for key in _LOCAL_FIELDS:
        data.pop(key)
    return json.loads(json.dumps(data, default=str))


def from_stored(data: Mapping[str, Any], **local: Any) -> StudyConfig:
    """A StudyConfig from `to_stored` data plus this host's storage, cache and runs folders."""
    values = dict(data)
    space = values.pop("space", {}) or {}
    space_values = {k: tuple(v) if isinstance(v, list) else v for k, v in space.items()}
    values["space"] = Space(**space_values)  # type: ignore[arg-type]  # checked in StudyConfig
    values["objectives"] = tuple(values.get("objectives", ("throughput",)))
    values["enqueue"] = tuple(values.get("enqueue", ()))
    if values.get("data_dir"):
        values["data_dir"] = Path(values["data_dir"])
    values.update({k: v for k, v in local.items() if v is not None})
    return StudyConfig(**values)


def load_file(path: Path) -> dict[str, Any]:
    """The StudyConfig fields a TOML study file sets (unknown keys rejected)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config: no such study file {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc}") from None
    return from_mapping(data, where=str(path))


def from_mapping(data: Mapping[str, Any], where: str = "study file") -> dict[str, Any]:
    """Translate the nested TOML layout into StudyConfig field values."""
    values: dict[str, Any] = {}
    for section, content in data.items():
        if section == "space":
            values["space"] = _space(_table(content, section, where), where)
        elif section == "enqueue":
            if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
                raise ConfigError(f"{where}: [[enqueue]] must be an array of tables")
            values["enqueue"] = tuple(content)
        elif section in _SECTIONS:
            keys = _SECTIONS[section]
            for key, value in _table(content, section, where).items():
                if key not in keys:
                    valid = ", ".join(keys)
                    raise ConfigError(f"{where}: unknown key {section}.{key} (valid: {valid})")
                values[keys[key]] = _coerce(keys[key], value)
        else:
            valid = ", ".join([*_SECTIONS, "space", "enqueue"])
            raise ConfigError(f"{where}: unknown section [{section}] (valid: {valid})")
    return values


def build(file: Path | None = None, **overrides: Any) -> StudyConfig:
    """StudyConfig from defaults, then the study file, then the flags that were given."""
    values = load_file(file) if file is not None else {}
    space_over = {k: overrides.pop(k) for k in list(overrides) if k in _SPACE_KEYS}
    for key in _MERGED:  # a flag adds to (or replaces one entry of) the file's table
        if overrides.get(key):
            overrides[key] = {**dict(values.get(key) or {}), **dict(overrides[key])}
    values.update({k: _coerce(k, v) for k, v in overrides.items() if v is not None})
    given = {
        k: tuple(v) if isinstance(v, list) else v for k, v in space_over.items() if v is not None
    }
    if given:
        values["space"] = replace(values.get("space", Space()), **given)
    try:
        return StudyConfig(**values)
    except TypeError as exc:  # a wrong type that the checks did not catch
        raise ConfigError(str(exc)) from None


def _table(content: Any, section: str, where: str) -> Mapping[str, Any]:
    if not isinstance(content, dict):
        raise ConfigError(f"{where}: [{section}] must be a table")
    return content


def _space(content: Mapping[str, Any], where: str) -> Space:
    unknown = set(content) - _SPACE_KEYS
    if unknown:
        valid = ", ".join(sorted(_SPACE_KEYS))
        raise ConfigError(f"{where}: unknown key space.{sorted(unknown)[0]} (valid: {valid})")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in content.items()}
    space = Space(**values)  # type: ignore[arg-type]  # checked just below
    _check_space(space)
    return space


def _check_space(space: Space) -> None:
    check_int("space.max_batch", space.max_batch, 1)
    check_int("space.max_streams", space.max_streams, 1)
    for key, minimum in (("batch_sizes", 1), ("streams", 1), ("deque_timeout_us", 0)):
        values = getattr(space, key)
        if values is None:
            continue
        if not isinstance(values, tuple) or not values:
            raise ConfigError(f"space.{key}: must be a non-empty list, got {values!r}")
        for v in values:
            check_int(f"space.{key}", v, minimum)
    if space.precisions is not None:
        if not isinstance(space.precisions, tuple) or not space.precisions:
            raise ConfigError(
                f"space.precisions: must be a non-empty list, got {space.precisions!r}"
            )
        for p in space.precisions:
            check_choice("space.precisions", p, PRECISIONS)


def _check_point(where: str, point: Mapping[str, Any]) -> None:
    unknown = set(point) - set(_POINT_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {sorted(unknown)[0]} (valid: {', '.join(_POINT_KEYS)})"
        )
    if "batch_size" in point:
        check_int(f"{where}.batch_size", point["batch_size"], 1)
    if "streams" in point:
        check_int(f"{where}.streams", point["streams"], 1)
    if "precision" in point:
        check_choice(f"{where}.precision", point["precision"], PRECISIONS)
    if "deque_timeout_us" in point:
        check_int(f"{where}.deque_timeout_us", point["deque_timeout_us"], 0)


def _coerce(key: str, value: Any) -> Any:
    if key in ("data_dir", "cache_dir", "runs_dir") and isinstance(value, str):
        return Path(value)
    if key == "objectives":
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"study.objectives: must be a name or a list, got {value!r}")
        return tuple(value)
    if key == "backend_options" and not isinstance(value, dict):
        raise ConfigError(f"backend.options: must be a table, got {value!r}")
    if key in _MERGED and not isinstance(value, Mapping):
        raise ConfigError(f"model.{key}: must be a table, got {value!r}")
    return value

"""RunConfig and ScenarioSpec: every bad value is a ConfigError naming its key."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from harness.config import (
    COMPLIANCE_DURATION_S,
    COMPLIANCE_SERVER_QUERIES,
    SEARCH_SERVER_QUERIES,
    RunConfig,
    ScenarioSpec,
)
from harness.errors import ConfigError


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_size", 0),
        ("batch_size", -1),
        ("batch_size", 2.5),
        ("batch_size", True),
        ("batch_size", "4"),
        ("streams", 0),
        ("streams", False),
        ("precision", "int4"),
        ("precision", "FP32"),
        ("threads", 0),
        ("deque_timeout_us", -1),
        ("samples", 0),
        ("seed", -1),
        ("agreement_samples", -1),
        ("model", ""),
    ],
)
def test_run_config_rejects(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: ") as info:
        RunConfig(**{key: value})  # type: ignore[arg-type]
    message = str(info.value)
    assert repr(value) in message or str(value) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("key", "lowest"),
    [
        ("batch_size", 1),
        ("streams", 1),
        ("threads", 1),
        ("deque_timeout_us", 0),
        ("samples", 1),
        ("seed", 0),
        ("agreement_samples", 0),
    ],
)
def test_run_config_takes_the_lowest_allowed_value_and_refuses_one_below(
    key: str, lowest: int
) -> None:
    assert getattr(RunConfig(**{key: lowest}), key) == lowest  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=rf"^{key}: must be an integer >= {lowest}, got"):
        RunConfig(**{key: lowest - 1})  # type: ignore[arg-type]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_run_config_takes_every_precision_name(precision: str) -> None:
    # fp16 on a CPU is refused later, by the backend
    assert RunConfig(precision=precision).precision == precision
    with pytest.raises(ConfigError, match="precision"):
        RunConfig(precision=precision.upper())


def test_run_config_normalises_its_tables() -> None:
    """Lists from TOML or flags become tuples, range bounds floats, and the config keeps its
    own copy of each table."""
    dims = {"sequence": 128}
    run = RunConfig(
        dims=dims,
        shapes={"input_ids": [128], "mask": (1, 128)},
        input_ranges={"ids": [0, 5], "x": (-1.5, 2)},
    )
    assert run.shapes == {"input_ids": (128,), "mask": (1, 128)}  # [128] != (128,)
    assert run.input_ranges == {"ids": (0.0, 5.0), "x": (-1.5, 2.0)}
    assert all(type(v) is float for pair in run.input_ranges.values() for v in pair)
    dims["sequence"] = 1
    assert run.dims == {"sequence": 128}
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.batch_size = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("key", "kwargs"),
    [
        ("scenario", {"scenario": "singlestream"}),
        ("percentile", {"percentile": 0}),
        ("percentile", {"percentile": 100}),
        ("percentile", {"percentile": 101}),
        ("percentile", {"percentile": float("nan")}),
        ("latency_ms", {"latency_ms": 0}),
        ("latency_ms", {"latency_ms": -1}),
        ("latency_ms", {"latency_ms": float("inf")}),
        ("duration_s", {"duration_s": 0}),
        ("duration_s", {"duration_s": "5"}),
        ("qps_tolerance", {"qps_tolerance": 1}),
        ("max_search_runs", {"max_search_runs": 0}),
        ("answer_runs", {"answer_runs": 0}),
        ("max_run_s", {"max_run_s": 0}),
        ("min_queries", {"min_queries": 0}),
        ("expected_qps", {"expected_qps": 0}),
        ("target_qps", {"scenario": "server", "target_qps": 0}),
        ("target_qps", {"scenario": "server"}),
        ("target_qps", {"scenario": "offline", "target_qps": 100.0}),
        ("find_max_qps", {"scenario": "offline", "find_max_qps": True}),
        ("find_max_qps", {"scenario": "server", "target_qps": 100.0, "find_max_qps": True}),
    ],
)
def test_scenario_spec_rejects(key: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        ScenarioSpec(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "min_duration_s", "server_min_queries"),
    [
        ({}, 5.0, 600),
        ({"scenario": "server", "target_qps": 0.5}, 5.0, 600),
        (
            {"scenario": "server", "find_max_qps": True, "percentile": 99.9, "latency_ms": 0.1},
            5,
            600,
        ),
        ({"duration_s": 0.01, "percentile": 50, "min_queries": 1, "expected_qps": 10}, 0.01, 1),
        ({"compliance": True, "qps_tolerance": 0.5, "max_search_runs": 1}, 60.0, 270_336),
        ({"compliance": True, "duration_s": 90.0, "min_queries": 1000}, 90.0, 1000),
    ],
)
def test_scenario_spec_accepts_and_derives_the_run_lengths(
    kwargs: dict[str, Any], min_duration_s: float, server_min_queries: int
) -> None:
    """What LoadGen is given: the hand-computed run lengths for each accepted spec."""
    spec = ScenarioSpec(**kwargs)
    assert spec.min_duration_s == min_duration_s
    assert spec.server_min_queries == server_min_queries


def test_defaults_use_search_length_runs() -> None:
    spec = ScenarioSpec(scenario="server", find_max_qps=True, duration_s=2.0)
    assert spec.server_min_queries == SEARCH_SERVER_QUERIES == 600
    assert spec.min_duration_s == 2.0


def test_compliance_switches_to_mlperf_lengths() -> None:
    spec = ScenarioSpec(scenario="server", target_qps=100.0, duration_s=2.0, compliance=True)
    assert spec.server_min_queries == COMPLIANCE_SERVER_QUERIES == 270_336
    assert spec.min_duration_s == COMPLIANCE_DURATION_S == 60.0
    longer = ScenarioSpec(duration_s=90.0, compliance=True)
    assert longer.min_duration_s == 90.0


def test_explicit_min_queries_wins_over_both_defaults() -> None:
    assert ScenarioSpec(min_queries=1000).server_min_queries == 1000
    assert ScenarioSpec(min_queries=1000, compliance=True).server_min_queries == 1000

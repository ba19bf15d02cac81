"""Measure one inference configuration (batch size, streams, precision) of one model on one
device with the real MLPerf LoadGen, Offline or Server. Knows nothing of Optuna."""

from __future__ import annotations

from harness.config import RunConfig, ScenarioSpec
from harness.errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    ModelError,
    OutOfMemory,
    ScenarioError,
    TunerError,
)
from harness.result import Result
from harness.runner import measure

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ConfigError",
    "ModelError",
    "OutOfMemory",
    "Result",
    "RunConfig",
    "ScenarioError",
    "ScenarioSpec",
    "TunerError",
    "measure",
]

"""A deterministic simulated backend (MLPerf's `backend_null`): a batch of n samples takes
`latency_ms + per_sample_ms * n`, divided by the precision's speed-up, optionally jittered, on
at most `capacity` concurrent batches. It runs no model and its results are labelled simulated.

Its device is "cpu", "cuda" or "cuda:N", all simulated (no GPU is touched): a stand-in for a GPU
backend in tests of the multi-GPU orchestration. `device_name` (e.g. "Tesla T4") names the GPU
model it stands in for, so simulated GPUs of different models make different studies.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from harness.backends.base import Backend, BackendInfo, BackendOptions
from harness.config import PRECISIONS
from harness.device import read_device
from harness.errors import BackendError, ConfigError, OutOfMemory

DEFAULT_SPEEDUP = {"fp32": 1.0, "fp16": 2.0, "bf16": 2.0, "int8": 3.0}


class NullBackend(Backend):
    """Sleeps for a modelled latency; never reads the model file."""

    name: ClassVar[str] = "null"
    option_names: ClassVar[tuple[str, ...]] = (
        "latency_ms",
        "per_sample_ms",
        "jitter",
        "speedup",
        "oom_batch",
        "capacity",
        "fail_after_batches",
        "crash_at_batch",
        "hang_at_batch",
        "seed",
        "device_name",
    )

    def __init__(self, model_path: object, options: BackendOptions) -> None:
        super().__init__(model_path, options)  # type: ignore[arg-type]
        _check_device(options.device)
        extra = options.extra
        name = extra.get("device_name", "")
        if not isinstance(name, str):
            raise ConfigError(f"backend null: device_name must be a string, got {name!r}")
        self.device_name = name
        self.latency_ms = _non_negative(extra, "latency_ms", 1.0)
        self.per_sample_ms = _non_negative(extra, "per_sample_ms", 0.1)
        self.jitter = _non_negative(extra, "jitter", 0.0)
        self.speedup = _speedup(extra.get("speedup", {}), options.precision)
        self.oom_batch = _optional_int(extra, "oom_batch", 0)
        capacity = _optional_int(extra, "capacity", 1)
        self._capacity = threading.BoundedSemaphore(capacity) if capacity else None
        self.fail_after_batches = _optional_int(extra, "fail_after_batches", 0)
        _optional_int(extra, "crash_at_batch", 1)
        _optional_int(extra, "hang_at_batch", 1)
        self._seed = _optional_int(extra, "seed", 0) or 0
        self._rngs: list[np.random.Generator] = []
        self._batches = 0
        self._lock = threading.Lock()
        self._output = np.zeros((0, 1), np.float32)

    @classmethod
    def precisions(cls, device: str) -> tuple[str, ...]:
        _check_device(device)
        return PRECISIONS

    def load(self) -> None:
        """Allocate the outputs; simulate out-of-memory, a native crash or a hang on request
        (options keyed on the batch size, so a study sees some configurations fail)."""
        crash, hang = (
            self.options.extra.get("crash_at_batch"),
            self.options.extra.get("hang_at_batch"),
        )
        if crash is not None and self.options.max_batch >= int(crash):
            os.abort()  # what a segfaulting native runtime looks like to the parent
        if hang is not None and self.options.max_batch >= int(hang):
            while True:  # a hung device: only a timeout ends this
                time.sleep(3600)
        if self.oom_batch is not None and self.options.max_batch > int(self.oom_batch):
            raise OutOfMemory(
                f"out of memory: batch {self.options.max_batch} exceeds the simulated "
                f"limit of {self.oom_batch}"
            )
        self._rngs = [np.random.default_rng([self._seed, s]) for s in range(self.options.streams)]
        self._output = np.zeros((self.options.max_batch, 1), np.float32)

    def batch_seconds(self, n: int, stream: int = 0) -> float:
        """The modelled time of a batch of `n` samples (with jitter drawn for `stream`)."""
        seconds = (self.latency_ms + self.per_sample_ms * n) / 1000.0 / self.speedup
        if self.jitter:
            seconds *= max(0.0, 1.0 + self.jitter * float(self._rngs[stream].standard_normal()))
        return seconds

    def _infer(self, inputs: Mapping[str, np.ndarray], stream: int) -> list[np.ndarray]:
        n = len(next(iter(inputs.values())))
        if self.fail_after_batches is not None:
            with self._lock:
                self._batches += 1
                if self._batches > int(self.fail_after_batches):
                    raise BackendError(
                        f"simulated failure after {self.fail_after_batches} batches"
                    )
        seconds = self.batch_seconds(n, stream)
        if seconds > 0:
            if self._capacity is None:
                time.sleep(seconds)
            else:
                with self._capacity:
                    time.sleep(seconds)
        return [self._output[:n]]

    def close(self) -> None:
        self._rngs = []

    def info(self) -> BackendInfo:
        return BackendInfo(
            backend=self.name,
            device=f"simulated {self.device_name} ({self.options.device})"
            if self.device_name
            else f"simulated ({self.options.device})",
            versions={"null": "1"},
            simulated=True,
            details={
                "latency_ms": self.latency_ms,
                "per_sample_ms": self.per_sample_ms,
                "jitter": self.jitter,
                "speedup": self.speedup,
            },
        )


def _check_device(device: str) -> None:
    """cpu, cuda or cuda:N: the devices the simulation stands in for."""
    if read_device(device) is None:
        raise ConfigError(
            f"backend null: device must be cpu, cuda or cuda:N (simulated), got {device!r}"
        )


def _non_negative(extra: Mapping[str, object], key: str, default: float) -> float:
    value = extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"backend null: {key} must be a number >= 0, got {value!r}")
    return float(value)


def _optional_int(extra: Mapping[str, object], key: str, minimum: int) -> int | None:
    value = extra.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"backend null: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _speedup(value: object, precision: str) -> float:
    """The speed-up of `precision`: DEFAULT_SPEEDUP overridden by a {precision: factor} map."""
    if not isinstance(value, Mapping):
        raise ConfigError(
            f'backend null: speedup must map precisions to factors, e.g. {{"int8": 3}}, '
            f"got {value!r}"
        )
    for key, factor in value.items():
        if key not in DEFAULT_SPEEDUP:
            raise ConfigError(
                f"backend null: speedup key {key!r} is not one of {', '.join(DEFAULT_SPEEDUP)}"
            )
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
            raise ConfigError(f"backend null: speedup {key} must be a number > 0, got {factor!r}")
    return float({**DEFAULT_SPEEDUP, **value}[precision])

"""The backend contract, shaped like Polygraphy's runners: a cheap constructor, `load()` does
the expensive work (session, engine, contexts, streams), `infer()` runs one batch on one
stream, `close()` frees it all; a context manager wraps load/close.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from harness.device import cpu_count
from harness.errors import ConfigError


@dataclass(frozen=True)
class BackendOptions:
    """What a backend needs to know beyond the model file."""

    precision: str = "fp32"
    max_batch: int = 1
    streams: int = 1
    device: str = "cpu"
    #: Intra-op threads per stream; None lets the backend split the cores among the streams.
    threads: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: Where a backend keeps what it builds (engines, timing caches); the run's cache folder.
    cache_dir: Path | None = None
    #: The model's symbolic non-batch dims bound by name, and per input (RunConfig.dims,
    #: RunConfig.shapes): a backend that sizes its engine (TensorRT's optimization profile)
    #: reads the model through harness.models.inspect_model with them.
    dims: Mapping[str, int] = field(default_factory=dict)
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendInfo:
    """Who measured: backend, device name, library versions; `simulated` for test backends."""

    backend: str
    device: str
    versions: Mapping[str, str]
    simulated: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "device": self.device,
            "versions": dict(self.versions),
            "simulated": self.simulated,
            "details": dict(self.details),
        }


class Backend(abc.ABC):
    """One model on one device, run by `streams` concurrent workers."""

    name: ClassVar[str]
    #: Extra options this backend accepts in `BackendOptions.extra`.
    option_names: ClassVar[tuple[str, ...]] = ()
    #: True when the backend runs every precision from the fp32 model, casting it itself
    #: (torch), instead of loading the precision's ONNX variant (harness.precision).
    casts_precision: ClassVar[bool] = False

    def __init__(self, model_path: Path, options: BackendOptions) -> None:
        unknown = sorted(set(options.extra) - set(self.option_names))
        if unknown:
            valid = ", ".join(self.option_names) or "none"
            raise ConfigError(f"backend {self.name}: unknown option(s) {unknown} (valid: {valid})")
        self.model_path = model_path
        self.options = options

    @classmethod
    @abc.abstractmethod
    def precisions(cls, device: str) -> tuple[str, ...]:
        """The precisions this backend runs on `device` (ConfigError for a bad device)."""

    @abc.abstractmethod
    def load(self) -> None:
        """Build or load the engine and allocate per-stream resources."""

    @abc.abstractmethod
    def infer(self, inputs: Mapping[str, np.ndarray], stream: int) -> list[np.ndarray]:
        """Run one batch on stream `stream` (0 <= stream < options.streams); thread-safe across
        distinct streams."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free everything `load()` allocated; safe to call twice."""

    @abc.abstractmethod
    def info(self) -> BackendInfo:
        """Backend, device and versions (cheap; valid before and after `load()`)."""

    def __enter__(self) -> Backend:
        self.load()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def check_precision(backend: type[Backend], precision: str, device: str) -> None:
    """ConfigError unless `backend` can run `precision` on `device`."""
    supported = backend.precisions(device)
    if precision not in supported:
        raise ConfigError(
            f"precision: {precision} is not supported by backend {backend.name} on {device} "
            f"(supported: {', '.join(supported)})"
        )


def threads_per_stream(options: BackendOptions, on_cpu: bool) -> int:
    """Intra-op threads of each stream: `options.threads` where given, else the CPU's cores
    split among the streams (1 when the work runs on an accelerator)."""
    if options.threads is not None:
        return options.threads
    if not on_cpu:
        return 1
    return max(1, cpu_count() // options.streams)

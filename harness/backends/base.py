"""The backend contract, shaped like Polygraphy's runners: a cheap constructor, `load()` does
the expensive work (session, engine, contexts, streams), `infer()` runs one batch on one
stream, `close()` frees it all; a context manager wraps load/close.

`infer()` is final: it calls the backend's own `_infer()` and maps what the runtime raises
onto the project's errors once for every backend (`backend_error`: out of memory becomes
`OutOfMemory`, anything else `BackendError` naming the backend), as Polygraphy's `infer()`
wraps each runner's `infer_impl()`.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, final

import numpy as np

from harness.device import cpu_count
from harness.errors import BackendError, ConfigError, OutOfMemory, TunerError
from harness.models.info import TensorSpec

_OOM = re.compile(
    r"out of memory|out_of_memory|outofmemory|memoryallocation|could not be allocated"
    r"|not (be )?enough (free )?memory|insufficient (device )?memory|bad_alloc",
    re.IGNORECASE,
)


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

    @classmethod
    def precision_note(cls, precision: str, device: str) -> str:
        """Why `precision` is not among `precisions(device)` where the reason is this machine
        (a CPU flag it lacks), for the message that refuses it; "" otherwise."""
        return ""

    @abc.abstractmethod
    def load(self) -> None:
        """Build or load the engine and allocate per-stream resources."""

    @final
    def infer(self, inputs: Mapping[str, np.ndarray], stream: int) -> list[np.ndarray]:
        """Run one batch on stream `stream` (0 <= stream < options.streams); thread-safe across
        distinct streams. What the runtime raises comes back as OutOfMemory or BackendError
        (`backend_error`); the project's own errors pass through unchanged."""
        try:
            return self._infer(inputs, stream)
        except TunerError:
            raise
        except Exception as exc:  # each runtime raises its own types
            what = f"inference failed on stream {stream}"
            raise backend_error(self.name, what, exc, self._error_log()) from exc

    @abc.abstractmethod
    def _infer(self, inputs: Mapping[str, np.ndarray], stream: int) -> list[np.ndarray]:
        """The backend's own inference of one batch on one stream; it raises what its runtime
        raises, which `infer()` maps."""

    def _error_log(self) -> Sequence[str]:
        """The runtime's latest error lines, read when inference fails (TensorRT logs the cause
        of a failure, out of memory included, rather than raising it); none by default."""
        return ()

    @abc.abstractmethod
    def close(self) -> None:
        """Free everything `load()` allocated; safe to call twice."""

    def serves(self, options: BackendOptions) -> bool:
        """Whether this backend, loaded, runs `options` as it is: the next measurement then
        keeps it instead of loading another (harness.warm). Only a change that measures the
        same as a fresh load may say yes; by default only identical options do."""
        return options == self.options

    @final
    def retarget(self, options: BackendOptions) -> None:
        """Run `options` from now on without reloading (`serves(options)` must hold)."""
        if not self.serves(options):
            raise ValueError(f"backend {self.name}: loaded for {self.options}, not {options}")
        self.options = options

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
        note = backend.precision_note(precision, device)
        raise ConfigError(
            f"precision: {precision} is not supported by backend {backend.name} on {device} "
            f"(supported: {', '.join(supported)}){': ' + note if note else ''}"
        )


def threads_per_stream(options: BackendOptions, on_cpu: bool) -> int:
    """Intra-op threads of each stream: `options.threads` where given, else the CPU's cores
    split among the streams (1 when the work runs on an accelerator)."""
    if options.threads is not None:
        return options.threads
    if not on_cpu:
        return 1
    return max(1, cpu_count() // options.streams)


def batch_size(specs: Mapping[str, TensorSpec], inputs: Mapping[str, np.ndarray]) -> int:
    """How many samples a feed holds: the size of the first batched input's batch axis (an
    input the specs do not name counts as batched on axis 0)."""
    for name, value in inputs.items():
        spec = specs.get(name)
        axis = 0 if spec is None else spec.batch_axis
        if axis is not None and np.ndim(value) > axis:
            return int(np.shape(value)[axis])
    return 1


def is_out_of_memory(text: str) -> bool:
    """Whether a runtime's message says the device (or host) ran out of memory."""
    return bool(_OOM.search(text))


def backend_error(
    backend: str, what: str, exc: BaseException | None = None, log: Iterable[str] = ()
) -> BackendError:
    """The project's error for `backend`'s failure at `what`: OutOfMemory when `exc` (a
    MemoryError of any module, or its text) or one of the runtime's error `log` lines says
    memory ran out; BackendError otherwise. One line, naming the backend."""
    lines = list(log)
    text = one_line(exc) if exc is not None else (lines[-1] if lines else "no detail")
    oom = exc is not None and (type(exc).__name__ == "MemoryError" or isinstance(exc, MemoryError))
    oom = oom or is_out_of_memory(text) or any(is_out_of_memory(line) for line in lines)
    if oom:
        detail = next((line for line in lines if is_out_of_memory(line)), text)
        return OutOfMemory(f"out of memory: {backend}: {what}: {one_line(detail)}")
    return BackendError(f"{backend}: {what}: {text}")


def one_line(value: object) -> str:
    """`value`'s text on one line (whitespace collapsed), at most 300 characters."""
    text = " ".join(str(value).split()) or type(value).__name__
    return text if len(text) <= 300 else text[:297] + "..."

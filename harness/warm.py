"""What one measurement loads, kept for the next one in the same process (a warm trial worker,
tuner.child.WarmWorker): the model with its samples, each precision variant, the loaded
backends and each variant's agreement with fp32.

A backend is kept only where the next configuration measures the same as on a fresh load
(`Backend.serves`: an ONNX Runtime session takes any batch size and any stream count with the
same intra-op threads; other backends only identical options). At most `max_backends` stay
loaded, the least recently used closed first. A backend whose measurement failed is closed,
never kept. `Warm(max_backends=0)` keeps nothing: what `harness.measure` does on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from harness.backends.base import Backend, BackendOptions
from harness.config import RunConfig
from harness.dataset import InputRange, SampleSet
from harness.models import ModelInfo
from harness.precision import Agreement, Variant

log = logging.getLogger("harness")

#: Loaded backends a warm worker keeps by default: the default CPU study's precisions (fp32,
#: int8) times its thread layouts (1 stream of all cores, 2 streams of half).
MAX_BACKENDS = 4

Inputs = tuple[ModelInfo, dict[str, InputRange], SampleSet]
T = TypeVar("T")


class Warm:
    """The per-process cache of a measurement's loads (see the module docstring)."""

    def __init__(self, max_backends: int = MAX_BACKENDS) -> None:
        self.max_backends = max_backends
        self._inputs: dict[Hashable, Inputs] = {}
        self._variants: dict[Hashable, Variant] = {}
        self._agreements: dict[Hashable, Agreement] = {}
        #: Loaded backends not in use, least recently used first.
        self._idle: list[Backend] = []
        #: How many measurements reused a loaded backend, and how many loaded one.
        self.reused = 0
        self.loaded = 0

    def inputs(self, key: Hashable, make: Callable[[], Inputs]) -> Inputs:
        """The model, its inputs' ranges and its samples for `key` (made once)."""
        return self._once(self._inputs, key, make)

    def variant(self, key: Hashable, make: Callable[[], Variant]) -> Variant:
        """The precision variant for `key`; made (built or found in the cache folder) once,
        then reported as cached: a later measurement built nothing."""
        known = self._variants.get(key)
        if known is not None:
            return replace(known, cached=True, build_seconds=0.0)
        return self._once(self._variants, key, make)

    def agreement(self, key: Hashable, measure: Callable[[], Agreement]) -> Agreement:
        """A variant's agreement with fp32, measured once per `key` (variant, backend,
        device, metric, samples): it does not depend on batch size or streams."""
        if key in self._agreements:
            log.info("agreement with fp32: measured earlier in this worker for this variant")
        return self._once(self._agreements, key, measure)

    def _once(self, known: dict[Hashable, T], key: Hashable, make: Callable[[], T]) -> T:
        """`known[key]`, made on first use; made every time when this keeps nothing."""
        if self.max_backends == 0:
            return make()
        if key not in known:
            known[key] = make()
        return known[key]

    def backend(
        self, backend_cls: type[Backend], path: Path, options: BackendOptions
    ) -> tuple[Backend, bool]:
        """A loaded backend for `options` and whether it was kept from an earlier
        measurement; hand it back with `release` when done."""
        for index, backend in enumerate(self._idle):
            same = type(backend) is backend_cls and backend.model_path == path
            if same and backend.serves(options):
                del self._idle[index]
                backend.retarget(options)
                self.reused += 1
                return backend, True
        backend = backend_cls(path, options)
        try:
            backend.load()
        except BaseException:
            backend.close()
            raise
        self.loaded += 1
        return backend, False

    def release(self, backend: Backend, ok: bool) -> None:
        """Keep `backend` for the next measurement, or close it: when its measurement failed,
        or when nothing is kept. Beyond `max_backends` the least recently used is closed."""
        if not ok or self.max_backends == 0:
            backend.close()
            return
        self._idle.append(backend)
        while len(self._idle) > self.max_backends:
            self._idle.pop(0).close()

    def close(self) -> None:
        """Close every kept backend and forget everything."""
        idle, self._idle = self._idle, []
        for backend in idle:
            backend.close()
        self._inputs.clear()
        self._variants.clear()
        self._agreements.clear()


def inputs_key(run: RunConfig) -> Hashable:
    """What the model, its ranges and its samples depend on."""
    return (
        run.model,
        str(run.cache_dir),
        _frozen(run.dims),
        _frozen(run.shapes),
        _frozen(run.input_ranges),
        str(run.data_dir),
        run.samples,
        run.seed,
        run.accuracy_output,
    )


def _frozen(mapping: Any) -> Hashable:
    return tuple(sorted((str(k), repr(v)) for k, v in dict(mapping or {}).items()))

"""OpenVINO on the CPU: one compiled model whose `streams` CPU streams run the stream workers'
infer requests in parallel, one request per worker (OpenVINO's own throughput layout: a
stream is a group of cores pinned to it; `ov::num_streams` bounds how many requests run at
once). The model is reshaped to the batch before it is compiled (`batch_shape`): `static`,
the batch itself, smaller batches padded up to it (OpenVINO plans kernels for one shape); or
`dynamic`, a batch axis bounded 1..batch (no padding, kernels chosen per shape at run time).

Precisions: fp32 and the int8 Q/DQ variant (its low-precision transformations run the int8
kernels), both with f32 as the inference precision, so nothing is silently lowered; bf16 is
the fp32 model run with bf16 as the inference precision hint, offered only where the CPU has
bf16 instructions (avx512_bf16 or AMX). Compiled models are cached in the run's cache folder
(OpenVINO's `CACHE_DIR`).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.backends.base import (
    Backend,
    BackendInfo,
    BackendOptions,
    backend_error,
    batch_size,
    threads_per_stream,
)
from harness.device import cpu_flags, cpu_name, parse_device
from harness.errors import BackendUnavailable, ConfigError, ModelUnreadable, OutOfMemory
from harness.models import TensorSpec, inspect_model

#: The CPU flags whose instructions run OpenVINO's bf16 kernels (any one of them).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
BATCH_SHAPES = ("static", "dynamic")
#: Which one a run uses unless `batch_shape` says: the one that measured faster
#: (benchmarks/RESULTS.md, "OpenVINO: static or dynamic batch").
DEFAULT_BATCH_SHAPE = "static"
EXTRA_HINT = "pip install openvino; a dependency of batch-tuner"
_INFERENCE_PRECISION = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}


def has_bf16(flags: list[str] | None = None) -> bool:
    """Whether the CPU (these /proc/cpuinfo flags, this machine's when None) runs bf16."""
    found = (cpu_flags() if flags is None else flags) or []
    return any(f in found for f in BF16_FLAGS)


def installed() -> bool:
    """Whether the `openvino` package is installed (without importing it)."""
    return _version() is not None


class OpenVinoBackend(Backend):
    """One CompiledModel on the CPU; stream worker `i` owns infer request `i`."""

    name: ClassVar[str] = "openvino"
    option_names: ClassVar[tuple[str, ...]] = ("batch_shape",)

    def __init__(self, model_path: Path, options: BackendOptions) -> None:
        super().__init__(model_path, options)
        _check_cpu(options.device)
        self.batch_shape = str(options.extra.get("batch_shape", DEFAULT_BATCH_SHAPE))
        if self.batch_shape not in BATCH_SHAPES:
            raise ConfigError(
                f"backend openvino: batch_shape {self.batch_shape!r} not in {list(BATCH_SHAPES)}"
            )
        self._compiled: Any = None
        self._requests: list[Any] = []
        self._outputs = 0
        self._padded: list[dict[str, np.ndarray]] = []
        self._specs: dict[str, TensorSpec] = {}
        self._output_specs: list[TensorSpec] = []
        self._details: dict[str, Any] = {}

    @classmethod
    def precisions(cls, device: str) -> tuple[str, ...]:
        _check_cpu(device)
        return ("fp32", "bf16", "int8") if has_bf16() else ("fp32", "int8")

    @classmethod
    def precision_note(cls, precision: str, device: str) -> str:
        if precision == "bf16" and not has_bf16():
            return (
                f"bf16 needs one of the CPU flags {', '.join(BF16_FLAGS)}, which "
                f"{cpu_name()} lacks"
            )
        return ""

    def total_threads(self) -> int:
        """Inference threads of the compiled model: each stream's share, times the streams."""
        return threads_per_stream(self.options, on_cpu=True) * self.options.streams

    def load(self) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendUnavailable(f"backend openvino: not installed ({EXTRA_HINT})") from exc
        self._release()
        core = ov.Core()
        try:
            model = core.read_model(str(self.model_path))
        except Exception as exc:  # OpenVINO raises RuntimeError with the frontend's message
            error = backend_error(self.name, f"cannot read {self.model_path.name}", exc)
            if isinstance(error, OutOfMemory):
                raise error from exc
            # The file itself is refused (an op its frontend cannot convert), whatever the
            # batch or streams: a study stops proposing this runtime for this file.
            raise ModelUnreadable(self.name, str(error)) from exc
        model_info = inspect_model(
            self.model_path, dims=self.options.dims, shapes=self.options.shapes
        )
        batch = self.options.max_batch
        first: Any = batch if self.batch_shape == "static" else ov.Dimension(1, batch)
        shapes = {t.name: ov.PartialShape(_with_batch(t, first)) for t in model_info.inputs}
        self._specs = {t.name: t for t in model_info.inputs}
        self._output_specs = list(model_info.outputs)
        config: dict[str, Any] = {
            "NUM_STREAMS": str(self.options.streams),
            "INFERENCE_NUM_THREADS": str(self.total_threads()),
            "INFERENCE_PRECISION_HINT": _INFERENCE_PRECISION[self.options.precision],
        }
        if self.options.cache_dir is not None:
            cache = self.options.cache_dir / "openvino"
            cache.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache)
        try:
            model.reshape(shapes)
            self._compiled = core.compile_model(model, "CPU", config)
            self._requests = [
                self._compiled.create_infer_request() for _ in range(self.options.streams)
            ]
            self._outputs = len(self._compiled.outputs)
        except Exception as exc:  # OpenVINO raises RuntimeError with the plugin's message
            self._release()
            raise backend_error(self.name, f"cannot load {self.model_path.name}", exc) from exc
        if self.batch_shape == "static":  # one padded batch per stream, for short batches
            self._padded = [
                {t.name: np.zeros(t.batch_shape(batch), t.np_dtype) for t in model_info.inputs}
                for _ in range(self.options.streams)
            ]
        self._details = {
            "batch_shape": self.batch_shape,
            "num_streams": int(self._compiled.get_property("NUM_STREAMS")),
            "inference_num_threads": int(self._compiled.get_property("INFERENCE_NUM_THREADS")),
            "inference_precision": self._compiled.get_property(
                "INFERENCE_PRECISION_HINT"
            ).to_string(),
            "loaded_from_cache": bool(self._compiled.get_property("LOADED_FROM_CACHE")),
        }

    def _infer(self, inputs: Mapping[str, np.ndarray], stream: int) -> list[np.ndarray]:
        n = batch_size(self._specs, inputs)
        feed: Mapping[str, np.ndarray] = inputs
        if self._padded and n != self.options.max_batch:
            padded = self._padded[stream]
            for name, value in inputs.items():
                spec = self._specs.get(name)
                if spec is None or spec.batch_axis is None:
                    padded[name] = value
                else:
                    padded[name][_rows(spec.batch_axis, n)] = value
            feed = padded
        result = self._requests[stream].infer(dict(feed), share_inputs=True)
        outputs = [np.asarray(result[i]) for i in range(self._outputs)]
        if feed is not inputs:  # drop the padding's rows
            full = self.options.max_batch
            specs = self._output_specs if len(self._output_specs) == len(outputs) else []
            specs = specs or [TensorSpec(f"out{i}", "float32", ()) for i in range(len(outputs))]
            axes = [spec.axis_of(o.shape, full) for spec, o in zip(specs, outputs, strict=True)]
            outputs = [
                o if axis is None else o[_rows(axis, n)]
                for o, axis in zip(outputs, axes, strict=True)
            ]
        return outputs

    def close(self) -> None:
        self._release()

    def _release(self) -> None:
        self._requests = []
        self._padded = []
        self._compiled = None

    def info(self) -> BackendInfo:
        return BackendInfo(
            backend=self.name,
            device=cpu_name(),
            versions={"openvino": _version() or "not installed"},
            details={
                "batch_shape": self.batch_shape,
                "requests": self.options.streams,
                **self._details,
            },
        )


def _with_batch(spec: TensorSpec, batch: Any) -> list[Any]:
    """The input's dims with `batch` (a size or an OpenVINO Dimension) on its batch axis."""
    dims: list[Any] = list(spec.sample_shape)
    if spec.batch_axis is not None:
        dims.insert(spec.batch_axis, batch)
    return dims


def _rows(axis: int, n: int) -> tuple[slice, ...]:
    """The index of the first `n` samples on `axis`."""
    return (*(slice(None),) * axis, slice(0, n))


def _check_cpu(device: str) -> None:
    if parse_device(device).kind != "cpu":
        raise ConfigError(f"device: backend openvino runs on the CPU only, not {device}")


def _version() -> str | None:
    """The installed openvino's version, None where it is not installed."""
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return None

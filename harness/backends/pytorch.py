"""PyTorch: the model's fp32 ONNX file converted to a `torch.nn.Module` by onnx2torch, run in
eval mode under `torch.inference_mode` on the CPU or one CUDA device.

Precision is a cast here, not an ONNX variant: the module and the float inputs are cast to
fp16 / bf16 on the device, outputs come back as float32. Streams: on CUDA, one
`torch.cuda.Stream` each, with pinned host buffers, non-blocking copies and one synchronize per
batch (optionally a CUDA graph per stream, captured at the full batch size); on the CPU,
threads sharing the module, the cores split among them unless `threads` says otherwise.
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.backends.base import (
    Backend,
    BackendInfo,
    BackendOptions,
    backend_error,
    check_precision,
    one_line,
    threads_per_stream,
)
from harness.device import cpu_name, parse_device
from harness.errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    ModelError,
    ModelUnreadable,
    OutOfMemory,
)

CPU_PRECISIONS = ("fp32",)
CUDA_PRECISIONS = ("fp32", "fp16", "bf16")
EXTRA_HINT = "pip install 'batch-tuner[torch]'"
#: Untimed runs on a side stream before a CUDA graph is captured (lazy kernels, cuDNN search).
GRAPH_WARMUP_RUNS = 3


def _import_torch() -> tuple[Any, Any]:
    """torch and onnx2torch, or BackendUnavailable naming the `torch` extra."""
    try:
        import onnx2torch
        import torch
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend torch needs torch and onnx2torch, which are not installed here "
            f"({exc}); install the torch extra: {EXTRA_HINT}"
        ) from exc
    return torch, onnx2torch


@dataclass
class _Stream:
    """One worker's resources: a CUDA stream (None on the CPU), pinned host buffers, a graph."""

    cuda: Any = None
    pinned_in: dict[str, Any] = field(default_factory=dict)
    pinned_out: list[Any] = field(default_factory=list)
    graph: Any = None
    graph_in: list[Any] = field(default_factory=list)
    graph_out: list[Any] = field(default_factory=list)


class TorchBackend(Backend):
    """One converted module shared by the stream workers (torch releases the GIL in kernels)."""

    name: ClassVar[str] = "torch"
    option_names: ClassVar[tuple[str, ...]] = ("cuda_graphs",)
    #: Takes the fp32 model and casts it itself (no fp16/bf16 ONNX variant wanted).
    casts_precision: ClassVar[bool] = True

    def __init__(self, model_path: Path, options: BackendOptions) -> None:
        super().__init__(model_path, options)
        self.kind, self.device_id = parse_device(options.device)
        self.cuda_graphs = options.extra.get("cuda_graphs", False)
        if not isinstance(self.cuda_graphs, bool):
            raise ConfigError(
                f"backend torch: cuda_graphs must be true or false, got {self.cuda_graphs!r}"
            )
        if self.cuda_graphs and self.kind != "cuda":
            raise ConfigError("backend torch: cuda_graphs needs a cuda device")
        self._torch: Any = None
        self._module: Any = None
        self._device: Any = None
        self._dtype: Any = None
        self._input_names: list[str] = []
        self._streams: list[_Stream] = []
        self._local = threading.local()

    @classmethod
    def precisions(cls, device: str) -> tuple[str, ...]:
        kind, _ = parse_device(device)
        return CPU_PRECISIONS if kind == "cpu" else CUDA_PRECISIONS

    def intra_threads(self) -> int:
        return threads_per_stream(self.options, self.kind == "cpu")

    # --- load / infer / close ---------------------------------------------------------------

    def load(self) -> None:
        torch, onnx2torch = _import_torch()
        check_precision(type(self), self.options.precision, self.options.device)
        if not self.model_path.is_file():
            raise BackendError(f"torch: model file not found: {self.model_path}")
        self._check_cuda(torch)
        from harness.models.inspect import inspect_model

        try:
            model = inspect_model(
                self.model_path, dims=self.options.dims, shapes=self.options.shapes
            )
        except ModelError as exc:
            raise BackendError(f"torch: cannot load {self.model_path.name}: {exc}") from exc
        self._torch = torch
        self._input_names = [spec.name for spec in model.inputs]
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
            self.options.precision
        ]
        if self.kind == "cpu":
            self._device = torch.device("cpu")
            torch.set_num_threads(self.intra_threads())
        else:
            self._device = torch.device("cuda", self.device_id)
            # fp32 means fp32: no TF32 convolutions or matmuls behind the precision's back.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        try:
            module = onnx2torch.convert(str(self.model_path))
        except Exception as exc:  # onnx2torch raises NotImplementedError, KeyError, ...
            # The file itself is refused, whatever the batch, streams or precision.
            raise ModelUnreadable(
                self.name,
                f"torch: onnx2torch cannot convert {self.model_path.name}: {one_line(exc)}",
            ) from exc
        try:
            self._module = module.eval().to(self._device, self._dtype)
            if self.kind == "cuda":
                self._streams = [
                    _Stream(cuda=torch.cuda.Stream(self._device))
                    for _ in range(self.options.streams)
                ]
                if self.cuda_graphs:
                    shapes = [s.batch_shape(self.options.max_batch) for s in model.inputs]
                    dtypes = [s.np_dtype for s in model.inputs]
                    for stream in self._streams:
                        self._capture(stream, shapes, dtypes)
            else:
                self._streams = [_Stream() for _ in range(self.options.streams)]
        except BackendError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise self._load_error(exc, f"cannot load {self.model_path.name}") from exc

    def _infer(self, inputs: Mapping[str, np.ndarray], stream: int) -> list[np.ndarray]:
        if self.kind == "cpu":
            return self._infer_cpu(inputs)
        torch = self._torch
        try:
            return self._infer_cuda(inputs, self._streams[stream])
        except Exception as exc:  # infer() maps it; out of memory first frees the cached blocks
            if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            raise

    def close(self) -> None:
        torch = self._torch
        streams, self._streams = self._streams, []
        self._module = None
        if torch is not None and self.kind == "cuda" and streams:
            for stream in streams:
                stream.cuda.synchronize()
            streams.clear()
            torch.cuda.empty_cache()

    def info(self) -> BackendInfo:
        torch, _ = _import_torch()
        if self.kind == "cpu":
            device = cpu_name()
        else:
            self._check_cuda(torch)
            device = torch.cuda.get_device_name(self.device_id)
        return BackendInfo(
            backend=self.name,
            device=device,
            versions={
                "torch": torch.__version__,
                "onnx2torch": importlib.metadata.version("onnx2torch"),
            },
            details={
                "device_index": self.device_id if self.kind == "cuda" else None,
                "dtype": self.options.precision,
                "intra_op_threads": self.intra_threads(),
                "cuda_graphs": self.cuda_graphs,
                "tf32": False,
                "streams_share_module": True,
            },
        )

    # --- helpers ----------------------------------------------------------------------------

    def _check_cuda(self, torch: Any) -> None:
        if self.kind != "cuda":
            return
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f"torch {torch.__version__}: no CUDA device here for device "
                f"{self.options.device} (torch.cuda.is_available() is False)"
            )
        count = torch.cuda.device_count()
        if self.device_id >= count:
            raise BackendUnavailable(
                f"torch: device {self.options.device} does not exist "
                f"({count} CUDA device{'s' if count != 1 else ''} visible)"
            )

    def _to_device(self, array: np.ndarray) -> Any:
        tensor = self._torch.from_numpy(np.ascontiguousarray(array))
        if tensor.is_floating_point():
            return tensor.to(self._device, self._dtype)
        return tensor.to(self._device)

    def _outputs(self, result: Any) -> list[Any]:
        return list(result) if isinstance(result, (tuple, list)) else [result]

    def _infer_cpu(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        threads = self.intra_threads()
        if getattr(self._local, "threads", None) != threads:  # the OpenMP setting is per thread
            torch.set_num_threads(threads)
            self._local.threads = threads
        args = [self._to_device(inputs[name]) for name in self._input_names]
        with torch.inference_mode():
            outputs = self._outputs(self._module(*args))
            return [_float_out(o).numpy() for o in outputs]

    def _infer_cuda(self, inputs: Mapping[str, np.ndarray], stream: _Stream) -> list[np.ndarray]:
        torch = self._torch
        arrays = [np.ascontiguousarray(inputs[name]) for name in self._input_names]
        with torch.cuda.stream(stream.cuda), torch.inference_mode():
            hosts = [
                self._pinned_input(stream, name, a)
                for name, a in zip(self._input_names, arrays, strict=True)
            ]
            if stream.graph is not None and all(
                h.shape == g.shape for h, g in zip(hosts, stream.graph_in, strict=True)
            ):
                for host, static in zip(hosts, stream.graph_in, strict=True):
                    # Same-dtype copy from pinned memory, then the cast on the device.
                    static.copy_(host.to(self._device, non_blocking=True))
                stream.graph.replay()
                outputs = stream.graph_out
            else:
                args = []
                for host in hosts:
                    dev = host.to(self._device, non_blocking=True)
                    args.append(dev.to(self._dtype) if dev.is_floating_point() else dev)
                outputs = self._outputs(self._module(*args))
            result = self._copy_out(stream, [_float_out(o) for o in outputs])
            stream.cuda.synchronize()
        return [r.numpy().copy() for r in result]

    def _pinned_input(self, stream: _Stream, name: str, array: np.ndarray) -> Any:
        """`array` copied into this stream's pinned buffer for `name` (grown as needed)."""
        torch = self._torch
        source = torch.from_numpy(array)
        buffer = stream.pinned_in.get(name)
        if source.dim() == 0:  # an unbatched scalar (a sample rate): its own buffer
            if buffer is None or buffer.dtype != source.dtype or buffer.dim():
                buffer = torch.empty((), dtype=source.dtype, pin_memory=True)
                stream.pinned_in[name] = buffer
            buffer.copy_(source)
            return buffer
        if (
            buffer is None
            or buffer.dtype != source.dtype
            or buffer.shape[1:] != source.shape[1:]
            or buffer.shape[0] < source.shape[0]
        ):
            rows = max(source.shape[0], self.options.max_batch)
            buffer = torch.empty((rows, *source.shape[1:]), dtype=source.dtype, pin_memory=True)
            stream.pinned_in[name] = buffer
        view = buffer[: source.shape[0]]
        view.copy_(source)
        return view

    def _copy_out(self, stream: _Stream, outputs: list[Any]) -> list[Any]:
        """Device outputs copied (non-blocking) into this stream's pinned output buffers."""
        torch = self._torch
        if len(stream.pinned_out) != len(outputs):
            stream.pinned_out = [None] * len(outputs)
        views = []
        for i, out in enumerate(outputs):
            buffer = stream.pinned_out[i]
            if (
                buffer is None
                or buffer.dtype != out.dtype
                or buffer.shape[1:] != out.shape[1:]
                or buffer.shape[0] < out.shape[0]
            ):
                rows = max(out.shape[0], self.options.max_batch) if out.dim() else 1
                shape = (rows, *out.shape[1:]) if out.dim() else ()
                buffer = torch.empty(shape, dtype=out.dtype, pin_memory=True)
                stream.pinned_out[i] = buffer
            view = buffer[: out.shape[0]] if out.dim() else buffer
            view.copy_(out, non_blocking=True)
            views.append(view)
        return views

    def _capture(self, stream: _Stream, shapes: list[tuple[int, ...]], dtypes: list[Any]) -> None:
        """Capture one full-batch forward on `stream` as a CUDA graph with static buffers."""
        torch = self._torch
        static_in = []
        for shape, dtype in zip(shapes, dtypes, strict=True):
            tensor = torch.zeros(shape, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype)
            tensor = tensor.to(self._device)
            static_in.append(tensor.to(self._dtype) if tensor.is_floating_point() else tensor)
        with torch.inference_mode():
            stream.cuda.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(stream.cuda):
                for _ in range(GRAPH_WARMUP_RUNS):
                    self._module(*static_in)
            stream.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream.cuda, capture_error_mode="thread_local"):
                static_out = self._outputs(self._module(*static_in))
        stream.graph, stream.graph_in, stream.graph_out = graph, static_in, static_out

    def _load_error(self, exc: BaseException, what: str) -> BackendError:
        """`exc` from loading as the project's error; after out of memory on CUDA, the cached
        blocks are freed."""
        error = backend_error(self.name, what, exc)
        if isinstance(error, OutOfMemory) and self._torch is not None and self.kind == "cuda":
            self._torch.cuda.empty_cache()
        return error


def _float_out(tensor: Any) -> Any:
    """Float outputs as float32 (NumPy has no bfloat16); other dtypes unchanged."""
    return tensor.float() if tensor.is_floating_point() else tensor

"""TensorRT + pycuda: engines built from the precision variant's ONNX file, `streams` execution
contexts each with its own CUDA stream and page-locked / device buffers (NVIDIA's
`gpu_inference_streams`).

Targets TensorRT 10.x and 11.x through the name-based enqueueV3 API (`num_io_tensors`,
`set_input_shape`, `set_tensor_address`, `execute_async_v3`). Networks are strongly typed
(TensorRT 11 knows no other kind and dropped the FP16/INT8 builder flags), so the precision is
the ONNX variant's. Engines are cached under `cache_dir/engines`, keyed by model hash,
precision, max batch, GPU name, compute capability and TensorRT version; the builder's timing
cache is kept beside them. The CUDA context is the device's primary context, pushed and popped
around all work in every thread (no pycuda.autoinit).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.backends.base import Backend, BackendInfo, BackendOptions, batch_size
from harness.backends.trt_engine import (
    PRECISIONS,
    CudaGraphs,
    EngineKey,
    atomic_write,
    backend_error,
    import_runtime,
    input_shapes,
    load_engine,
    numpy_dtype,
    parse_cuda_device,
    parse_settings,
    parser_error,
    profile_shapes,
)
from harness.errors import BackendError, TunerError
from harness.models import TensorSpec, inspect_model


@dataclass
class _Stream:
    """One execution context with its stream, buffers and (optionally) graphs by batch size."""

    context: Any
    stream: Any
    host: dict[str, np.ndarray]
    device: dict[str, Any]
    batch: int = 0
    graphs: dict[int, int] = field(default_factory=dict)
    #: Each output's shape at the current batch, as the context reports it.
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Probe:
    gpu_name: str
    compute_capability: tuple[int, int]
    versions: dict[str, str]


class TensorRTBackend(Backend):
    """A TensorRT engine on one NVIDIA GPU, run by `streams` execution contexts."""

    name: ClassVar[str] = "tensorrt"
    option_names: ClassVar[tuple[str, ...]] = ("cache_dir", "workspace_mb", "cuda_graphs")

    def __init__(self, model_path: Path, options: BackendOptions) -> None:
        super().__init__(model_path, options)
        self.device_id = parse_cuda_device(options.device)
        extra = dict(options.extra)
        if "cache_dir" not in extra and options.cache_dir is not None:
            extra["cache_dir"] = options.cache_dir  # the run's cache folder, unless overridden
        self.settings = parse_settings(extra)
        self._probe: _Probe | None = None
        self._ctx: Any = None
        self._engine: Any = None
        self._streams: list[_Stream] = []
        self._inputs: list[tuple[str, TensorSpec]] = []
        self._outputs: list[str] = []
        self._graphs: CudaGraphs | None = None
        self._graph_lock = threading.Lock()
        self._runtime: Any = None
        self._log: Any = None
        self._details: dict[str, Any] = {}

    @classmethod
    def precisions(cls, device: str) -> tuple[str, ...]:
        parse_cuda_device(device)
        return PRECISIONS

    # --- load -----------------------------------------------------------------------------

    def load(self) -> None:
        trt, cuda = import_runtime()
        probe = self._device_probe()
        model = inspect_model(self.model_path, dims=self.options.dims, shapes=self.options.shapes)
        key = EngineKey(
            model.sha256,
            self.options.precision,
            self.options.max_batch,
            probe.gpu_name,
            probe.compute_capability,
            trt.__version__,
            input_shapes(model),
        )
        path = key.engine_path(self.settings.cache_dir)
        self.close()
        self._ctx = cuda.Device(self.device_id).retain_primary_context()
        self._ctx.push()
        try:
            self._engine, cached, build_s = load_engine(
                path,
                lambda: self._build(trt, model, key),
                lambda plan: self._deserialize(trt, plan),
            )
            self._io_tensors(trt, model)
            self._streams = [self._make_stream(trt, cuda) for _ in range(self.options.streams)]
            if self.settings.cuda_graphs:
                self._graphs = CudaGraphs()
        except BaseException as exc:
            self._release()
            cuda.Context.pop()
            self._ctx.detach()
            self._ctx = None
            if isinstance(exc, TunerError) or not isinstance(exc, Exception):
                raise
            # pycuda and TensorRT raise their own error types; out of memory becomes OutOfMemory
            raise backend_error(f"cannot load {self.model_path.name}", exc) from exc
        cuda.Context.pop()
        self._details = {
            "engine_path": str(path),
            "engine_cached": cached,
            "engine_build_s": round(build_s, 4),
            "timing_cache": str(key.timing_cache_path(self.settings.cache_dir)),
        }

    def _build(self, trt: Any, model: Any, key: EngineKey) -> bytes:
        """Parse the ONNX file into a strongly typed network and build a serialized engine."""
        log = _logger(trt)
        builder = trt.Builder(log)
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
        parser = trt.OnnxParser(network, log)
        if not parser.parse_from_file(str(self.model_path)):
            raise parser_error(
                self.model_path, [str(parser.get_error(i)) for i in range(parser.num_errors)]
            )
        config = builder.create_builder_config()
        if self.settings.workspace_mb is not None:
            config.set_memory_pool_limit(
                trt.MemoryPoolType.WORKSPACE, self.settings.workspace_mb << 20
            )
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile_shapes(model, self.options.max_batch).items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
        timing_path = key.timing_cache_path(self.settings.cache_dir)
        timing = config.create_timing_cache(
            timing_path.read_bytes() if timing_path.is_file() else b""
        )
        config.set_timing_cache(timing, False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise backend_error(f"engine build failed for {self.model_path.name}", log=log.errors)
        atomic_write(timing_path, bytes(config.get_timing_cache().serialize()))
        return bytes(plan)

    def _deserialize(self, trt: Any, plan: bytes) -> Any:
        log = _logger(trt)
        self._runtime = trt.Runtime(log)
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise backend_error("cannot deserialize the engine", log=log.errors)
        self._log = log
        return engine

    def _io_tensors(self, trt: Any, model: Any) -> None:
        """The engine's inputs with their bound sample shapes (the engine reports a symbolic
        dim as -1, whatever its profile), and its outputs."""
        specs = {t.name: t for t in model.inputs}
        self._inputs, self._outputs = [], []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                spec = specs.get(name)
                if spec is None:  # not an input the model file lists: batched on axis 0
                    shape = tuple(self._engine.get_tensor_shape(name))[1:]
                    spec = TensorSpec(name, "float32", shape)
                self._inputs.append((name, spec))
            else:
                self._outputs.append(name)

    def _make_stream(self, trt: Any, cuda: Any) -> _Stream:
        """An execution context with its own stream and buffers sized for `max_batch`."""
        context = self._engine.create_execution_context()
        if context is None:
            raise backend_error("cannot create an execution context", log=self._log.errors[-3:])
        stream = cuda.Stream()
        context.set_optimization_profile_async(0, stream.handle)
        s = _Stream(context, stream, {}, {})
        self._set_batch(s, self.options.max_batch)
        for name in [n for n, _ in self._inputs] + self._outputs:
            dtype = numpy_dtype(trt.nptype, self._engine.get_tensor_dtype(name), name)
            host = cuda.pagelocked_empty(tuple(context.get_tensor_shape(name)), dtype)
            s.host[name], s.device[name] = host, cuda.mem_alloc(max(host.nbytes, 1))
            if not context.set_tensor_address(name, int(s.device[name])):
                raise BackendError(f"tensorrt: cannot set the address of tensor {name!r}")
        return s

    def _set_batch(self, s: _Stream, n: int) -> None:
        for name, spec in self._inputs:
            if not s.context.set_input_shape(name, spec.batch_shape(n)):
                top = self.options.max_batch
                raise BackendError(f"tensorrt: batch {n} is outside the engine's profile 1..{top}")
        s.shapes = {name: tuple(s.context.get_tensor_shape(name)) for name in self._outputs}
        s.batch = n

    # --- infer / close / info ---------------------------------------------------------------

    def _infer(self, inputs: Mapping[str, np.ndarray], stream: int) -> list[np.ndarray]:
        import pycuda.driver as cuda

        s = self._streams[stream]
        n = batch_size(dict(self._inputs), inputs)
        self._ctx.push()
        try:
            if n != s.batch:
                self._set_batch(s, n)
            # The buffers are sized for max_batch; a smaller batch, wherever its batch axis
            # stands, is the leading elements of each buffer, as TensorRT reads and writes it.
            for name, _ in self._inputs:
                value = inputs[name]
                host = _leading(s.host[name], np.shape(value))
                np.copyto(host, value, casting="same_kind")
                cuda.memcpy_htod_async(s.device[name], host, s.stream)
            self._execute(s, n)
            outs = [_leading(s.host[name], s.shapes[name]) for name in self._outputs]
            for name, host in zip(self._outputs, outs, strict=True):
                cuda.memcpy_dtoh_async(host, s.device[name], s.stream)
            s.stream.synchronize()
            return [host.copy() for host in outs]
        finally:
            cuda.Context.pop()

    def _error_log(self) -> list[str]:
        """TensorRT's last error lines: `infer()` finds out of memory there too."""
        return self._log.errors[-3:] if self._log is not None else []

    def _execute(self, s: _Stream, n: int) -> None:
        handle = s.stream.handle
        if self._graphs is None:
            if not s.context.execute_async_v3(handle):
                raise backend_error("execute_async_v3 failed", log=self._log.errors[-3:])
            return
        if n not in s.graphs:
            # TensorRT needs one plain enqueue after a shape change before it can be captured.
            if not s.context.execute_async_v3(handle):
                raise backend_error("execute_async_v3 failed", log=self._log.errors[-3:])
            s.stream.synchronize()
            with self._graph_lock:
                s.graphs[n] = self._graphs.capture(handle, lambda: self._enqueue(s))
        self._graphs.launch(s.graphs[n], handle)

    def _enqueue(self, s: _Stream) -> None:
        if not s.context.execute_async_v3(s.stream.handle):
            raise backend_error(
                "execute_async_v3 failed during graph capture", log=self._log.errors[-3:]
            )

    def close(self) -> None:
        if self._ctx is None:
            return
        self._ctx.push()
        try:
            self._release()
        finally:
            import pycuda.driver as cuda

            cuda.Context.pop()
            self._ctx.detach()
            self._ctx = None

    def _release(self) -> None:
        """Free graphs, buffers, contexts and the engine (the CUDA context must be current)."""
        for s in self._streams:
            for executable in s.graphs.values():
                if self._graphs is not None:
                    self._graphs.destroy(executable)
            s.stream.synchronize()
            for allocation in s.device.values():
                allocation.free()
        self._streams, self._engine, self._graphs = [], None, None
        self._runtime = None

    def info(self) -> BackendInfo:
        probe = self._device_probe()
        return BackendInfo(
            backend=self.name,
            device=probe.gpu_name,
            versions=probe.versions,
            details={
                "device_index": self.device_id,
                "compute_capability": ".".join(str(v) for v in probe.compute_capability),
                "workspace_mb": self.settings.workspace_mb,
                "cuda_graphs": self.settings.cuda_graphs,
                "streams_share_engine": True,
                **self._details,
            },
        )

    def _device_probe(self) -> _Probe:
        """GPU name, compute capability and library versions (needs no CUDA context)."""
        if self._probe is None:
            trt, cuda = import_runtime()
            import pycuda

            try:
                cuda.init()
                device = cuda.Device(self.device_id)
                name, capability = device.name(), tuple(device.compute_capability())
                driver = cuda.get_driver_version()
            except Exception as exc:  # pycuda.driver.Error: no driver, no such device
                raise backend_error(f"no CUDA device {self.options.device}", exc) from exc
            versions = {
                "tensorrt": str(trt.__version__),
                "pycuda": str(pycuda.VERSION_TEXT),
                "cuda_driver": f"{driver // 1000}.{driver % 1000 // 10}",
            }
            self._probe = _Probe(name, (int(capability[0]), int(capability[1])), versions)
        return self._probe


def _logger(trt: Any) -> Any:
    """A TensorRT logger that keeps the error lines (an out-of-memory build says so there)."""

    class Log(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                self.errors.append(str(msg))

    return Log()


def _leading(buffer: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The first elements of a (contiguous, page-locked) buffer, viewed as `shape`."""
    count = int(np.prod(shape, dtype=np.int64))
    return buffer.reshape(-1)[:count].reshape(tuple(shape))

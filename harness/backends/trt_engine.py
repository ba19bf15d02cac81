"""GPU-free parts of the TensorRT backend: device and option parsing, engine cache keys and
paths, optimization-profile shapes, atomic writes, and TensorRT / CUDA failures as the
project's errors (`backend_error`: the shared `harness.backends.base.backend_error` in
tensorrt's name; out of memory becomes `OutOfMemory`, so a trial fails as "out of memory").
Also the CUDA-graph calls, made through the CUDA driver with ctypes because the released
pycuda (2026.1) wraps no stream capture; libcuda is opened only when graphs are used.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.backends import base
from harness.backends.base import is_out_of_memory as is_out_of_memory  # re-exported
from harness.backends.base import one_line
from harness.config import default_cache_dir
from harness.device import cuda_ordinal
from harness.errors import BackendError, BackendUnavailable, ConfigError, ModelError, OutOfMemory
from harness.models.info import ModelInfo

PRECISIONS = ("fp32", "fp16", "int8")
KEY_VERSION = 2
"""Bump when the build recipe changes, so engines built by the old one are not reused."""
INSTALL_HINT = "install the gpu extra: pip install 'batch-tuner[gpu]'"
log = logging.getLogger(__name__)

Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def parse_cuda_device(device: str) -> int:
    """'cuda' -> 0, 'cuda:N' -> N; anything else (cpu included) is a ConfigError naming it."""
    index = cuda_ordinal(device)
    if index is not None:
        return index
    raise ConfigError(f"device: backend tensorrt runs on cuda or cuda:N, not {device!r}")


@dataclass(frozen=True)
class TrtSettings:
    """The backend's extra options, validated: where engines are cached, the builder's
    workspace limit (None: TensorRT's default, the device memory) and CUDA graphs."""

    cache_dir: Path = field(default_factory=default_cache_dir)
    workspace_mb: int | None = None
    cuda_graphs: bool = False


def parse_settings(extra: Mapping[str, Any]) -> TrtSettings:
    cache_dir = extra.get("cache_dir", None)
    if cache_dir is None:
        cache_dir = default_cache_dir()
    if not isinstance(cache_dir, (str, os.PathLike)) or not str(cache_dir):
        raise ConfigError(f"backend tensorrt: cache_dir must be a folder path, got {cache_dir!r}")
    workspace = extra.get("workspace_mb")
    if workspace is not None and (
        isinstance(workspace, bool) or not isinstance(workspace, int) or workspace < 1
    ):
        raise ConfigError(
            f"backend tensorrt: workspace_mb must be an integer >= 1, got {workspace!r}"
        )
    graphs = extra.get("cuda_graphs", False)
    if not isinstance(graphs, bool):
        raise ConfigError(f"backend tensorrt: cuda_graphs must be true or false, got {graphs!r}")
    return TrtSettings(Path(cache_dir), workspace, graphs)


@dataclass(frozen=True)
class EngineKey:
    """What an engine depends on; equal keys may share one serialized engine file."""

    model_sha256: str
    precision: str
    max_batch: int
    gpu_name: str
    compute_capability: tuple[int, int]
    trt_version: str
    #: Every input's sample shape (symbolic dims bound): an engine built for sequence 128
    #: serves no other length.
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def digest(self) -> str:
        return hashlib.sha256(json.dumps([KEY_VERSION, *astuple(self)]).encode()).hexdigest()

    def engine_path(self, cache_dir: Path) -> Path:
        """`cache_dir/engines/<precision>-b<batch>-<gpu>-sm<cc>-trt<version>-<digest>.plan`."""
        name = (
            f"{self.precision}-b{self.max_batch}-{_slug(self.gpu_name)}-sm{_cc(self)}"
            f"-trt{self.trt_version}-{self.digest()[:16]}.plan"
        )
        return Path(cache_dir) / "engines" / name

    def timing_cache_path(self, cache_dir: Path) -> Path:
        """One timing cache per GPU model and TensorRT version, shared by all models."""
        name = f"timing-{_slug(self.gpu_name)}-sm{_cc(self)}-trt{self.trt_version}.cache"
        return Path(cache_dir) / "engines" / name


def _cc(key: EngineKey) -> str:
    return "".join(str(v) for v in key.compute_capability)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "gpu"


def input_shapes(model: ModelInfo) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Every input's name and bound sample shape, for the engine key; an input not batched on
    axis 0 gives its whole shape with the batch as -1 where it stands (its fixed shape when
    it has no batch)."""
    return tuple(
        (t.name, t.sample_shape if t.batch_axis == 0 else t.batch_shape(-1)) for t in model.inputs
    )


def profile_shapes(model: ModelInfo, max_batch: int) -> Shapes:
    """min / opt / max shape of every input: batch 1 .. max_batch on its batch axis,
    optimized for max_batch; an unbatched input (a rank-0 sample rate, a shared table) has
    its one shape in all three."""
    return {
        t.name: (t.batch_shape(1), t.batch_shape(max_batch), t.batch_shape(max_batch))
        for t in model.inputs
    }


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename it over `path` (readers and
    concurrent writers of the same key never see a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_engine(
    path: Path, build: Callable[[], bytes], deserialize: Callable[[bytes], Any]
) -> tuple[Any, bool, float]:
    """`(engine, cached, build_s)`: the engine deserialized from the plan cached at `path`,
    or from a plan `build()` makes (then written to `path`).

    A cached plan that `deserialize` cannot use (it returns None, as
    `IRuntime.deserialize_cuda_engine` does on a corrupt plan, or raises anything but
    OutOfMemory) is deleted with one warning and built anew; out of memory is not the file's
    fault and is raised as it is.
    """
    if path.is_file():
        try:
            engine = deserialize(path.read_bytes())
        except Exception as exc:  # TensorRT and pycuda raise their own types
            if isinstance(exc, OutOfMemory) or isinstance(backend_error("", exc), OutOfMemory):
                raise
            reason = one_line(exc)
        else:
            if engine is not None:
                return engine, True, 0.0
            reason = "TensorRT returned no engine"
        log.warning(
            "tensorrt: cached engine %s cannot be deserialized (%s); deleting it and rebuilding",
            path,
            reason,
        )
        path.unlink(missing_ok=True)
    started = time.perf_counter()
    plan = build()
    build_s = time.perf_counter() - started
    atomic_write(path, plan)
    engine = deserialize(plan)
    if engine is None:
        raise BackendError(f"tensorrt: cannot deserialize the engine just built ({path.name})")
    return engine, False, build_s


def import_runtime() -> tuple[Any, Any]:
    """`(tensorrt, pycuda.driver)`, or BackendUnavailable saying which extra to install."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there, libnvinfer is not
        raise BackendUnavailable(
            f"backend tensorrt: cannot import tensorrt ({one_line(exc)}); {INSTALL_HINT}"
        ) from exc
    try:
        import pycuda.driver as cuda
    except (ImportError, OSError) as exc:
        raise BackendUnavailable(
            f"backend tensorrt: cannot import pycuda ({one_line(exc)}); {INSTALL_HINT}"
        ) from exc
    return tensorrt, cuda


def numpy_dtype(nptype: Callable[[Any], Any], trt_dtype: Any, tensor: str) -> np.dtype:
    """The NumPy dtype of a TensorRT tensor (`trt.nptype`), BackendError where it has none."""
    try:
        return np.dtype(nptype(trt_dtype))
    except TypeError as exc:
        raise BackendError(
            f"tensorrt: tensor {tensor!r} has type {trt_dtype}, which has no NumPy equivalent"
        ) from exc


def backend_error(
    what: str, exc: BaseException | None = None, log: Iterable[str] = ()
) -> BackendError:
    """`harness.backends.base.backend_error` for tensorrt: OutOfMemory when `exc` or one of
    the TensorRT error `log` lines says the device ran out of memory; BackendError otherwise."""
    return base.backend_error("tensorrt", what, exc, log)


def parser_error(model: Path, errors: Iterable[str]) -> ModelError:
    found = [one_line(e) for e in errors] or ["no error reported"]
    return ModelError(
        f"tensorrt cannot parse {model.name}: {len(found)} error(s): " + " | ".join(found)
    )


class CudaGraphs:
    """Capture and replay of CUDA graphs on a stream, through the CUDA driver API
    (cuStreamBeginCapture_v2, cuStreamEndCapture, cuGraphInstantiateWithFlags, cuGraphLaunch)."""

    THREAD_LOCAL = 1  # CU_STREAM_CAPTURE_MODE_THREAD_LOCAL: other threads' streams run on

    def __init__(self, library: str = "libcuda.so.1") -> None:
        try:
            self._lib = ctypes.CDLL(library)
        except OSError as exc:
            raise BackendUnavailable(
                f"backend tensorrt: cuda_graphs needs {library} ({exc})"
            ) from exc
        p, ptr = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
        signatures: dict[str, list[Any]] = {
            "cuStreamBeginCapture_v2": [p, ctypes.c_int],
            "cuStreamEndCapture": [p, ptr],
            "cuGraphInstantiateWithFlags": [ptr, p, ctypes.c_ulonglong],
            "cuGraphLaunch": [p, p],
            "cuGraphDestroy": [p],
            "cuGraphExecDestroy": [p],
            "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
        }
        for name, argtypes in signatures.items():
            func = getattr(self._lib, name)
            func.argtypes, func.restype = argtypes, ctypes.c_int

    def capture(self, stream_handle: int, enqueue: Callable[[], None]) -> int:
        """Record what `enqueue()` puts on the stream; returns an executable graph handle."""
        stream = ctypes.c_void_p(stream_handle)
        self._check("cuStreamBeginCapture_v2", stream, self.THREAD_LOCAL)
        graph = ctypes.c_void_p()
        try:
            enqueue()
        finally:
            self._check("cuStreamEndCapture", stream, ctypes.byref(graph))
        executable = ctypes.c_void_p()
        try:
            self._check("cuGraphInstantiateWithFlags", ctypes.byref(executable), graph, 0)
        finally:
            self._check("cuGraphDestroy", graph)
        return int(executable.value or 0)

    def launch(self, executable: int, stream_handle: int) -> None:
        self._check("cuGraphLaunch", ctypes.c_void_p(executable), ctypes.c_void_p(stream_handle))

    def destroy(self, executable: int) -> None:
        self._check("cuGraphExecDestroy", ctypes.c_void_p(executable))

    def _check(self, name: str, *args: Any) -> None:
        code = getattr(self._lib, name)(*args)
        if code:
            text = ctypes.c_char_p()
            self._lib.cuGetErrorName(code, ctypes.byref(text))
            label = text.value.decode() if text.value else f"CUresult {code}"
            raise backend_error(f"CUDA graph: {name}", RuntimeError(label))

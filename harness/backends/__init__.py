"""Inference backends behind one contract, looked up by name in `BACKENDS`.

Heavy runtimes are imported inside each backend's `load()`, so `import harness` works on a
machine without them.
"""

from __future__ import annotations

from harness.backends.base import Backend, BackendInfo, BackendOptions, check_precision
from harness.backends.null import NullBackend
from harness.backends.onnxruntime import OnnxRuntimeBackend
from harness.backends.pytorch import TorchBackend
from harness.backends.replay import ReplayBackend
from harness.backends.tensorrt import TensorRTBackend
from harness.errors import ConfigError

BACKENDS: dict[str, type[Backend]] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
    NullBackend.name: NullBackend,
    ReplayBackend.name: ReplayBackend,
    TensorRTBackend.name: TensorRTBackend,
    TorchBackend.name: TorchBackend,
}


def get_backend(name: str) -> type[Backend]:
    """The backend class called `name`, or a ConfigError listing the valid names."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"backend: unknown backend {name!r} (valid: {', '.join(sorted(BACKENDS))})"
        ) from None


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendInfo",
    "BackendOptions",
    "check_precision",
    "get_backend",
]

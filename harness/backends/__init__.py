"""Inference backends behind one contract, looked up by name in `BACKENDS`.

Heavy runtimes are imported inside each backend's `load()`, so `import harness` works on a
machine without them.
"""

from __future__ import annotations

from harness.backends.base import Backend, BackendInfo, BackendOptions, check_precision
from harness.backends.null import NullBackend
from harness.backends.onnxruntime import OnnxRuntimeBackend
from harness.backends.openvino import OpenVinoBackend
from harness.backends.openvino import installed as openvino_installed
from harness.backends.pytorch import TorchBackend
from harness.backends.replay import ReplayBackend
from harness.backends.tensorrt import TensorRTBackend
from harness.errors import ConfigError

BACKENDS: dict[str, type[Backend]] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
    NullBackend.name: NullBackend,
    OpenVinoBackend.name: OpenVinoBackend,
    ReplayBackend.name: ReplayBackend,
    TensorRTBackend.name: TensorRTBackend,
    TorchBackend.name: TorchBackend,
}


#: The runtimes a CPU study searches by default, where installed; the first runs the baseline.
CPU_RUNTIMES = ("onnxruntime", "openvino")


def default_runtimes(device: str) -> tuple[str, ...]:
    """What `--backend auto` searches: every CPU runtime installed on a CPU (onnxruntime is a
    dependency of the package, OpenVINO too unless removed); ONNX Runtime on a GPU."""
    if device != "cpu":
        return ("onnxruntime",)
    return tuple(name for name in CPU_RUNTIMES if name != "openvino" or openvino_installed())


def get_backend(name: str, key: str = "backend") -> type[Backend]:
    """The backend class called `name`, or a ConfigError naming `key` (the setting that gave
    the name) and listing the valid names."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"{key}: unknown backend {name!r} (valid: {', '.join(sorted(BACKENDS))})"
        ) from None


__all__ = [
    "BACKENDS",
    "CPU_RUNTIMES",
    "Backend",
    "BackendInfo",
    "BackendOptions",
    "check_precision",
    "default_runtimes",
    "get_backend",
]

"""ONNX Runtime: the CPU execution provider, and the CUDA / TensorRT providers where the
installed onnxruntime has them. The `streams` workers share one session (one copy of the
weights); its intra-op threads split the cores among them unless `threads` says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.backends.base import (
    Backend,
    BackendInfo,
    BackendOptions,
    backend_error,
    threads_per_stream,
)
from harness.device import cpu_name, parse_device
from harness.errors import BackendUnavailable, ConfigError

CPU_PRECISIONS = ("fp32", "int8")
CUDA_PRECISIONS = ("fp32", "fp16", "int8")


class OnnxRuntimeBackend(Backend):
    """One InferenceSession shared by the stream workers (ORT releases the GIL in `run`)."""

    name: ClassVar[str] = "onnxruntime"
    option_names: ClassVar[tuple[str, ...]] = ("tensorrt_provider", "graph_optimization")

    def __init__(self, model_path: Path, options: BackendOptions) -> None:
        super().__init__(model_path, options)
        self.kind, self.device_id = parse_device(options.device)
        self._session: Any = None
        self._output_names: list[str] = []

    @classmethod
    def precisions(cls, device: str) -> tuple[str, ...]:
        kind, _ = parse_device(device)
        return CPU_PRECISIONS if kind == "cpu" else CUDA_PRECISIONS

    def intra_threads(self) -> int:
        return threads_per_stream(self.options, self.kind == "cpu")

    def providers(self) -> list[Any]:
        if self.kind == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": self.device_id})
        if self.options.extra.get("tensorrt_provider"):
            return [("TensorrtExecutionProvider", {"device_id": self.device_id}), cuda]
        return [cuda]

    def load(self) -> None:
        import onnxruntime as ort

        wanted = [p if isinstance(p, str) else p[0] for p in self.providers()]
        available = ort.get_available_providers()
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendUnavailable(
                f"onnxruntime {ort.__version__} here lacks {', '.join(missing)} for device "
                f"{self.options.device} (has {', '.join(available)}; install onnxruntime-gpu)"
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.intra_threads()
        so.inter_op_num_threads = 1
        so.log_severity_level = 4  # errors come back as exceptions, with their text
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = self.options.extra.get("graph_optimization", "all")
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        if level not in levels:
            raise ConfigError(
                f"backend onnxruntime: graph_optimization {level!r} not in {list(levels)}"
            )
        so.graph_optimization_level = levels[level]
        for name, size in self.options.dims.items():  # lets the optimizer plan for the size
            so.add_free_dimension_override_by_name(name, size)
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), so, providers=self.providers()
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/RuntimeException types
            raise backend_error(self.name, f"cannot load {self.model_path.name}", exc) from exc
        self._output_names = [o.name for o in self._session.get_outputs()]

    def serves(self, options: BackendOptions) -> bool:
        """A session takes any batch size, and its stream workers share it: any batch and
        stream count whose intra-op thread count is the session's (a session's thread pool is
        fixed when it is made; on 2 cores, 1 stream runs 2 threads, 2 streams 1 each)."""
        if self._session is None:
            return False
        same = replace(options, max_batch=self.options.max_batch, streams=self.options.streams)
        return same == self.options and (
            threads_per_stream(options, self.kind == "cpu") == self.intra_threads()
        )

    def _infer(self, inputs: Mapping[str, np.ndarray], stream: int) -> list[np.ndarray]:
        outputs: list[np.ndarray] = self._session.run(self._output_names, dict(inputs))
        return outputs

    def close(self) -> None:
        self._session = None

    def info(self) -> BackendInfo:
        import onnxruntime as ort

        device = cpu_name() if self.kind == "cpu" else f"CUDA device {self.device_id}"
        return BackendInfo(
            backend=self.name,
            device=device,
            versions={"onnxruntime": ort.__version__},
            details={
                "providers": [p if isinstance(p, str) else p[0] for p in self.providers()],
                "intra_op_threads": self.intra_threads(),
                "streams_share_session": True,
            },
        )

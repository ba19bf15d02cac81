"""`Backend.infer` is final: it runs each backend's own `_infer` and maps what the runtime
raises onto the project's errors once (Polygraphy's `infer` around `infer_impl`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from harness.backends import BACKENDS, BackendOptions
from harness.backends.base import Backend, BackendInfo
from harness.backends.null import NullBackend
from harness.backends.onnxruntime import OnnxRuntimeBackend
from harness.errors import BackendError, ConfigError, OutOfMemory
from tests.conftest import make_mlp

BATCH = {"input": np.zeros((2, 16), np.float32)}


class Failing(Backend):
    """A backend whose runtime raises `raising` (and logged `log`) on every batch."""

    name: ClassVar[str] = "failing"

    def __init__(self, raising: BaseException, log: Sequence[str] = ()) -> None:
        super().__init__(Path("unused.onnx"), BackendOptions(streams=2))
        self.raising, self.log, self.calls = raising, list(log), 0

    @classmethod
    def precisions(cls, device: str) -> tuple[str, ...]:
        return ("fp32",)

    def load(self) -> None:
        pass

    def _infer(self, inputs: Mapping[str, np.ndarray], stream: int) -> list[np.ndarray]:
        self.calls += 1
        raise self.raising

    def _error_log(self) -> Sequence[str]:
        return self.log

    def close(self) -> None:
        pass

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, "nowhere", {})


@pytest.mark.parametrize(
    "raising",
    [
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory"),
        MemoryError("host allocation"),
    ],
)
def test_an_out_of_memory_is_mapped_once_to_out_of_memory(raising: BaseException) -> None:
    backend = Failing(raising)
    with pytest.raises(OutOfMemory) as info:
        backend.infer(BATCH, 1)
    assert str(info.value).startswith("out of memory: failing: inference failed on stream 1: ")
    assert info.value.__cause__ is raising  # wrapped once, around the runtime's own error
    assert backend.calls == 1


def test_an_out_of_memory_the_runtime_only_logged_is_out_of_memory() -> None:
    log = ["a warning", "[virtualMemoryBuffer.cpp::resizePhysical] Error Code 2: OutOfMemory"]
    backend = Failing(RuntimeError("enqueue failed"), log)
    with pytest.raises(OutOfMemory, match="Error Code 2: OutOfMemory"):
        backend.infer(BATCH, 0)


def test_any_other_runtime_error_is_one_line_backend_error_naming_the_backend() -> None:
    raising = ValueError("bad\n   shape")
    with pytest.raises(BackendError) as info:
        Failing(raising).infer(BATCH, 0)
    assert type(info.value) is BackendError
    assert str(info.value) == "failing: inference failed on stream 0: bad shape"
    assert info.value.__cause__ is raising


@pytest.mark.parametrize(
    "raising",
    [BackendError("failing: already mapped"), OutOfMemory("out of memory: x"), ConfigError("x")],
)
def test_the_projects_own_errors_pass_through_unchanged(raising: BaseException) -> None:
    with pytest.raises(type(raising)) as info:
        Failing(raising).infer(BATCH, 0)
    assert info.value is raising


def test_an_interrupt_is_not_an_inference_error() -> None:
    with pytest.raises(KeyboardInterrupt):
        Failing(KeyboardInterrupt()).infer(BATCH, 0)


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_implements_infer_only_through_infer_impl(name: str) -> None:
    backend = BACKENDS[name]
    assert backend.infer is Backend.infer
    assert "_infer" in vars(backend) and "infer" not in vars(backend)


def test_onnxruntime_errors_are_mapped_once(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "mlp.onnx")
    with (
        OnnxRuntimeBackend(model, BackendOptions()) as backend,
        pytest.raises(BackendError) as info,
    ):
        backend.infer({"input": np.zeros((1, 17), np.float32)}, 0)
    message = str(info.value)
    assert message.startswith("onnxruntime: inference failed on stream 0: ")
    assert "\n" not in message and "onnxruntime: " not in message[len("onnxruntime: ") :]
    assert not isinstance(info.value.__cause__, BackendError)  # the runtime's own exception


def test_a_backends_own_backend_error_is_not_wrapped_again() -> None:
    options = BackendOptions(extra={"latency_ms": 0, "per_sample_ms": 0, "fail_after_batches": 1})
    with NullBackend(Path("unused.onnx"), options) as backend:
        backend.infer(BATCH, 0)
        with pytest.raises(BackendError) as info:
            backend.infer(BATCH, 0)
    assert str(info.value) == "simulated failure after 1 batches"
    assert info.value.__cause__ is None

"""The backend contract, run against every backend in `BACKENDS` that can run here.

Like Optuna's StorageTestCase: one suite, parametrised over the implementations. A backend
whose runtime or device is missing is skipped with a reason that names what it needs, and a
backend without a case in CASES fails (so a new backend cannot slip past the contract).
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from harness.backends import BACKENDS, Backend, BackendOptions, check_precision, get_backend
from harness.backends.null import NullBackend
from harness.backends.onnxruntime import OnnxRuntimeBackend
from harness.backends.trt_engine import import_runtime
from harness.config import PRECISIONS
from harness.errors import BackendError, BackendUnavailable, ConfigError, OutOfMemory

FEATURES = 16


class Case(NamedTuple):
    """How the contract runs a backend."""

    needs_file: bool  # load() reads the model file
    simulated: bool
    option: dict[str, Any]  # one valid backend option
    device: str = "cpu"


CASES: dict[str, Case] = {
    "onnxruntime": Case(True, False, {"graph_optimization": "basic"}),
    "openvino": Case(True, False, {"batch_shape": "dynamic"}),
    "null": Case(False, True, {"latency_ms": 0.2, "per_sample_ms": 0.0}),
    "replay": Case(False, True, {"seed": 3}),
    "torch": Case(True, False, {"cuda_graphs": False}),
    "tensorrt": Case(True, False, {"cuda_graphs": False}, device="cuda"),
}
#: Backends whose runtime is an optional extra: (modules it imports, the extra).
OPTIONAL: dict[str, tuple[tuple[str, ...], str]] = {"torch": (("torch", "onnx2torch"), "torch")}

Factory = Callable[..., Backend]


def tensorrt_missing() -> str | None:
    """Why the tensorrt case cannot run here, naming the piece that is absent (TensorRT and
    pycuda, or a CUDA GPU), or None."""
    try:
        _, cuda = import_runtime()
    except BackendUnavailable as exc:
        return f"backend tensorrt needs TensorRT and pycuda: {exc}"
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda's error where there is no driver
        return f"backend tensorrt needs an NVIDIA GPU: {exc}"
    return None if count else "backend tensorrt needs an NVIDIA GPU: pycuda sees no CUDA device"


@pytest.fixture(params=sorted(BACKENDS))
def any_backend(request: pytest.FixtureRequest) -> str:
    """Every backend, whether its runtime and device are here or not: for the checks that
    need neither (construction, options, precisions), which run everywhere."""
    name: str = request.param
    assert name in CASES, f"backend {name} has no contract case: add one to CASES"
    return name


@pytest.fixture
def backend_name(any_backend: str) -> str:
    """Every backend that can run here; the others skip naming what they need."""
    name = any_backend
    modules, extra = OPTIONAL.get(name, ((), ""))
    if any(importlib.util.find_spec(m) is None for m in modules):
        pytest.skip(f"backend {name} needs {', '.join(modules)} (the {extra} extra)")
    if name == "tensorrt" and (reason := tensorrt_missing()) is not None:
        pytest.skip(reason)
    return name


@pytest.fixture
def device(any_backend: str) -> str:
    return CASES[any_backend].device


@pytest.fixture
def required(any_backend: str, tmp_path: Path) -> dict[str, Any]:
    """Options a backend cannot run without: the replay backend's landscape (0.1-0.25 ms);
    TensorRT's engines go to this test's folder."""
    if any_backend == "tensorrt":
        return {"cache_dir": str(tmp_path / "engines")}
    if any_backend != "replay":
        return {}
    points = [
        {
            "params": {"precision": p, "batch_size": b, "streams": s},
            "repeats": [{"warmup_batch_ms": 0.1 + 0.05 * b}],
        }
        for p in PRECISIONS
        for b in (1, 2, 3)
        for s in (1, 2, 3)
    ]
    path = tmp_path / "landscape.json"
    path.write_text(json.dumps({"device": "test CPU", "points": points}))
    return {"landscape": str(path)}


@pytest.fixture
def make(
    backend_name: str, device: str, mlp_model: Path, required: dict[str, Any]
) -> Iterator[Factory]:
    """Build a (not loaded) backend; everything it built is closed at teardown."""
    made: list[Backend] = []

    def factory(
        streams: int = 1, max_batch: int = 3, precision: str = "fp32", **extra: Any
    ) -> Backend:
        options = BackendOptions(
            precision=precision,
            max_batch=max_batch,
            streams=streams,
            device=device,
            extra={**required, **extra},
        )
        backend = BACKENDS[backend_name](mlp_model, options)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


def batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((n, FEATURES), dtype=np.float32)}


# --- construction and info ---------------------------------------------------------------


def test_constructor_does_no_work_before_load(
    backend_name: str, device: str, tmp_path: Path, required: dict[str, Any]
) -> None:
    """A missing model file is only noticed by load() (for backends that read the file)."""
    missing = tmp_path / "missing.onnx"
    options = BackendOptions(max_batch=2, streams=2, device=device, extra=required)
    backend = BACKENDS[backend_name](missing, options)
    assert backend.model_path == missing
    assert backend.options.streams == 2
    if CASES[backend_name].needs_file:
        with pytest.raises(BackendError, match=r"missing\.onnx"):
            backend.load()
    else:
        backend.load()
    backend.close()


def test_info_before_and_after_load(backend_name: str, make: Factory) -> None:
    backend = make(streams=2)
    before = backend.info()
    assert before.backend == backend_name == backend.name
    assert isinstance(before.device, str) and before.device
    assert before.versions and all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in before.versions.items()
    )
    assert before.simulated is CASES[backend_name].simulated
    backend.load()
    after = backend.info()
    assert (after.backend, after.device, dict(after.versions), after.simulated) == (
        before.backend,
        before.device,
        dict(before.versions),
        before.simulated,
    )
    as_dict = after.to_dict()
    assert as_dict["backend"] == backend_name and as_dict["simulated"] is after.simulated


def test_valid_option_is_accepted(backend_name: str, make: Factory) -> None:
    backend = make(**CASES[backend_name].option)
    backend.load()
    assert len(backend.infer(batch(1), 0)[0]) == 1


def test_unknown_option_is_a_config_error_listing_valid_ones(
    any_backend: str, device: str, mlp_model: Path, required: dict[str, Any]
) -> None:
    """Checked at construction, which needs no runtime nor device: runs for every backend."""
    cls = BACKENDS[any_backend]
    valid = BackendOptions(device=device, extra={**required, **CASES[any_backend].option})
    assert cls(mlp_model, valid).options == valid  # a valid option constructs
    unknown = BackendOptions(device=device, extra={**required, "no_such_option": 1})
    with pytest.raises(ConfigError, match="no_such_option") as info:
        cls(mlp_model, unknown)
    assert cls.option_names
    for name in cls.option_names:
        assert name in str(info.value)


# --- load / infer / close -----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_infer_on_every_stream_concurrently(backend_name: str, make: Factory, n: int) -> None:
    """Each stream runs its own batch at once with the others: its outputs are those its batch
    gives alone on stream 0, every time (outputs swapped or mixed between streams differ)."""
    streams = 3
    backend = make(streams=streams, max_batch=3)
    backend.load()
    inputs = [batch(n, seed=stream) for stream in range(streams)]
    alone = [backend.infer(inputs[stream], 0) for stream in range(streams)]
    start = threading.Barrier(streams)

    def work(stream: int) -> list[list[np.ndarray]]:
        start.wait(timeout=30)
        return [backend.infer(inputs[stream], stream) for _ in range(5)]

    with ThreadPoolExecutor(streams) as pool:
        per_stream = list(pool.map(work, range(streams)))
    assert alone[0] and all(isinstance(o, np.ndarray) for o in alone[0])
    for stream, results in enumerate(per_stream):
        for outputs in results:
            assert [o.shape[0] for o in outputs] == [n] * len(alone[0])
            for got, want in zip(outputs, alone[stream], strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    if not CASES[backend_name].simulated:  # a real model tells the batches apart
        assert not np.allclose(alone[0][0], alone[1][0])


def test_close_is_safe_before_load_and_twice(make: Factory) -> None:
    """close() raises nothing before load() or a second time, and leaves a backend that loads
    and infers again."""
    backend = make()
    backend.close()
    backend.load()
    assert len(backend.infer(batch(1), 0)[0]) == 1
    backend.close()
    backend.close()
    backend.load()
    assert len(backend.infer(batch(2), 0)[0]) == 2


def test_load_again_after_close(make: Factory) -> None:
    backend = make()
    backend.load()
    backend.close()
    backend.load()
    assert len(backend.infer(batch(2), 0)[0]) == 2


def test_context_manager_loads_and_closes(make: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = make()
    closed: list[bool] = []
    real_close = backend.close

    def spy_close() -> None:
        closed.append(True)
        real_close()

    monkeypatch.setattr(backend, "close", spy_close)
    with backend as entered:
        assert entered is backend
        assert len(entered.infer(batch(3), 0)[0]) == 3
        assert not closed
    assert closed == [True]

    with pytest.raises(RuntimeError, match="boom"), backend:
        raise RuntimeError("boom")
    assert closed == [True, True]


# --- precisions ---------------------------------------------------------------------------


def test_precisions_and_check_precision(any_backend: str, device: str) -> None:
    """Class methods that need no runtime nor device: run for every backend."""
    backend_name = any_backend
    cls = BACKENDS[backend_name]
    supported = cls.precisions(device)
    assert supported and "fp32" in supported
    assert set(supported) <= set(PRECISIONS)
    for precision in PRECISIONS:
        if precision in supported:
            check_precision(cls, precision, device)
            continue
        with pytest.raises(ConfigError, match=precision) as info:
            check_precision(cls, precision, device)
        message = str(info.value)
        assert backend_name in message
        assert all(p in message for p in supported)


def test_onnxruntime_cpu_runs_fp32_and_int8_not_fp16() -> None:
    assert OnnxRuntimeBackend.precisions("cpu") == ("fp32", "int8")
    with pytest.raises(ConfigError) as info:
        check_precision(OnnxRuntimeBackend, "fp16", "cpu")
    message = str(info.value)
    assert "fp16" in message and "supported: fp32, int8" in message
    assert "\n" not in message


def test_onnxruntime_cuda_precisions() -> None:
    assert OnnxRuntimeBackend.precisions("cuda") == ("fp32", "fp16", "int8")
    assert OnnxRuntimeBackend.precisions("cuda:1") == ("fp32", "fp16", "int8")


def test_null_runs_every_precision() -> None:
    assert NullBackend.precisions("cpu") == PRECISIONS


# --- lookup and devices -------------------------------------------------------------------


def test_get_backend() -> None:
    for name, cls in BACKENDS.items():
        assert get_backend(name) is cls
        assert cls.name == name


def test_unknown_backend_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="'tensorflow'") as info:
        get_backend("tensorflow")
    for name in BACKENDS:
        assert name in str(info.value)


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cpu:0", "CUDA", "", "cuda:-1"])
def test_onnxruntime_bad_device_is_a_config_error(mlp_model: Path, device: str) -> None:
    with pytest.raises(ConfigError, match="device"):
        OnnxRuntimeBackend.precisions(device)
    with pytest.raises(ConfigError, match="device"):
        OnnxRuntimeBackend(mlp_model, BackendOptions(device=device))


def test_onnxruntime_cuda_without_the_provider_says_what_to_install(mlp_model: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    backend = OnnxRuntimeBackend(mlp_model, BackendOptions(device="cuda"))
    assert backend.info().device == "CUDA device 0"
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider") as info:
        backend.load()
    assert "install onnxruntime-gpu" in str(info.value)
    assert info.value.exit_code == 1
    backend.close()


def test_onnxruntime_bad_graph_optimization_is_a_config_error(mlp_model: Path) -> None:
    backend = OnnxRuntimeBackend(mlp_model, BackendOptions(extra={"graph_optimization": "turbo"}))
    with pytest.raises(ConfigError, match="turbo"):
        backend.load()


def test_onnxruntime_threads_split_the_cores(mlp_model: Path) -> None:
    explicit = OnnxRuntimeBackend(mlp_model, BackendOptions(streams=4, threads=3))
    assert explicit.intra_threads() == 3
    split = OnnxRuntimeBackend(mlp_model, BackendOptions(streams=1000))
    assert split.intra_threads() == 1


def test_onnxruntime_wrong_input_is_a_backend_error(mlp_model: Path) -> None:
    backend = OnnxRuntimeBackend(mlp_model, BackendOptions())
    with backend, pytest.raises(BackendError, match="inference failed"):
        backend.infer({"input": np.zeros((1, FEATURES + 1), np.float32)}, 0)


# --- the null backend's latency model -----------------------------------------------------


def null(max_batch: int = 4, streams: int = 1, precision: str = "fp32", **extra: Any) -> Backend:
    options = BackendOptions(
        precision=precision, max_batch=max_batch, streams=streams, extra=extra
    )
    return NullBackend(Path("never-read.onnx"), options)


@pytest.mark.parametrize(
    ("precision", "speedup_option", "speedup"),
    [("fp32", None, 1.0), ("fp16", None, 2.0), ("int8", None, 3.0), ("fp16", {"fp16": 4}, 4.0)],
)
def test_null_batch_seconds_is_the_linear_model(
    precision: str, speedup_option: dict[str, float] | None, speedup: float
) -> None:
    extra: dict[str, Any] = {"latency_ms": 2.5, "per_sample_ms": 0.75}
    if speedup_option is not None:
        extra["speedup"] = speedup_option
    backend = null(max_batch=8, precision=precision, **extra)
    backend.load()
    assert isinstance(backend, NullBackend)
    for n in (1, 3, 8):
        assert backend.batch_seconds(n) == (2.5 + 0.75 * n) / 1000.0 / speedup
    assert backend.info().details["speedup"] == speedup


def test_null_jitter_is_reproducible_for_a_seed() -> None:
    def draws(seed: int, stream: int) -> list[float]:
        backend = null(streams=2, jitter=0.3, seed=seed)
        backend.load()
        assert isinstance(backend, NullBackend)
        return [backend.batch_seconds(4, stream) for _ in range(20)]

    base = draws(7, 0)
    assert draws(7, 0) == base
    assert draws(8, 0) != base
    assert draws(7, 1) != base
    assert len(set(base)) > 1
    assert all(s >= 0 for s in base)


def test_null_oom_batch_fails_at_load() -> None:
    null(max_batch=4, oom_batch=4).load()
    backend = null(max_batch=5, oom_batch=4)
    with pytest.raises(OutOfMemory, match="batch 5") as info:
        backend.load()
    assert isinstance(info.value, BackendError)


def test_null_fail_after_batches() -> None:
    backend = null(latency_ms=0, per_sample_ms=0, fail_after_batches=2)
    backend.load()
    backend.infer(batch(1), 0)
    backend.infer(batch(1), 0)
    with pytest.raises(BackendError, match="after 2 batches"):
        backend.infer(batch(1), 0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("latency_ms", -1),
        ("per_sample_ms", "fast"),
        ("jitter", True),
        ("speedup", {"fp32": 0}),
        ("speedup", {"fp32": "x"}),
        ("speedup", 2),
        ("oom_batch", "big"),
        ("capacity", 0),
        ("fail_after_batches", -1),
        ("seed", "abc"),
    ],
)
def test_null_bad_option_value_is_a_config_error(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        null(**{key: value})  # type: ignore[arg-type]

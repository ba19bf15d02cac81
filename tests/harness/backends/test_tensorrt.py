"""The TensorRT backend: its GPU-free parts here, engine builds and inference on a GPU.

TensorRT and pycuda cannot be installed on the CPU machines (see reference/feasibility.md), so
the `gpu` tests also skip, with a reason, where either is missing.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.backends import BACKENDS, BackendOptions, check_precision, get_backend
from harness.backends.tensorrt import TensorRTBackend
from harness.backends.trt_engine import (
    INSTALL_HINT,
    EngineKey,
    TrtSettings,
    atomic_write,
    backend_error,
    import_runtime,
    input_shapes,
    is_out_of_memory,
    numpy_dtype,
    parse_cuda_device,
    parse_settings,
    parser_error,
    profile_shapes,
)
from harness.config import default_cache_dir
from harness.errors import BackendError, BackendUnavailable, ConfigError, ModelError, OutOfMemory
from harness.models import inspect_model
from harness.models.info import ModelInfo, TensorSpec
from tests import quirkmodels


def _runtime_missing() -> str | None:
    try:
        import_runtime()
    except BackendUnavailable as exc:
        return str(exc)
    return None


MISSING = _runtime_missing()
needs_runtime = pytest.mark.skipif(MISSING is not None, reason=f"{MISSING}")


def trt_backend(model: Path, cache: Path, **kw: Any) -> TensorRTBackend:
    extra = {"cache_dir": str(cache), **kw.pop("extra", {})}
    options = BackendOptions(device=kw.pop("device", "cuda"), extra=extra, **kw)
    return TensorRTBackend(model, options)


# --- devices, precisions, options --------------------------------------------------------


@pytest.mark.parametrize(("device", "index"), [("cuda", 0), ("cuda:0", 0), ("cuda:3", 3)])
def test_cuda_devices(device: str, index: int) -> None:
    assert parse_cuda_device(device) == index
    assert TensorRTBackend.precisions(device) == ("fp32", "fp16", "int8")


@pytest.mark.parametrize("device", ["cpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "gpu", ""])
def test_other_devices_are_config_errors_naming_the_device(device: str) -> None:
    with pytest.raises(ConfigError, match="tensorrt") as info:
        TensorRTBackend.precisions(device)
    assert repr(device) in str(info.value)
    with pytest.raises(ConfigError):
        check_precision(TensorRTBackend, "fp32", device)


def test_cpu_is_refused_at_construction(mlp_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'cpu'"):
        trt_backend(mlp_model, tmp_path, device="cpu")


def test_registered() -> None:
    assert BACKENDS["tensorrt"] is TensorRTBackend
    assert get_backend("tensorrt") is TensorRTBackend


def test_settings_defaults_and_values(tmp_path: Path) -> None:
    assert parse_settings({}) == TrtSettings(default_cache_dir(), None, False)
    got = parse_settings({"cache_dir": str(tmp_path), "workspace_mb": 512, "cuda_graphs": True})
    assert got == TrtSettings(tmp_path, 512, True)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("workspace_mb", 0),
        ("workspace_mb", "1G"),
        ("workspace_mb", True),
        ("cuda_graphs", 1),
        ("cache_dir", ""),
        ("cache_dir", 3),
    ],
)
def test_bad_option_values_are_config_errors(
    mlp_model: Path, tmp_path: Path, key: str, value: object
) -> None:
    with pytest.raises(ConfigError, match=key):
        TensorRTBackend(mlp_model, BackendOptions(device="cuda", extra={key: value}))


def test_unknown_option_lists_the_valid_ones(mlp_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp16_flag") as info:
        trt_backend(mlp_model, tmp_path, extra={"fp16_flag": True})
    for name in ("cache_dir", "workspace_mb", "cuda_graphs"):
        assert name in str(info.value)


# --- engine cache -------------------------------------------------------------------------

KEY = EngineKey("ab" * 32, "fp16", 8, "NVIDIA H200", (9, 0), "10.13.0.35")


def test_engine_path_is_stable_and_under_the_cache(tmp_path: Path) -> None:
    path = KEY.engine_path(tmp_path)
    assert path == EngineKey(*KEY.__dict__.values()).engine_path(tmp_path)
    assert path.parent == tmp_path / "engines"
    assert path.name.startswith("fp16-b8-nvidia-h200-sm90-trt10.13.0.35-")
    assert path.suffix == ".plan"


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "cd" * 32},
        {"precision": "int8"},
        {"max_batch": 16},
        {"gpu_name": "Tesla T4"},
        {"compute_capability": (8, 9)},
        {"trt_version": "11.4.0.106"},
        {"input_shapes": (("input_ids", (128,)),)},
    ],
)
def test_every_key_field_changes_the_engine(tmp_path: Path, change: dict[str, Any]) -> None:
    other = EngineKey(**{**KEY.__dict__, **change})
    assert other.digest() != KEY.digest()
    assert other.engine_path(tmp_path) != KEY.engine_path(tmp_path)


def test_timing_cache_is_per_gpu_and_tensorrt_version(tmp_path: Path) -> None:
    same_gpu = EngineKey(**{**KEY.__dict__, "model_sha256": "00" * 32, "max_batch": 1})
    assert same_gpu.timing_cache_path(tmp_path) == KEY.timing_cache_path(tmp_path)
    newer = EngineKey(**{**KEY.__dict__, "trt_version": "11.4.0.106"})
    assert newer.timing_cache_path(tmp_path) != KEY.timing_cache_path(tmp_path)
    assert KEY.timing_cache_path(tmp_path).parent == tmp_path / "engines"


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "engines" / "x.plan"
    atomic_write(path, b"one")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(path.parent) == ["x.plan"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_atomic_write_failure_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.plan"
    atomic_write(path, b"old")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.plan"]


def test_profile_shapes_cover_batch_one_to_max(mlp_model: Path) -> None:
    model = inspect_model(mlp_model)
    assert profile_shapes(model, 8) == {"input": ((1, 16), (8, 16), (8, 16))}


def test_profile_shapes_for_every_input() -> None:
    model = ModelInfo(
        "two",
        Path("two.onnx"),
        "0" * 64,
        (TensorSpec("image", "float32", (3, 4, 4)), TensorSpec("mask", "bool", ())),
        (TensorSpec("out", "float32", (10,)),),
    )
    shapes = profile_shapes(model, 3)
    assert shapes["image"] == ((1, 3, 4, 4), (3, 3, 4, 4), (3, 3, 4, 4))
    assert shapes["mask"] == ((1,), (3,), (3,))


def test_profile_shapes_put_the_batch_where_each_input_has_it(tmp_path: Path) -> None:
    """A state [2, batch, 4] gets its profile on axis 1 and a rank-0 sample rate one shape
    for all three; the engine key tells the state's layout from a batch-first one."""
    model = inspect_model(quirkmodels.stateful(tmp_path / "vad.onnx"))
    shapes = profile_shapes(model, 8)
    assert shapes["input"] == ((1, 16), (8, 16), (8, 16))
    assert shapes["state"] == ((2, 1, 4), (2, 8, 4), (2, 8, 4))
    assert shapes["sr"] == ((), (), ())
    assert input_shapes(model) == (("input", (16,)), ("state", (2, -1, 4)), ("sr", ()))


def _sequence_model(path: Path) -> Path:
    """Token ids [batch, sequence] -> Cast -> float [batch, sequence]: a symbolic sequence."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["out"], to=TensorProto.FLOAT)],
        "seq",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "sequence"])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_bound_sequence_sizes_the_profile_and_the_engine_key(tmp_path: Path) -> None:
    path = _sequence_model(tmp_path / "seq.onnx")
    short = inspect_model(path, dims={"sequence": 128})
    long = inspect_model(path, dims={"sequence": 384})
    assert profile_shapes(short, 8) == {"input_ids": ((1, 128), (8, 128), (8, 128))}
    assert input_shapes(short) == (("input_ids", (128,)),)
    keys = [EngineKey(*astuple(KEY)[:6], input_shapes(m)) for m in (short, long)]
    assert keys[0].engine_path(tmp_path) != keys[1].engine_path(tmp_path)


# --- error mapping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[runtime.cpp::allocate::197] Error Code 1: Cuda Runtime (out of memory)",
        "cuMemAlloc failed: out of memory",
        "CUDA_ERROR_OUT_OF_MEMORY",
        "cudaErrorMemoryAllocation",
        "Requested amount of GPU memory (1073741824 bytes) could not be allocated.",
        "There may not be enough free memory for allocation to succeed.",
    ],
)
def test_out_of_memory_texts(text: str) -> None:
    assert is_out_of_memory(text)
    error = backend_error("building", RuntimeError(text))
    assert isinstance(error, OutOfMemory) and str(error).startswith("out of memory: tensorrt")


def test_memory_error_types_are_out_of_memory() -> None:
    class MemoryError(Exception):  # pycuda.driver.MemoryError's name, not Python's class
        pass

    assert isinstance(backend_error("mem_alloc", MemoryError("cuMemAlloc failed")), OutOfMemory)
    assert isinstance(backend_error("host", builtins_memory_error()), OutOfMemory)


def builtins_memory_error() -> BaseException:
    return MemoryError("host allocation")


def test_builder_none_after_an_oom_log_is_out_of_memory() -> None:
    log = ["some warning", "[virtualMemoryBuffer.cpp::resizePhysical] Error Code 2: OutOfMemory"]
    error = backend_error("engine build failed for m.onnx", log=log)
    assert isinstance(error, OutOfMemory)
    assert "OutOfMemory" in str(error) and "\n" not in str(error)


def test_other_failures_are_backend_errors() -> None:
    error = backend_error("engine build failed for m.onnx", log=["Error Code 4: invalid node"])
    assert type(error) is BackendError
    assert str(error) == "tensorrt: engine build failed for m.onnx: Error Code 4: invalid node"
    assert type(backend_error("x", ValueError("bad\nshape"))) is BackendError
    assert "no detail" in str(backend_error("x"))


def test_parser_errors_are_listed_on_one_line() -> None:
    error = parser_error(
        Path("/m/model.onnx"), ["In node 3 (Foo): UNSUPPORTED_NODE", "two\nlines"]
    )
    assert isinstance(error, ModelError)
    assert str(error) == (
        "tensorrt cannot parse model.onnx: 2 error(s): "
        "In node 3 (Foo): UNSUPPORTED_NODE | two lines"
    )


def test_numpy_dtype_maps_and_names_unmappable_tensors() -> None:
    table = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8}

    def nptype(trt_type: str) -> Any:
        if trt_type not in table:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return table[trt_type]

    assert numpy_dtype(nptype, "HALF", "x") == np.dtype(np.float16)
    with pytest.raises(BackendError, match=r"'logits'.*BF16"):
        numpy_dtype(nptype, "BF16", "logits")


# --- without TensorRT ---------------------------------------------------------------------


@pytest.mark.skipif(MISSING is None, reason="TensorRT and pycuda are installed here")
def test_missing_runtime_says_to_install_the_gpu_extra(mlp_model: Path, tmp_path: Path) -> None:
    backend = trt_backend(mlp_model, tmp_path, streams=2)  # constructing needs nothing
    for call in (backend.load, backend.info):
        with pytest.raises(BackendUnavailable) as info:
            call()
        message = str(info.value)
        assert INSTALL_HINT in message and "\n" not in message
        assert info.value.exit_code == 1
    backend.close()
    assert not (tmp_path / "engines").exists()


# --- on a GPU -----------------------------------------------------------------------------


def make_tiny_resnet(path: Path, seed: int = 0) -> Path:
    """Conv-ReLU-Conv plus a residual add, global pool and a classifier: [N,3,16,16] -> [N,10]."""
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    inits = [
        numpy_helper.from_array(weight(8, 3, 3, 3), "w0"),
        numpy_helper.from_array(weight(8, 8, 3, 3), "w1"),
        numpy_helper.from_array(weight(8, 8, 3, 3), "w2"),
        numpy_helper.from_array(weight(10, 8), "fc"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    pads = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["image", "w0"], ["c0"], **pads),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], **pads),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], **pads),
        helper.make_node("Add", ["c2", "r0"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_resnet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def reference(model: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {"image": batch})[0]
    return out


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16), dtype=np.float32)


@pytest.mark.gpu
@needs_runtime
def test_gpu_engine_matches_onnxruntime_on_every_stream(tmp_path: Path) -> None:
    model = make_tiny_resnet(tmp_path / "tiny.onnx")
    backend = trt_backend(model, tmp_path / "cache", max_batch=4, streams=3)
    with backend:
        info = backend.info()
        assert info.backend == "tensorrt" and not info.simulated
        assert info.device and "cpu" not in info.device.lower()
        assert {"tensorrt", "pycuda", "cuda_driver"} <= set(info.versions)
        assert info.details["engine_cached"] is False and info.details["engine_build_s"] > 0
        assert Path(info.details["engine_path"]).is_file()
        assert Path(info.details["timing_cache"]).is_file()
        for n in (1, 3, 4):
            # Each stream its own batch, at once: an output swapped or mixed between streams
            # would not match its own batch's reference.
            feeds = [{"image": images(n, seed=10 * n + stream)} for stream in range(3)]
            want = [reference(model, feed["image"]) for feed in feeds]
            assert not np.allclose(want[0], want[1])
            with ThreadPoolExecutor(3) as pool:
                got = list(pool.map(lambda f, s: backend.infer(f, s)[0], feeds, range(3)))
            for stream, out in enumerate(got):
                assert out.shape == (n, 10)
                np.testing.assert_allclose(out, want[stream], rtol=1e-2, atol=1e-3)


@pytest.mark.gpu
@needs_runtime
def test_gpu_second_load_reuses_the_cached_engine(tmp_path: Path) -> None:
    model = make_tiny_resnet(tmp_path / "tiny.onnx")
    first = trt_backend(model, tmp_path / "cache", max_batch=2)
    with first:
        built = first.infer({"image": images(2)}, 0)[0]
        engine = Path(first.info().details["engine_path"])
    plan, written = engine.read_bytes(), engine.stat().st_mtime_ns
    second = trt_backend(model, tmp_path / "cache", max_batch=2)
    with second:
        details = second.info().details
        assert details["engine_cached"] is True and details["engine_build_s"] == 0.0
        assert Path(details["engine_path"]) == engine
        np.testing.assert_allclose(second.infer({"image": images(2)}, 0)[0], built, rtol=1e-6)
    # Read, not built again: the plan file is the one the first load wrote, untouched.
    assert engine.read_bytes() == plan and engine.stat().st_mtime_ns == written
    other_batch = trt_backend(model, tmp_path / "cache", max_batch=3)
    with other_batch:
        assert other_batch.info().details["engine_cached"] is False


@pytest.mark.gpu
@needs_runtime
def test_gpu_cuda_graphs_give_the_same_outputs(tmp_path: Path) -> None:
    model = make_tiny_resnet(tmp_path / "tiny.onnx")
    plain = trt_backend(model, tmp_path / "cache", max_batch=4, streams=2)
    graphs = trt_backend(
        model, tmp_path / "cache", max_batch=4, streams=2, extra={"cuda_graphs": True}
    )
    with plain, graphs:
        for n in (4, 2, 4):
            batch = images(n, seed=10 + n)
            want = plain.infer({"image": batch}, 0)[0]
            for stream in (0, 1):
                np.testing.assert_allclose(
                    graphs.infer({"image": batch}, stream)[0], want, rtol=1e-5
                )


@pytest.mark.gpu
@needs_runtime
def test_gpu_fp16_variant_agrees_with_fp32(tmp_path: Path) -> None:
    from harness.precision import make_variant

    model = inspect_model(make_tiny_resnet(tmp_path / "tiny.onnx"))
    variant = make_variant(model, "fp16", {}, tmp_path / "cache")
    backend = trt_backend(variant.path, tmp_path / "cache", max_batch=8, precision="fp16")
    with backend:
        batch = images(8)
        got = backend.infer({"image": batch}, 0)[0]
    want = reference(model.path, batch)
    assert got.dtype == np.float32
    assert np.mean(np.argmax(got, 1) == np.argmax(want, 1)) >= 0.75


@pytest.mark.gpu
@needs_runtime
def test_gpu_unparsable_model_lists_the_parser_errors(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"], domain="custom.ops")],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)]
    )
    model.ir_version = 8
    onnx.save(model, tmp_path / "bad.onnx")
    backend = trt_backend(tmp_path / "bad.onnx", tmp_path / "cache")
    with pytest.raises(ModelError, match=r"tensorrt cannot parse bad\.onnx: \d+ error"):
        backend.load()
    backend.close()


@pytest.mark.gpu
@needs_runtime
def test_gpu_batch_over_the_profile_is_a_backend_error(tmp_path: Path) -> None:
    model = make_tiny_resnet(tmp_path / "tiny.onnx")
    backend = trt_backend(model, tmp_path / "cache", max_batch=2)
    with backend, pytest.raises(BackendError, match=r"outside the engine's profile 1\.\.2"):
        backend.infer({"image": images(3)}, 0)


def test_engines_go_to_the_runs_cache_folder_unless_the_option_says_otherwise(
    tmp_path: Path,
) -> None:
    model = tmp_path / "m.onnx"
    run_cache, own = tmp_path / "run-cache", tmp_path / "own"
    backend = TensorRTBackend(model, BackendOptions(device="cuda", cache_dir=run_cache))
    assert backend.settings.cache_dir == run_cache
    backend = TensorRTBackend(
        model, BackendOptions(device="cuda", cache_dir=run_cache, extra={"cache_dir": str(own)})
    )
    assert backend.settings.cache_dir == own


@pytest.mark.gpu
@needs_runtime
def test_gpu_engine_for_a_bound_sequence_runs_that_length(tmp_path: Path) -> None:
    model = _sequence_model(tmp_path / "seq.onnx")
    backend = trt_backend(model, tmp_path / "cache", max_batch=4, dims={"sequence": 24})
    with backend:
        ids = np.arange(3 * 24, dtype=np.int64).reshape(3, 24)
        (out,) = backend.infer({"input_ids": ids}, 0)
        np.testing.assert_array_equal(out, ids.astype(np.float32))


@pytest.mark.gpu
@needs_runtime
def test_gpu_a_state_batched_on_axis_1_matches_per_sample(tmp_path: Path) -> None:
    """The engine's profile puts the batch on the state's axis 1; a short batch fills the
    leading elements of each buffer, and every sample's answer is its own."""
    model = quirkmodels.stateful(tmp_path / "vad.onnx")
    rng = np.random.default_rng(6)
    with trt_backend(model, tmp_path / "cache", max_batch=4, streams=1) as backend:
        for n in (4, 3, 1):
            inputs = quirkmodels.stateful_batch(rng, n)
            quirkmodels.check_stateful(backend.infer(inputs, 0), inputs, tolerance=1e-3)

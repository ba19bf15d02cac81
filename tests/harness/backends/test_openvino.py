"""The OpenVINO backend beyond the shared contract: its outputs against ONNX Runtime's on
both batch shapes (short batches padded or not), distinct inputs on concurrent streams, the
CPU flags bf16 needs, its cache, what it tells `info()`, and its errors."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import harness.backends.openvino as ov_backend
from harness.backends import BACKENDS, BackendOptions, check_precision, default_runtimes
from harness.backends.base import backend_error
from harness.backends.onnxruntime import OnnxRuntimeBackend
from harness.backends.openvino import OpenVinoBackend, has_bf16
from harness.errors import ConfigError, ModelUnreadable, OutOfMemory
from tests import quirkmodels

FEATURES = 16


def _batch(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((n, FEATURES), dtype=np.float32)}


@pytest.fixture
def reference(mlp_model: Path) -> Iterator[OnnxRuntimeBackend]:
    backend = OnnxRuntimeBackend(mlp_model, BackendOptions(max_batch=4))
    with backend:
        yield backend


@pytest.mark.parametrize("shape", ["static", "dynamic"])
def test_every_batch_size_matches_onnxruntime(
    mlp_model: Path, reference: OnnxRuntimeBackend, shape: str
) -> None:
    """A static model runs a short batch padded to its full batch and hands back only the
    batch's rows; a dynamic one runs it as it is. Both agree with ONNX Runtime fp32."""
    options = BackendOptions(max_batch=4, extra={"batch_shape": shape})
    with OpenVinoBackend(mlp_model, options) as backend:
        for n in (4, 1, 3, 4):
            inputs = _batch(n, seed=n)
            got, want = backend.infer(inputs, 0), reference.infer(inputs, 0)
            assert [o.shape for o in got] == [o.shape for o in want]
            for g, w in zip(got, want, strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", ["static", "dynamic"])
def test_concurrent_streams_each_get_their_own_outputs(
    mlp_model: Path, reference: OnnxRuntimeBackend, shape: str
) -> None:
    """Three streams at once, each with its own inputs and batch size: a request or padding
    buffer shared between streams would hand one stream another's rows."""
    streams = 3
    options = BackendOptions(max_batch=4, streams=streams, extra={"batch_shape": shape})
    with OpenVinoBackend(mlp_model, options) as backend:
        inputs = {
            s: [_batch(1 + (s + i) % 4, seed=10 * s + i) for i in range(8)] for s in (0, 1, 2)
        }

        def work(stream: int) -> list[list[np.ndarray]]:
            return [backend.infer(batch, stream) for batch in inputs[stream]]

        with ThreadPoolExecutor(streams) as pool:
            results = dict(zip(range(streams), pool.map(work, range(streams)), strict=True))
    for stream, outputs in results.items():
        for batch, got in zip(inputs[stream], outputs, strict=True):
            want = reference.infer(batch, 0)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)


def test_streams_and_threads_reach_the_compiled_model(mlp_model: Path) -> None:
    """`streams` CPU streams of `threads` each, one infer request per stream worker; what
    OpenVINO compiled is read back from the compiled model, not from our own options."""
    options = BackendOptions(max_batch=2, streams=2, threads=1, precision="fp32")
    with OpenVinoBackend(mlp_model, options) as backend:
        details = backend.info().details
    assert details["num_streams"] == 2
    assert details["inference_num_threads"] == 2
    assert details["requests"] == 2
    assert details["inference_precision"] == "f32"
    assert details["batch_shape"] == "static"


def test_compiled_models_are_cached_in_the_runs_cache_folder(
    mlp_model: Path, tmp_path: Path
) -> None:
    options = BackendOptions(max_batch=2, cache_dir=tmp_path / "cache")
    with OpenVinoBackend(mlp_model, options) as first:
        assert first.info().details["loaded_from_cache"] is False
    assert any((tmp_path / "cache" / "openvino").iterdir())
    with OpenVinoBackend(mlp_model, options) as again:
        assert again.info().details["loaded_from_cache"] is True


def test_bf16_is_offered_only_with_a_bf16_cpu_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    assert has_bf16(["avx2", "avx512_bf16"]) and has_bf16(["amx_bf16", "amx_tile"])
    assert not has_bf16(["avx2", "avx512_vnni"]) and not has_bf16([])
    monkeypatch.setattr(ov_backend, "cpu_flags", lambda: ["avx2", "avx512_vnni"])
    monkeypatch.setattr(ov_backend, "cpu_name", lambda: "Test CPU (2 cores)")
    assert OpenVinoBackend.precisions("cpu") == ("fp32", "int8")
    with pytest.raises(ConfigError) as info:
        check_precision(OpenVinoBackend, "bf16", "cpu")
    message = str(info.value)
    assert "avx512_bf16" in message and "amx_bf16" in message and "Test CPU" in message
    monkeypatch.setattr(ov_backend, "cpu_flags", lambda: ["avx512_bf16"])
    assert OpenVinoBackend.precisions("cpu") == ("fp32", "bf16", "int8")
    check_precision(OpenVinoBackend, "bf16", "cpu")


def test_bf16_runs_where_the_cpu_has_it(mlp_model: Path, reference: OnnxRuntimeBackend) -> None:
    if not has_bf16():
        pytest.skip("this CPU has neither avx512_bf16 nor amx_bf16")
    options = BackendOptions(max_batch=4, precision="bf16")
    with OpenVinoBackend(mlp_model, options) as backend:
        assert backend.info().details["inference_precision"] == "bf16"
        inputs = _batch(4, seed=1)
        got, want = backend.infer(inputs, 0)[0], reference.infer(inputs, 0)[0]
    assert not np.array_equal(got, want)  # bf16 rounding shows
    np.testing.assert_allclose(got, want, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_gpu_device_is_refused_naming_it(mlp_model: Path, device: str) -> None:
    with pytest.raises(ConfigError, match=f"openvino runs on the CPU only, not {device}"):
        OpenVinoBackend.precisions(device)
    with pytest.raises(ConfigError, match="CPU only"):
        OpenVinoBackend(mlp_model, BackendOptions(device=device))


def test_a_bad_batch_shape_is_a_config_error(mlp_model: Path) -> None:
    with pytest.raises(ConfigError, match=r"batch_shape 'ragged' not in \['static', 'dynamic'\]"):
        OpenVinoBackend(mlp_model, BackendOptions(extra={"batch_shape": "ragged"}))


def test_a_file_its_frontend_cannot_convert_is_unreadable_naming_runtime_and_file(
    tmp_path: Path,
) -> None:
    """An op OpenVINO's ONNX frontend does not know: ModelUnreadable, which a study takes as
    infeasible on this runtime for every configuration loading this file."""
    model = quirkmodels.unknown_op(tmp_path / "custom.onnx")
    with pytest.raises(ModelUnreadable, match=r"^openvino: cannot read custom\.onnx: ") as info:
        OpenVinoBackend(model, BackendOptions(max_batch=2)).load()
    assert info.value.runtime == "openvino" and "Mystery" in str(info.value)


def test_openvinos_allocation_failure_is_out_of_memory() -> None:
    exc = RuntimeError("Exception from src/inference/src/cpp/core.cpp:109: std::bad_alloc")
    error = backend_error("openvino", "cannot load m.onnx", exc)
    assert isinstance(error, OutOfMemory)
    assert "openvino" in str(error) and "bad_alloc" in str(error)


def test_the_default_cpu_runtimes_are_the_installed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_runtimes("cpu") == ("onnxruntime", "openvino")
    assert default_runtimes("cuda:0") == ("onnxruntime",)
    monkeypatch.setattr("harness.backends.openvino_installed", lambda: False)
    assert default_runtimes("cpu") == ("onnxruntime",)
    assert "openvino" in BACKENDS


@pytest.mark.parametrize("shape", ["static", "dynamic"])
@pytest.mark.parametrize("batch", ["batch", ""])
def test_a_state_batched_on_axis_1_and_a_scalar_input_match_per_sample(
    tmp_path: Path, shape: str, batch: str
) -> None:
    """silero's interface: the model is reshaped with the batch on the state's axis 1 and the
    rank-0 sample rate left as it is; a short batch is padded (static) on that axis and cut
    from the outputs there, named or (as spox writes them) anonymous, and each sample's
    answer is its own."""
    model = quirkmodels.stateful(tmp_path / "vad.onnx", batch=batch)
    options = BackendOptions(max_batch=4, extra={"batch_shape": shape})
    rng = np.random.default_rng(5)
    with OpenVinoBackend(model, options) as backend:
        for n in (4, 3, 1):
            inputs = quirkmodels.stateful_batch(rng, n)
            quirkmodels.check_stateful(backend.infer(inputs, 0), inputs)

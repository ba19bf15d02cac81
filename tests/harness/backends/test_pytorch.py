"""The torch backend: onnx2torch's module agrees with ONNX Runtime, streams, errors; the CUDA
parts (fp16/bf16, CUDA graphs, CUDA streams, out of memory) are marked `gpu`.

Without torch and onnx2torch (the `torch` extra) everything but the unavailable-message tests
skips with a reason.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.backends import BACKENDS, BackendOptions, check_precision, get_backend
from harness.backends.onnxruntime import OnnxRuntimeBackend
from harness.backends.pytorch import CUDA_PRECISIONS, TorchBackend
from harness.config import PRECISIONS, RunConfig, ScenarioSpec
from harness.dataset import synthetic_samples
from harness.device import cpu_count
from harness.errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    ModelUnreadable,
    OutOfMemory,
)
from harness.models import ModelInfo, resolve_model
from harness.precision import agreement, make_variant
from tests import quirkmodels

HAVE_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "onnx2torch"))
needs_torch = pytest.mark.skipif(
    not HAVE_TORCH,
    reason="needs torch and onnx2torch (pip install 'batch-tuner[torch]')",
)


@pytest.fixture(scope="module")
def tiny(cache_dir: Path) -> ModelInfo:
    return resolve_model("tiny", cache_dir)


@pytest.fixture(scope="module")
def mobilenet(cache_dir: Path) -> ModelInfo:
    return resolve_model("mobilenet", cache_dir)


def inputs_for(model: ModelInfo, n: int, first: int = 0) -> dict[str, np.ndarray]:
    samples = synthetic_samples(model, first + n, seed=1)
    return samples.gather(np.arange(first, first + n, dtype=np.intp))


def reference(model: ModelInfo, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    with OnnxRuntimeBackend(model.path, BackendOptions(max_batch=64)) as ort:
        return ort.infer(inputs, 0)


def torch_backend(model: Path, **options: object) -> TorchBackend:
    return TorchBackend(model, BackendOptions(**options))  # type: ignore[arg-type]


# --- registry, precisions, devices, options (no torch needed) ------------------------------


def test_registered_as_torch() -> None:
    assert get_backend("torch") is TorchBackend is BACKENDS["torch"]


def test_precisions_by_device() -> None:
    assert TorchBackend.precisions("cpu") == ("fp32",)
    assert TorchBackend.precisions("cuda") == CUDA_PRECISIONS == ("fp32", "fp16", "bf16")
    assert TorchBackend.precisions("cuda:3") == CUDA_PRECISIONS
    assert set(CUDA_PRECISIONS) <= set(PRECISIONS)
    with pytest.raises(ConfigError, match="bf16 is not supported by backend torch on cpu"):
        check_precision(TorchBackend, "bf16", "cpu")
    with pytest.raises(ConfigError, match="int8"):
        check_precision(TorchBackend, "int8", "cuda")


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cpu:0", "CUDA", "", "cuda:-1", "gpu"])
def test_bad_device_is_a_config_error(tmp_path: Path, device: str) -> None:
    with pytest.raises(ConfigError, match="device"):
        TorchBackend.precisions(device)
    with pytest.raises(ConfigError, match="device"):
        torch_backend(tmp_path / "m.onnx", device=device)


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cuda_graphs needs a cuda device"):
        torch_backend(tmp_path / "m.onnx", extra={"cuda_graphs": True})
    with pytest.raises(ConfigError, match="cuda_graphs must be true or false"):
        torch_backend(tmp_path / "m.onnx", device="cuda", extra={"cuda_graphs": "yes"})
    with pytest.raises(ConfigError, match="turbo"):
        torch_backend(tmp_path / "m.onnx", extra={"turbo": 1})


def test_bf16_is_a_run_config_precision_without_an_onnx_variant(
    tiny: ModelInfo, tmp_path: Path
) -> None:
    """bf16 passes RunConfig validation; make_variant hands back the fp32 file to cast."""
    assert RunConfig(backend="torch", device="cuda", precision="bf16").precision == "bf16"
    variant = make_variant(tiny, "bf16", {}, tmp_path)
    assert variant.path == tiny.path and variant.sha256 == tiny.sha256
    assert variant.precision == "bf16" and variant.build_seconds == 0.0
    assert not (tmp_path / "variants").exists()


def test_the_tuner_space_offers_fp32_fp16_bf16_on_cuda() -> None:
    from tuner.config import Space, StudyConfig
    from tuner.space import resolve_space

    cfg = StudyConfig(backend="torch", device="cuda", space=Space(max_batch=2, max_streams=1))
    assert resolve_space(cfg).precisions == ("fp32", "fp16", "bf16")
    picked = StudyConfig(
        backend="torch", device="cuda", space=Space(precisions=("bf16",), max_batch=2)
    )
    assert resolve_space(picked).precisions == ("fp32", "bf16")
    cpu = StudyConfig(backend="torch", device="cpu", space=Space(precisions=("bf16",)))
    with pytest.raises(ConfigError, match="bf16 is not supported by backend torch on cpu"):
        resolve_space(cpu)


# --- torch missing ------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["torch", "onnx2torch"])
def test_missing_torch_names_the_extra(
    tiny: ModelInfo, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import <missing>` raises ImportError
    backend = torch_backend(tiny.path)
    for call in (backend.load, backend.info):
        with pytest.raises(BackendUnavailable, match=r"batch-tuner\[torch\]") as info:
            call()
        message = str(info.value)
        assert "\n" not in message and "torch extra" in message and missing in message
        assert info.value.exit_code == 1
    backend.close()


# --- CPU: agreement with ONNX Runtime, streams, errors -------------------------------------


@needs_torch
@pytest.mark.parametrize("streams", [1, 2])
def test_tiny_agrees_with_onnxruntime(tiny: ModelInfo, streams: int) -> None:
    with torch_backend(tiny.path, max_batch=8, streams=streams) as backend:
        for n in (1, 5, 8):
            inputs = inputs_for(tiny, n)
            got = backend.infer(inputs, streams - 1)
            want = reference(tiny, inputs)
            assert [g.shape for g in got] == [w.shape for w in want]
            assert all(g.dtype == np.float32 for g in got)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)


@needs_torch
@pytest.mark.slow
def test_mobilenet_agrees_with_onnxruntime(mobilenet: ModelInfo) -> None:
    inputs = inputs_for(mobilenet, 4)
    with torch_backend(mobilenet.path, max_batch=4) as backend:
        got = backend.infer(inputs, 0)
    want = reference(mobilenet, inputs)
    scale = float(np.max(np.abs(want[0])))
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-4 * scale)
    assert agreement(want, got).top1 == 1.0


@needs_torch
def test_streams_are_threads_sharing_the_module(tiny: ModelInfo) -> None:
    """Each stream runs on a thread of its own, every call on the one converted module (a
    forward hook on it sees each call: the module called and the thread), each stream on its
    own batch: outputs swapped or mixed between streams would differ from its batch's."""
    streams, rounds = 3, 10
    inputs = [inputs_for(tiny, 4, first=4 * stream) for stream in range(streams)]
    want = [reference(tiny, batch) for batch in inputs]
    assert not np.allclose(want[0][0], want[1][0])  # the batches tell apart
    calls: list[tuple[int, int]] = []  # (id of the module called, thread)
    lock = threading.Lock()
    start = threading.Barrier(streams)

    def record(module: object, args: object) -> None:
        with lock:
            calls.append((id(module), threading.get_ident()))

    with torch_backend(tiny.path, max_batch=4, streams=streams) as backend:
        shared = backend._module
        hook = shared.register_forward_pre_hook(record)

        def work(stream: int) -> tuple[int, list[list[np.ndarray]]]:
            start.wait(timeout=30)
            outputs = [backend.infer(inputs[stream], stream) for _ in range(rounds)]
            return threading.get_ident(), outputs

        with ThreadPoolExecutor(streams) as pool:
            per_stream = list(pool.map(work, range(streams)))
        hook.remove()
    threads = [thread for thread, _ in per_stream]
    assert len(set(threads)) == streams  # a thread per stream
    assert len(calls) == streams * rounds  # every batch ran through the hooked module ...
    assert {module for module, _ in calls} == {id(shared)}  # ... and that one object only
    assert {thread for _, thread in calls} == set(threads)
    for stream, (_, results) in enumerate(per_stream):
        for got in results:
            np.testing.assert_allclose(got[0], want[stream][0], rtol=1e-4, atol=1e-4)


@needs_torch
def test_cpu_threads_split_the_cores(tiny: ModelInfo) -> None:
    import torch

    assert torch_backend(tiny.path, streams=4, threads=3).intra_threads() == 3
    assert torch_backend(tiny.path, streams=1000).intra_threads() == 1
    assert torch_backend(tiny.path).intra_threads() == cpu_count()
    before = torch.get_num_threads()
    try:
        with torch_backend(tiny.path, threads=1) as backend:
            assert torch.get_num_threads() == 1
            assert backend.info().details["intra_op_threads"] == 1
    finally:
        torch.set_num_threads(before)


@needs_torch
def test_info_names_the_cpu_and_versions(tiny: ModelInfo) -> None:
    import torch

    info = torch_backend(tiny.path).info()
    assert info.backend == "torch" and not info.simulated
    assert info.device.endswith(f"({cpu_count()} cores)")
    assert info.versions["torch"] == torch.__version__
    assert info.versions["onnx2torch"]


@needs_torch
def test_precision_the_device_cannot_run_is_a_config_error_at_load(tiny: ModelInfo) -> None:
    backend = torch_backend(tiny.path, precision="fp16")
    with pytest.raises(ConfigError, match="fp16 is not supported by backend torch on cpu"):
        backend.load()


@needs_torch
def test_wrong_input_is_a_backend_error(tiny: ModelInfo) -> None:
    with torch_backend(tiny.path) as backend, pytest.raises(BackendError, match="inference"):
        backend.infer({"input": np.zeros((1, 17), np.float32)}, 0)


@needs_torch
def test_not_an_onnx_file_is_a_backend_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not onnx")
    with pytest.raises(BackendError, match=r"junk\.onnx"):
        torch_backend(path).load()


@needs_torch
def test_an_op_onnx2torch_cannot_convert_makes_the_file_unreadable(tmp_path: Path) -> None:
    """The file itself is refused, whatever the batch, streams or precision: ModelUnreadable,
    which a study takes as infeasible on torch for every configuration."""
    path = quirkmodels.unknown_op(tmp_path / "custom.onnx")
    with pytest.raises(ModelUnreadable, match=r"^torch: onnx2torch cannot convert custom\.onnx"):
        torch_backend(path).load()


@needs_torch
def test_cuda_without_a_gpu_is_unavailable(tiny: ModelInfo) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    backend = torch_backend(tiny.path, device="cuda")
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        backend.load()
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        backend.info()


@needs_torch
def test_the_harness_measures_the_torch_backend(tiny: ModelInfo, tmp_path: Path) -> None:
    from harness.runner import measure

    run = RunConfig(
        model="tiny", backend="torch", batch_size=4, streams=2, samples=64, cache_dir=tmp_path
    )
    result = measure(run, ScenarioSpec(duration_s=0.2, out_dir=tmp_path / "runs"))
    assert result.valid and result.score > 0 and not result.simulated
    assert result.backend == "torch" and result.device.endswith("cores)")
    assert result.agreement is not None and result.agreement["top1"] == 1.0
    assert "torch" in result.versions


# --- CUDA ---------------------------------------------------------------------------------


def torch_cuda_missing() -> str | None:
    """Why torch cannot run on a CUDA device here (the conftest's `gpu` check asks the driver,
    so a GPU host without the torch extra, or with a CPU build of torch, lands here), or None."""
    if not HAVE_TORCH:
        return "needs torch and onnx2torch with CUDA (pip install 'batch-tuner[torch]')"
    import torch

    if not torch.cuda.is_available():
        return (
            f"needs a CUDA build of torch that sees a GPU: torch {torch.__version__} "
            "has torch.cuda.is_available() False"
        )
    return None


@pytest.fixture(scope="session")
def cuda_torch() -> None:
    """Skips the test, before any model is built, where torch cannot use CUDA here."""
    if (reason := torch_cuda_missing()) is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def resnet50(cache_dir: Path) -> ModelInfo:
    return resolve_model("resnet50", cache_dir)


@pytest.fixture
def cuda_inputs(resnet50: ModelInfo) -> dict[str, np.ndarray]:
    return inputs_for(resnet50, 32)


#: Bounds with room: on the CPU, torch fp16 ResNet-50 agreed with fp32 on 32/32 samples (max
#: error 0.8% of the largest logit) and bf16 MobileNet on 32/32 (4.4%); synthetic weights give
#: small logit margins, so top-1 is not demanded to be exact.
@pytest.mark.gpu
@pytest.mark.usefixtures("cuda_torch")
@pytest.mark.parametrize(
    ("precision", "least_top1", "most_error"), [("fp16", 0.9, 0.03), ("bf16", 0.75, 0.15)]
)
def test_cuda_half_precisions_agree_with_fp32(
    resnet50: ModelInfo,
    cuda_inputs: dict[str, np.ndarray],
    precision: str,
    least_top1: float,
    most_error: float,
) -> None:
    with torch_backend(resnet50.path, device="cuda", max_batch=32) as fp32:
        want = fp32.infer(cuda_inputs, 0)
    np.testing.assert_allclose(want[0], reference(resnet50, cuda_inputs)[0], rtol=0, atol=1e-2)
    with torch_backend(resnet50.path, device="cuda", max_batch=32, precision=precision) as half:
        got = half.infer(cuda_inputs, 0)
        assert half.info().details["dtype"] == precision
    assert got[0].dtype == np.float32
    result = agreement(want, got)
    scale = float(np.max(np.abs(want[0])))
    assert result.top1 >= least_top1, result
    assert result.max_abs_error <= most_error * scale, (result, scale)


@pytest.mark.gpu
@pytest.mark.usefixtures("cuda_torch")
def test_cuda_info_names_the_gpu(tiny: ModelInfo) -> None:
    import torch

    info = torch_backend(tiny.path, device="cuda").info()
    assert info.device == torch.cuda.get_device_name(0)
    assert info.details["device_index"] == 0


@pytest.mark.gpu
@pytest.mark.usefixtures("cuda_torch")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graphs_match_eager(resnet50: ModelInfo, precision: str) -> None:
    full, partial = inputs_for(resnet50, 8), inputs_for(resnet50, 3)
    options = {"device": "cuda", "max_batch": 8, "streams": 2, "precision": precision}
    with torch_backend(resnet50.path, **options) as eager:
        want_full, want_partial = eager.infer(full, 0), eager.infer(partial, 0)
    with torch_backend(resnet50.path, **options, extra={"cuda_graphs": True}) as graphs:
        assert graphs.info().details["cuda_graphs"] is True
        for stream in (0, 1):
            for _ in range(3):  # replays reuse the static buffers: results must not go stale
                got = graphs.infer(full, stream)
                np.testing.assert_allclose(got[0], want_full[0], rtol=1e-2, atol=1e-2)
            got = graphs.infer(partial, stream)  # eager fallback
            np.testing.assert_allclose(got[0], want_partial[0], rtol=1e-2, atol=1e-2)
        other = inputs_for(resnet50, 8, first=8)
        assert not np.allclose(graphs.infer(other, 0)[0], want_full[0])


@pytest.mark.gpu
@pytest.mark.usefixtures("cuda_torch")
def test_cuda_streams_run_concurrently_and_agree(resnet50: ModelInfo) -> None:
    """Each CUDA stream runs its own batch at once with the others: its outputs are those its
    batch gives alone on stream 0 (outputs swapped or mixed between streams differ)."""
    streams = 4
    inputs = [inputs_for(resnet50, 4, first=4 * stream) for stream in range(streams)]
    start = threading.Barrier(streams)
    with torch_backend(resnet50.path, device="cuda", max_batch=4, streams=streams) as backend:
        want = [backend.infer(batch, 0) for batch in inputs]

        def work(stream: int) -> list[list[np.ndarray]]:
            start.wait(timeout=30)
            return [backend.infer(inputs[stream], stream) for _ in range(10)]

        with ThreadPoolExecutor(streams) as pool:
            per_stream = list(pool.map(work, range(streams)))
    assert not np.allclose(want[0][0], want[1][0])  # the batches tell apart
    for stream, results in enumerate(per_stream):
        for got in results:
            np.testing.assert_allclose(got[0], want[stream][0], rtol=1e-5, atol=1e-5)


def make_tile(path: Path, repeats: int) -> Path:
    """[N, 16] -> [N, 16 * repeats] by Tile: 64 * repeats bytes per sample on the device."""
    graph = helper.make_graph(
        [helper.make_node("Tile", ["input", "repeats"], ["output"])],
        "tile",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", None])],
        [numpy_helper.from_array(np.array([1, repeats], np.int64), "repeats")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.gpu
@pytest.mark.usefixtures("cuda_torch")
def test_cuda_out_of_memory_is_mapped(tmp_path: Path) -> None:
    """An absurd batch (64 samples of 4 GiB each) raises OutOfMemory, not a crash."""
    model = make_tile(tmp_path / "tile.onnx", repeats=1 << 26)
    with torch_backend(model, device="cuda", max_batch=64) as backend:
        with pytest.raises(OutOfMemory, match="out of memory") as info:
            backend.infer({"input": np.ones((64, 16), np.float32)}, 0)
        assert isinstance(info.value, BackendError)


@pytest.mark.gpu
@pytest.mark.usefixtures("cuda_torch")
def test_cuda_device_out_of_range_is_unavailable(tiny: ModelInfo) -> None:
    with pytest.raises(BackendUnavailable, match="does not exist"):
        torch_backend(tiny.path, device="cuda:99").load()


@needs_torch
def test_a_state_batched_on_axis_1_and_a_scalar_input_match_per_sample(tmp_path: Path) -> None:
    """onnx2torch's module takes the state with its batch on axis 1 and the rank-0 sample
    rate as they are; each sample's answer is its own."""
    model = quirkmodels.stateful(tmp_path / "vad.onnx")
    rng = np.random.default_rng(7)
    with torch_backend(model, max_batch=4) as backend:
        for n in (4, 1):
            inputs = quirkmodels.stateful_batch(rng, n)
            quirkmodels.check_stateful(backend.infer(inputs, 0), inputs)

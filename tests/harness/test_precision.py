"""Precision variants on a tiny conv net built here, run in the real ONNX Runtime."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from harness.errors import ConfigError, ModelError, VariantUnavailable
from harness.models.info import ModelInfo, TensorSpec
from harness.models.inspect import inspect_model, model_sha256
from harness.precision import PRECISIONS, Agreement, Variant, agreement, make_variant

CLASSES = 3


def _tiny_net(path: Path) -> ModelInfo:
    """Conv/Relu/GlobalAveragePool/Flatten/Gemm whose logit k is about 4 x mean(channel k).

    Half the conv channels pass each input channel through, half its negation, so after Relu and
    pooling their difference is the channel mean; inputs with one boosted channel then give
    logits about 8 apart, far beyond int8 rounding, and the predicted class varies by input.
    """
    rng = np.random.default_rng(7)
    conv = rng.normal(0.0, 0.02, (2 * CLASSES, CLASSES, 3, 3)).astype(np.float32)
    for c in range(CLASSES):
        conv[c, c, 1, 1] = 1.0
        conv[CLASSES + c, c, 1, 1] = -1.0
    gemm = rng.normal(0.0, 0.05, (CLASSES, 2 * CLASSES)).astype(np.float32)
    for k in range(CLASSES):
        gemm[k, k] += 4.0
        gemm[k, CLASSES + k] -= 4.0
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
            helper.make_node("Flatten", ["pool"], ["flat"]),
            helper.make_node("Gemm", ["flat", "g", "gb"], ["logits"], transB=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", CLASSES, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        [
            numpy_helper.from_array(conv, "w"),
            numpy_helper.from_array(np.full(2 * CLASSES, 0.01, np.float32), "b"),
            numpy_helper.from_array(gemm, "g"),
            numpy_helper.from_array(np.zeros(CLASSES, np.float32), "gb"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return ModelInfo(
        name="tiny",
        path=path,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        inputs=(TensorSpec("input", "float32", (CLASSES, 8, 8)),),
        outputs=(TensorSpec("logits", "float32", (CLASSES,)),),
    )


def _inputs(count: int, seed: int) -> np.ndarray:
    """Noise with one randomly chosen channel boosted: that channel is the true class."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (count, CLASSES, 8, 8)).astype(np.float32)
    x[np.arange(count), rng.integers(0, CLASSES, count)] += 2.0
    return x


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [session.run(None, {"input": x[i : i + 8]})[0] for i in range(0, len(x), 8)]
    )


def _leftovers(cache: Path) -> list[str]:
    return sorted(
        p.name
        for p in (cache / "variants").iterdir()
        if not p.name.endswith((".onnx", ".onnx.sha256"))
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    return _tiny_net(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def calibration() -> dict[str, np.ndarray]:
    return {"input": _inputs(32, seed=1)}


@pytest.fixture(scope="module")
def test_inputs() -> np.ndarray:
    return _inputs(64, seed=2)


def test_fp32_is_the_model_file_itself(tiny: ModelInfo, tmp_path: Path) -> None:
    v = make_variant(tiny, "fp32", {}, tmp_path)
    assert v == Variant("fp32", tiny.path, tiny.sha256, tiny.sha256, 0.0, cached=True)
    assert not (tmp_path / "variants").exists()


def test_unknown_precision_lists_the_valid_ones(tiny: ModelInfo, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_variant(tiny, "int4", {}, tmp_path)
    assert "'int4'" in str(info.value)
    assert all(p in str(info.value) for p in PRECISIONS)


def test_fp16_has_half_weights_float_io_and_runs_in_ort_cpu(
    tiny: ModelInfo, tmp_path: Path, test_inputs: np.ndarray
) -> None:
    v = make_variant(tiny, "fp16", {}, tmp_path)
    assert (v.precision, v.cached, v.source_sha256) == ("fp16", False, tiny.sha256)
    assert v.path.parent == tmp_path / "variants"
    assert v.sha256 == hashlib.sha256(v.path.read_bytes()).hexdigest()
    onnx.checker.check_model(str(v.path))
    model = onnx.load(str(v.path))
    assert {i.data_type for i in model.graph.initializer} == {TensorProto.FLOAT16}
    io = [*model.graph.input, *model.graph.output]
    assert {t.type.tensor_type.elem_type for t in io} == {TensorProto.FLOAT}
    # ORT's CPU provider runs it, but (on x86) upcasts the fp16 nodes back to fp32 internally.
    out = _run(v.path, test_inputs)
    assert out.dtype == np.float32
    score = agreement([_run(tiny.path, test_inputs)], [out])
    assert score.top1 == 1.0
    assert score.max_abs_error < 0.05
    # onnx's reference evaluator computes in real float16: the file itself is right too.
    evaluated = ReferenceEvaluator(str(v.path)).run(None, {"input": test_inputs[:16]})[0]
    assert agreement([out[:16]], [evaluated]).max_abs_error < 0.05


def test_int8_is_qdq_runs_in_ort_and_agrees_with_fp32(
    tiny: ModelInfo, tmp_path: Path, calibration: dict[str, np.ndarray], test_inputs: np.ndarray
) -> None:
    v = make_variant(tiny, "int8", calibration, tmp_path)
    assert (v.precision, v.cached, v.note) == ("int8", False, "")
    onnx.checker.check_model(str(v.path))
    ops = {n.op_type for n in onnx.load(str(v.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    reference = _run(tiny.path, test_inputs)
    assert len(set(np.argmax(reference, axis=1))) == CLASSES  # the top-1 check means something
    score = agreement([reference], [_run(v.path, test_inputs)])
    assert score.samples == 64
    assert score.top1 >= 0.9
    assert _leftovers(tmp_path) == []


def test_int8_falls_back_when_pre_processing_fails(
    tiny: ModelInfo,
    tmp_path: Path,
    calibration: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnxruntime.quantization

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("symbolic shape inference\nfailed")

    monkeypatch.setattr(onnxruntime.quantization, "quant_pre_process", fail)
    v = make_variant(tiny, "int8", calibration, tmp_path)
    assert v.note == (
        "quant_pre_process failed (symbolic shape inference failed); quantized without it"
    )
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(v.path)).graph.node}
    assert make_variant(tiny, "int8", calibration, tmp_path).note == v.note  # kept in the file
    assert _leftovers(tmp_path) == []


def test_cache_hit_and_key(
    tiny: ModelInfo, tmp_path: Path, calibration: dict[str, np.ndarray]
) -> None:
    first = make_variant(tiny, "int8", calibration, tmp_path)
    mtime = first.path.stat().st_mtime_ns
    again = make_variant(tiny, "int8", calibration, tmp_path)
    assert again == dataclasses.replace(first, build_seconds=0.0, cached=True)
    assert again.path.stat().st_mtime_ns == mtime  # not rebuilt
    other_source = dataclasses.replace(tiny, sha256="0" * 64)
    assert make_variant(other_source, "int8", calibration, tmp_path).path != first.path
    other_data = {"input": calibration["input"] + 0.5}
    assert make_variant(tiny, "int8", other_data, tmp_path).path != first.path
    # Calibration data does not enter the fp16 key; the source does.
    fp16 = make_variant(tiny, "fp16", calibration, tmp_path)
    assert make_variant(tiny, "fp16", other_data, tmp_path).path == fp16.path
    assert make_variant(other_source, "fp16", {}, tmp_path).path != fp16.path
    assert _leftovers(tmp_path) == []


def test_concurrent_builds_of_one_variant(tiny: ModelInfo, tmp_path: Path) -> None:
    barrier = threading.Barrier(2)
    results: list[Variant] = []

    def build() -> None:
        barrier.wait()
        results.append(make_variant(tiny, "fp16", {}, tmp_path))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    assert results[0].path == results[1].path
    assert results[0].sha256 == results[1].sha256
    onnx.checker.check_model(str(results[0].path))
    assert _leftovers(tmp_path) == []


def test_failed_int8_build_is_a_one_line_model_error(tiny: ModelInfo, tmp_path: Path) -> None:
    wrong_rank = {"input": np.zeros((4, CLASSES, 8), np.float32)}
    with pytest.raises(ModelError) as info:
        make_variant(tiny, "int8", wrong_rank, tmp_path)
    assert "int8" in str(info.value)
    assert "tiny" in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, VariantUnavailable)
    assert "is infeasible for model 'tiny': the converter failed" in str(info.value)
    # No half-built variant is left; the refusal is kept, so the next trial of this precision
    # says why at once instead of failing the same build again.
    left = [p.name for p in (tmp_path / "variants").iterdir()]
    assert len(left) == 1 and left[0].endswith(".refused")
    with pytest.raises(VariantUnavailable) as again:
        make_variant(tiny, "int8", wrong_rank, tmp_path)
    assert str(again.value) == str(info.value)


def test_int8_needs_calibration_for_every_input(tiny: ModelInfo, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="'input'"):
        make_variant(tiny, "int8", {"other": np.zeros((4, 1))}, tmp_path)


def test_agreement_on_hand_made_outputs() -> None:
    reference = [
        np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 2, 3]], np.float32),
        np.array([1.0, 2.0, 3.0, 4.0]),
    ]
    candidate = [
        np.array([[0.5, 0, 0], [0, 1, 0.5], [0.75, 0, 0.5], [1, 2, 3]], np.float16),
        np.array([1.0, 2.5, 3.0, 3.75], np.float32),
    ]
    score = agreement(reference, candidate)
    assert score == Agreement(4, 0.75, 0.75, metric="top1", value=0.75)
    assert score.to_dict() == {
        "samples": 4,
        "top1": 0.75,
        "max_abs_error": 0.75,
        "metric": "top1",
        "value": 0.75,
        "output": "",
        "accuracy": pytest.approx(math.nan, nan_ok=True),
        "reference_accuracy": pytest.approx(math.nan, nan_ok=True),
    }
    second = agreement(reference, candidate, output=1, output_name="score")
    # One value per sample: 1 - mean |b - a| / |a| = 1 - (0 + 0.25 + 0 + 0.0625) / 4.
    assert (second.metric, second.output) == ("relative", "score")
    assert second.value == pytest.approx(1 - 0.3125 / 4)


def test_cosine_fits_hidden_states_and_can_be_chosen() -> None:
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(4, 6, 8))
    flipped = hidden.copy()
    flipped[0] *= -1  # one sample points the other way: cosine -1 there, 1 elsewhere
    score = agreement([hidden], [flipped])
    assert score.metric == "cosine"
    assert score.value == pytest.approx((3 - 1) / 4)
    assert math.isnan(score.top1) is False  # hidden states have a last axis > 1: argmax exists
    logits = rng.normal(size=(5, 3))
    assert agreement([logits], [2 * logits], metric="cosine").value == pytest.approx(1.0)
    assert agreement([logits], [2 * logits], metric="relative").value == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="unknown value 'mse'"):
        agreement([logits], [logits], metric="mse")


def test_agreement_without_class_scores() -> None:
    score = agreement([np.array([1.0, 2.0])], [np.array([1.0, 1.5])])
    assert (score.samples, score.max_abs_error) == (2, 0.5)
    assert math.isnan(score.top1)
    assert math.isnan(score.to_dict()["top1"])
    single = agreement([np.ones((3, 1))], [np.ones((3, 1))])
    assert math.isnan(single.top1)


def test_agreement_rejects_mismatched_outputs() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        agreement([np.zeros((2, 3))], [np.zeros((3, 3))])
    with pytest.raises(ValueError, match="number of outputs"):
        agreement([np.zeros((2, 3))], [])


def test_external_data_model_variants_keep_their_weights_beside_them(
    tiny: ModelInfo,
    tmp_path: Path,
    calibration: dict[str, np.ndarray],
    test_inputs: np.ndarray,
) -> None:
    folder = tmp_path / "exported"
    folder.mkdir()
    path = folder / "tiny.onnx"
    onnx.save_model(
        onnx.load(str(tiny.path)),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="tiny.onnx.data",
        size_threshold=0,
    )
    external = inspect_model(path)
    assert external.sha256 != tiny.sha256  # the hash covers the weights file too
    reference = _run(path, test_inputs)
    cache = tmp_path / "cache"
    for precision in ("fp16", "int8"):
        v = make_variant(external, precision, calibration, cache)
        data = v.path.with_name(v.path.name + ".data")
        assert data.is_file(), precision
        assert (
            v.sha256 == model_sha256(v.path)[0] != hashlib.sha256(v.path.read_bytes()).hexdigest()
        )
        score = agreement([reference], [_run(v.path, test_inputs)])
        assert score.top1 >= 0.9, (precision, score)
        assert make_variant(external, precision, calibration, cache).cached
    assert not [p for p in (cache / "variants").iterdir() if p.name.startswith(".build-")]


def test_a_refused_int8_build_leaves_nothing_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime's symbolic shape inference, stopping short at an op it does not know,
    saves what it inferred to the working folder; the build keeps that in its own folder."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Mystery", ["h"], ["y"], domain="example.custom"),
        ],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8), str(path))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    feeds = {"x": np.ones((8, 4), np.float32)}
    with pytest.raises(VariantUnavailable, match="Mystery"):
        make_variant(inspect_model(path), "int8", feeds, Path("cache"))
    assert sorted(p.name for p in work.iterdir()) == ["cache"]

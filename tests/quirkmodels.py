"""Small ONNX models with the quirks trained models' exporters leave in their files, each
runnable by ONNX Runtime: a batch written -1 with '?' sizes (paddle2onnx), a recurrent state
batched on axis 1 beside a rank-0 sample rate (silero's VAD), anonymous `unk__N` dims and a
jax one-hot as `Equal` against a range (jax2tf + tf2onnx), a `OneHot` op, an input shared by
the whole batch, and a batch fixed at 1; and two that not every runtime reads: an op of an
unknown domain (none does), ONNX Runtime's own hash op (OpenVINO does not)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Dims = Sequence[int | str | None]


def _value(name: str, dims: Dims | None, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    value = helper.make_tensor_value_info(name, elem, dims)
    for dim, size in zip(value.type.tensor_type.shape.dim, dims or (), strict=True):
        if size == "":  # an empty name: neither a size nor a name, as spox writes
            dim.ClearField("dim_param")
    return value


def _save(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: Sequence[tuple[str, np.ndarray]] = (),
) -> Path:
    tensors = [numpy_helper.from_array(a, n) for n, a in initializers]
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _weights(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def paddle_classifier(path: Path) -> Path:
    """paddle2onnx's angle classifier shape: x [-1, 3, '?', '?'] -> scores [-1, 2]."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["scores"]),
    ]
    return _save(
        path,
        nodes,
        [_value("x", [-1, 3, "?", "?"])],
        [_value("scores", [-1, 2])],
        [("w", _weights(3, 2, 1) * 4), ("b", np.zeros(2, np.float32))],
    )


def stateful(path: Path, batch: str = "batch") -> Path:
    """silero's VAD interface: input [batch, 16], state [2, batch, 4] and sr (int64, rank 0)
    -> output [batch, 1] = (sum(input) + sum(state)) * sr / 16000, stateN = tanh(state).
    With `batch` "" every dim is anonymous, as spox writes them."""
    nodes = [
        helper.make_node("ReduceSum", ["input", "axis1"], ["in_sum"], keepdims=1),
        helper.make_node("Transpose", ["state"], ["by_sample"], perm=[1, 0, 2]),
        helper.make_node("ReduceSum", ["by_sample", "axes12"], ["state_sum"], keepdims=0),
        helper.make_node("Unsqueeze", ["state_sum", "axis1"], ["state_col"]),
        helper.make_node("Add", ["in_sum", "state_col"], ["total"]),
        helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["sr_f", "rate"], ["scale"]),
        helper.make_node("Mul", ["total", "scale"], ["output"]),
        helper.make_node("Tanh", ["state"], ["stateN"]),
    ]
    return _save(
        path,
        nodes,
        [
            _value("input", [batch, 16]),
            _value("state", [2, batch, 4]),
            _value("sr", [], TensorProto.INT64),
        ],
        [_value("output", [batch, 1]), _value("stateN", [2, batch, 4])],
        [
            ("axis1", np.array([1], np.int64)),
            ("axes12", np.array([1, 2], np.int64)),
            ("rate", np.array(16000, np.float32)),
        ],
    )


def stateful_expected(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """What `stateful` computes for a batch in the model's layout, per sample."""
    per_sample = inputs["input"].sum(axis=1) + inputs["state"].sum(axis=(0, 2))
    return (per_sample * float(inputs["sr"]) / 16000.0)[:, None]


def stateful_batch(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """A batch of `n` distinct samples for `stateful`, in the model's layout."""
    return {
        "input": rng.standard_normal((n, 16), dtype=np.float32),
        "state": rng.standard_normal((2, n, 4), dtype=np.float32),
        "sr": np.array(8000, np.int64),
    }


def check_stateful(
    outputs: Sequence[np.ndarray], inputs: dict[str, np.ndarray], tolerance: float = 1e-4
) -> None:
    """A backend's outputs for `stateful` are each sample's own: shapes with the batch on
    each output's axis, values as computed per sample."""
    n = len(inputs["input"])
    output, state_n = outputs
    assert output.shape == (n, 1) and state_n.shape == (2, n, 4)
    expected = stateful_expected(inputs)
    np.testing.assert_allclose(output, expected, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(state_n, np.tanh(inputs["state"]), rtol=tolerance, atol=tolerance)


def byte_classifier(path: Path, length: int = 8, classes: int = 4) -> Path:
    """jax's one_hot through jax2tf and tf2onnx: bytes int32 [unk__5, 8] compared by Equal
    against Range(0, 257) reshaped to [1, 1, 257], summed over the bytes -> logits [unk__6, 4]."""
    nodes = [
        helper.make_node("Range", ["start", "limit", "delta"], ["iota"]),
        helper.make_node("Reshape", ["iota", "row_shape"], ["row"]),
        helper.make_node("Unsqueeze", ["bytes", "last"], ["wide"]),
        helper.make_node("Equal", ["wide", "row"], ["hot"], name="one_hot"),
        helper.make_node("Cast", ["hot"], ["hot_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["hot_f", "axis1"], ["counts"], keepdims=0),
        helper.make_node("MatMul", ["counts", "w"], ["logits"]),
    ]
    w = np.zeros((257, classes), np.float32)
    w[np.arange(257), np.arange(257) * classes // 257] = 1.0  # class = which quarter the byte is
    return _save(
        path,
        nodes,
        [_value("bytes", ["unk__5", length], TensorProto.INT32)],
        [_value("logits", ["unk__6", classes])],
        [
            ("start", np.array(0, np.int32)),
            ("limit", np.array(257, np.int32)),
            ("delta", np.array(1, np.int32)),
            ("row_shape", np.array([1, 1, 257], np.int64)),
            ("last", np.array([-1], np.int64)),
            ("axis1", np.array([1], np.int64)),
            ("w", w),
        ],
    )


def one_hot_op(path: Path, depth: int = 11) -> Path:
    """ids int64 [N, 6] -> OneHot(depth 11) summed over the ids -> scores [N, 11]."""
    nodes = [
        helper.make_node("OneHot", ["ids", "depth", "onoff"], ["hot"], name="hot", axis=-1),
        helper.make_node("ReduceSum", ["hot", "axis1"], ["scores"], keepdims=0),
    ]
    return _save(
        path,
        nodes,
        [_value("ids", ["N", 6], TensorProto.INT64)],
        [_value("scores", ["N", depth])],
        [
            ("depth", np.array(depth, np.int64)),
            ("onoff", np.array([0, 1], np.float32)),
            ("axis1", np.array([1], np.int64)),
        ],
    )


def shared_input(path: Path) -> Path:
    """x [N, 5] + bias [5]: `bias` has no batch axis, one value for every sample."""
    return _save(
        path,
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        [_value("x", ["N", 5]), _value("bias", [5])],
        [_value("y", ["N", 5])],
    )


def fixed_batch(path: Path) -> Path:
    """A batch fixed at 1 on the only input: nothing can be batched."""
    return _save(
        path,
        [helper.make_node("Identity", ["x"], ["y"])],
        [_value("x", [1, 3])],
        [_value("y", [1, 3])],
    )


def unknown_op(path: Path) -> Path:
    """MatMul then an op of a domain no runtime here knows: the null backend runs it (it never
    loads the graph); ONNX Runtime's int8 quantizer cannot (it must run the graph), nor can
    OpenVINO's frontend or onnx2torch convert it."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Mystery", ["h"], ["y"], domain="example.custom"),
    ]
    graph = helper.make_graph(
        nodes,
        path.stem,
        [_value("x", ["batch", 4])],
        [_value("y", ["batch", 4])],
        [numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8), str(path))
    return path


def onnxruntime_only(path: Path) -> Path:
    """ONNX Runtime's contrib op MurmurHash3 (com.microsoft) between two casts: ONNX Runtime
    runs it, OpenVINO's frontend has no conversion rule for it (as it had none for an op of
    the opset-15 Silero VAD)."""
    nodes = [
        helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT32),
        helper.make_node("MurmurHash3", ["xi"], ["h"], domain="com.microsoft", positive=1),
        helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, path.stem, [_value("x", ["batch", 4])], [_value("y", ["batch", 4])]
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8), str(path))
    return path

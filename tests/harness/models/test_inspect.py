"""inspect_model: describes usable ONNX files and rejects unusable ones with one-line errors."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from harness.errors import ConfigError, ModelError
from harness.models import ModelInfo, TensorSpec, inspect_model

Dims = Sequence[int | str | None]


def _value(
    name: str, dims: Dims | None, elem_type: int = TensorProto.FLOAT
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, dims)


def _save(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
) -> Path:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save_model(model, str(path))
    return path


def _identity(
    path: Path, dims: Dims | None, elem_type: int = TensorProto.FLOAT, out_dims: Dims | None = None
) -> Path:
    """A one-node model: y = Identity(x), with the given input (and output) shape."""
    return _save(
        path,
        [helper.make_node("Identity", ["x"], ["y"])],
        [_value("x", dims, elem_type)],
        [_value("y", dims if out_dims is None else out_dims, elem_type)],
    )


def _error(path: Path) -> str:
    with pytest.raises(ModelError) as err:
        inspect_model(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_describes_a_single_input_model(tmp_path: Path) -> None:
    path = _identity(tmp_path / "ident.onnx", ["N", 3, 8, 8])
    info = inspect_model(path)
    assert info == ModelInfo(
        name="ident",
        path=path.resolve(),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        inputs=(TensorSpec("x", "float32", (3, 8, 8)),),
        outputs=(TensorSpec("y", "float32", (3, 8, 8)),),
        batch="N",
    )
    assert info.sample_nbytes == 3 * 8 * 8 * 4
    assert inspect_model(path, name="custom").name == "custom"


def test_several_inputs_share_the_batch_dimension(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "two.onnx",
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Cast", ["ids"], ["f"], to=1),
        ],
        [_value("a", ["batch", 4]), _value("b", ["batch", 4]), _value("ids", ["batch", 2], 7)],
        [_value("sum", ["batch", 4]), _value("f", ["batch", 2])],
    )
    info = inspect_model(path)
    assert info.inputs == (
        TensorSpec("a", "float32", (4,)),
        TensorSpec("b", "float32", (4,)),
        TensorSpec("ids", "int64", (2,)),
    )
    assert [o.name for o in info.outputs] == ["sum", "f"]
    assert info.sample_nbytes == 4 * 4 + 4 * 4 + 2 * 8


def test_graph_inputs_that_are_initializers_are_not_inputs(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    path = _save(
        tmp_path / "init.onnx",
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [_value("x", ["batch", 4]), _value("w", [4, 4])],
        [_value("y", ["batch", 4])],
        [weight],
    )
    assert [t.name for t in inspect_model(path).inputs] == ["x"]


def test_unknown_output_dims_become_minus_one(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "nonzero.onnx",
        [helper.make_node("NonZero", ["x"], ["idx"]), helper.make_node("Relu", ["x"], ["y"])],
        [_value("x", ["batch", 5])],
        [_value("idx", ["batch", "n"], TensorProto.INT64), _value("y", ["batch", None])],
    )
    assert inspect_model(path).outputs == (
        TensorSpec("idx", "int64", (-1,)),
        TensorSpec("y", "float32", (-1,)),
    )


def test_output_without_shape_gets_an_inferred_one(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "noshape.onnx",
        [helper.make_node("Relu", ["x"], ["y"])],
        [_value("x", ["batch", 6])],
        [helper.make_value_info("y", helper.make_tensor_type_proto(TensorProto.FLOAT, None))],
    )
    assert inspect_model(path).outputs == (TensorSpec("y", "float32", (6,)),)


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in _error(tmp_path / "absent.onnx")


def test_directory_is_not_a_model_file(tmp_path: Path) -> None:
    assert "not found" in _error(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe garbage \x00\x01\x02" * 50, b"", b"hello, this is text\n"],
    ids=["garbage", "empty", "text"],
)
def test_not_an_onnx_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    assert "not an ONNX model" in _error(path)


def test_fixed_batch_dimension(tmp_path: Path) -> None:
    message = _error(_identity(tmp_path / "fixed.onnx", [8, 3]))
    assert "'x'" in message
    assert "8" in message
    assert "dynamic batch" in message


def _config_error(path: Path, **bindings: Any) -> str:
    with pytest.raises(ConfigError) as err:
        inspect_model(path, **bindings)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_an_unbound_symbolic_dim_names_input_axis_dim_and_flag(tmp_path: Path) -> None:
    message = _config_error(_identity(tmp_path / "dyn.onnx", ["N", "C"], out_dims=["N", 3]))
    assert "input 'x' axis 1" in message
    assert "'C'" in message
    assert "--dim C=N" in message
    assert "[model] dims" in message


def test_an_unnamed_dynamic_dim_points_to_shape(tmp_path: Path) -> None:
    message = _config_error(_identity(tmp_path / "dyn.onnx", ["N", None], out_dims=["N", 3]))
    assert "input 'x' axis 1 has no size (written as nothing)" in message
    assert "--shape x=D1" in message


def _encoder(path: Path) -> Path:
    """Two inputs sharing a symbolic `sequence` axis; the output carries it too."""
    return _save(
        path,
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [_value("a", ["batch", "sequence", 4]), _value("b", ["batch", "sequence", 4])],
        [_value("y", ["batch", "sequence", 4])],
    )


def test_dim_binds_every_axis_of_that_name(tmp_path: Path) -> None:
    info = inspect_model(_encoder(tmp_path / "enc.onnx"), dims={"sequence": 128})
    assert [t.sample_shape for t in info.inputs] == [(128, 4), (128, 4)]
    assert info.outputs[0].sample_shape == (128, 4)
    assert info.dims == {"sequence": 128}
    assert info.inputs[0].symbols == ("sequence", "")


def test_shape_sets_one_input_and_sizes_its_named_dims_everywhere(tmp_path: Path) -> None:
    info = inspect_model(_encoder(tmp_path / "enc.onnx"), shapes={"a": (16, 4)})
    assert [t.sample_shape for t in info.inputs] == [(16, 4), (16, 4)]
    assert info.dims == {"sequence": 16}
    unnamed = _identity(tmp_path / "unnamed.onnx", ["N", None, 3], out_dims=["N", None, 3])
    assert inspect_model(unnamed, shapes={"x": [7, 3]}).inputs[0].sample_shape == (7, 3)


def test_bad_bindings_are_one_line_config_errors(tmp_path: Path) -> None:
    path = _encoder(tmp_path / "enc.onnx")
    assert "no input of model enc.onnx has a dimension named 'seq'" in _config_error(
        path, dims={"seq": 8}
    )
    assert "(its symbolic non-batch dims: sequence)" in _config_error(path, dims={"seq": 8})
    assert "'batch' is the batch axis" in _config_error(path, dims={"batch": 8, "sequence": 8})
    assert "has no input 'c'" in _config_error(path, shapes={"c": (8, 4)})
    assert "2 axes besides the batch, got 1 sizes" in _config_error(path, shapes={"a": (8,)})
    assert "axis 2 is fixed at 4 in the model, got 5" in _config_error(path, shapes={"a": (8, 5)})
    assert "another input binds to 8, not 9" in _config_error(
        path, shapes={"a": (8, 4), "b": (9, 4)}
    )


def test_rank_zero_input(tmp_path: Path) -> None:
    assert "rank 0" in _error(_identity(tmp_path / "scalar.onnx", []))


def test_input_of_unknown_rank(tmp_path: Path) -> None:
    assert "unknown rank" in _error(_identity(tmp_path / "norank.onnx", None, out_dims=["N"]))


@pytest.mark.parametrize(
    ("elem_type", "type_name"),
    [(TensorProto.STRING, "STRING"), (TensorProto.BFLOAT16, "BFLOAT16")],
)
def test_unsupported_element_type(tmp_path: Path, elem_type: int, type_name: str) -> None:
    message = _error(_identity(tmp_path / "str.onnx", ["N", 2], elem_type))
    assert "'x'" in message
    assert type_name in message


def test_model_without_inputs(tmp_path: Path) -> None:
    const = helper.make_tensor("c", TensorProto.FLOAT, [1, 2], [1.0, 2.0])
    path = _save(
        tmp_path / "const.onnx",
        [helper.make_node("Constant", [], ["y"], value=const)],
        [],
        [_value("y", [1, 2])],
    )
    assert "no inputs" in _error(path)


def _external_data_model(folder: Path) -> tuple[Path, Path]:
    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    path = _save(
        folder / "ext.onnx",
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [_value("x", ["batch", 8])],
        [_value("y", ["batch", 8])],
        [weight],
    )
    model = onnx.load(str(path))
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="ext.bin", size_threshold=0
    )
    return path, folder / "ext.bin"


def test_external_data_is_part_of_the_hash(tmp_path: Path) -> None:
    path, data = _external_data_model(tmp_path)
    model_bytes = path.read_bytes()
    before = inspect_model(path)
    assert before.inputs == (TensorSpec("x", "float32", (8,)),)
    assert before.sha256 != hashlib.sha256(model_bytes).hexdigest()

    weights = bytearray(data.read_bytes())
    weights[:4] = np.float32(42.0).tobytes()
    data.write_bytes(bytes(weights))
    after = inspect_model(path)
    assert path.read_bytes() == model_bytes
    assert after.sha256 != before.sha256


def test_missing_external_data_file(tmp_path: Path) -> None:
    path, data = _external_data_model(tmp_path)
    data.unlink()
    message = _error(path)
    assert "external data" in message
    assert "ext.bin" in message

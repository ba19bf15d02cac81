"""Check that a user's ONNX file can be batched by the harness, and describe its tensors.

The weights are not loaded (external data stays on disk), but the content hash covers them, so
a changed weight file gives a new hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from harness.errors import ModelError
from harness.models.info import ModelInfo, TensorSpec

_CHUNK = 1 << 20
_DTYPE_KINDS = "biuf"
"""NumPy dtype kinds the harness can generate samples for: bool, int, uint, float."""


def inspect_model(path: Path, name: str | None = None) -> ModelInfo:
    """Validate the ONNX file at `path` and describe it; raise ModelError if unusable.

    Every input needs a dynamic axis 0 (the batch) and fixed other axes. `name` defaults to
    the file's stem.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    model = _load(path)
    graph = model.graph
    initializers = {t.name for t in graph.initializer} | {
        t.values.name for t in graph.sparse_initializer
    }
    inputs = tuple(_input_spec(path, v) for v in graph.input if v.name not in initializers)
    if not inputs:
        raise ModelError(
            f"model {path} has no inputs (initializers listed as inputs do not count)"
        )
    outputs = tuple(_output_spec(path, v) for v in _outputs_with_shapes(model))
    return ModelInfo(
        name=name if name is not None else path.stem,
        path=path.resolve(),
        sha256=_sha256(path, model),
        inputs=inputs,
        outputs=outputs,
    )


def _load(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"not an ONNX model: {path} ({type(exc).__name__})") from exc
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelError(f"not an ONNX model: {path} (no IR version or no graph)")
    return model


def _dtype(path: Path, value: onnx.ValueInfoProto) -> str:
    elem_type = value.type.tensor_type.elem_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in _DTYPE_KINDS or np.dtype(dtype.name) != dtype:
        type_name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "UNDEFINED"
        raise ModelError(f"model {path}: tensor {value.name!r} has unsupported type {type_name}")
    return dtype.name


def _dims(path: Path, value: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension]:
    """The tensor's dimensions, which must be known in number and at least one."""
    if not value.type.HasField("tensor_type"):
        kind = value.type.WhichOneof("value") or "unknown"
        raise ModelError(f"model {path}: {value.name!r} is a {kind}, not a tensor")
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise ModelError(f"model {path}: tensor {value.name!r} has unknown rank")
    dims = list(tensor_type.shape.dim)
    if not dims:
        raise ModelError(f"model {path}: tensor {value.name!r} has rank 0; it needs a batch axis")
    return dims


def _input_spec(path: Path, value: onnx.ValueInfoProto) -> TensorSpec:
    dims = _dims(path, value)
    if dims[0].HasField("dim_value"):
        raise ModelError(
            f"model {path}: input {value.name!r} has a fixed batch size {dims[0].dim_value} on "
            "axis 0; a dynamic batch dimension is needed (re-export with a symbolic axis 0)"
        )
    sample_shape = []
    for axis, dim in enumerate(dims[1:], start=1):
        if not dim.HasField("dim_value"):
            what = repr(dim.dim_param) if dim.dim_param else "unknown"
            raise ModelError(
                f"model {path}: input {value.name!r} axis {axis} is {what}; only axis 0 "
                "(the batch) may be dynamic"
            )
        sample_shape.append(dim.dim_value)
    return TensorSpec(value.name, _dtype(path, value), tuple(sample_shape))


def _output_spec(path: Path, value: onnx.ValueInfoProto) -> TensorSpec:
    dims = _dims(path, value)
    sample_shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:])
    return TensorSpec(value.name, _dtype(path, value), sample_shape)


def _outputs_with_shapes(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph outputs, with shapes inferred where the file leaves them out."""
    outputs = list(model.graph.output)
    if all(o.type.tensor_type.HasField("shape") for o in outputs):
        return outputs
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph.output
    except Exception:  # inference is best effort: custom ops or odd graphs may defeat it
        return outputs
    return list(inferred) if len(inferred) == len(outputs) else outputs


def _sha256(path: Path, model: onnx.ModelProto) -> str:
    """sha256 of the file's bytes, then of each external-data file it names (sorted).

    Without external data this equals the `sha256sum` of the file.
    """
    digest = hashlib.sha256()
    for chunk in _chunks(path):
        digest.update(chunk)
    for location in sorted(_external_locations(model)):
        data_path = path.parent / location
        if not data_path.is_file():
            raise ModelError(f"model {path}: external data file not found: {data_path}")
        digest.update(b"\0" + location.encode() + b"\0")
        for chunk in _chunks(data_path):
            digest.update(chunk)
    return digest.hexdigest()


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _external_locations(model: onnx.ModelProto) -> set[str]:
    return {
        entry.value
        for tensor in _tensors(model.graph)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor in the graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)

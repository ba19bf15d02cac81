"""Check that a user's ONNX file can be batched by the harness, bind its symbolic dims, and
describe its tensors.

The weights are not loaded (external data stays on disk), but the content hash covers them, so
a changed weight file gives a new hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from harness.errors import ConfigError, ModelError
from harness.models.graph import IndexUse, index_uses
from harness.models.info import ModelInfo, TensorSpec

_CHUNK = 1 << 20
_DTYPE_KINDS = "biuf"
"""NumPy dtype kinds the harness can generate samples for: bool, int, uint, float."""


def inspect_model(
    path: Path,
    name: str | None = None,
    dims: Mapping[str, int] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> ModelInfo:
    """Validate the ONNX file at `path` and describe it; raise ModelError if unusable.

    Every input needs a dynamic axis 0 (the batch). Its other axes are fixed in the file,
    bound by name (`dims`, like ONNX Runtime's free-dimension overrides: every dim of that
    name) or set per input (`shapes`: the non-batch sizes of one input, for dims without a
    name); an unbound one is a ConfigError naming the flag that binds it. `name` defaults to
    the file's stem.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    dims = dict(dims or {})
    bound_shapes = {k: tuple(v) for k, v in (shapes or {}).items()}
    model = _load(path)
    graph = model.graph
    initializers = {t.name for t in graph.initializer} | {
        t.values.name for t in graph.sparse_initializer
    }
    values = [v for v in graph.input if v.name not in initializers]
    if not values:
        raise ModelError(
            f"model {path} has no inputs (initializers listed as inputs do not count)"
        )
    _check_bindings(path, values, dims, bound_shapes)
    for value in values:  # a dim named in one input's --shape is sized so in every input
        shape = bound_shapes.get(value.name)
        axes = value.type.tensor_type.shape.dim[1:]
        if shape is not None and len(shape) == len(axes):
            for dim, size in zip(axes, shape, strict=True):
                if dim.dim_param:
                    dims.setdefault(dim.dim_param, size)
    uses = index_uses(model)
    bound: dict[str, int] = {}
    inputs = tuple(
        _input_spec(path, v, dims, bound_shapes.get(v.name), uses.get(v.name), bound)
        for v in values
    )
    outputs = tuple(_output_spec(path, v, bound) for v in _outputs_with_shapes(model))
    return ModelInfo(
        name=name if name is not None else path.stem,
        path=path.resolve(),
        sha256=_sha256(path, model),
        inputs=inputs,
        outputs=outputs,
        dims=dict(sorted(bound.items())),
    )


def _check_bindings(
    path: Path,
    values: Sequence[onnx.ValueInfoProto],
    dims: Mapping[str, int],
    shapes: Mapping[str, tuple[int, ...]],
) -> None:
    """ConfigError for a `--dim` no input axis carries, one naming the batch axis, or a
    `--shape` of an input the model lacks."""
    names = [v.name for v in values]
    for name in shapes:
        if name not in names:
            raise ConfigError(
                f"--shape {name}: model {path.name} has no input {name!r} "
                f"(inputs: {', '.join(names)})"
            )
    batch = {d.dim_param for v in values for d in v.type.tensor_type.shape.dim[:1] if d.dim_param}
    symbols = {
        d.dim_param for v in values for d in v.type.tensor_type.shape.dim[1:] if d.dim_param
    }
    for name in dims:
        if name in batch and name not in symbols:
            raise ConfigError(
                f"--dim {name}: {name!r} is the batch axis (axis 0) of model {path.name}; "
                "the batch size is what the tuner varies (--batch-size, --batch-sizes)"
            )
        if name not in symbols:
            known = ", ".join(sorted(symbols)) or "none"
            raise ConfigError(
                f"--dim {name}: no input of model {path.name} has a dimension named {name!r} "
                f"(its symbolic non-batch dims: {known})"
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


def _input_spec(
    path: Path,
    value: onnx.ValueInfoProto,
    dims: Mapping[str, int],
    shape: tuple[int, ...] | None,
    use: IndexUse | None,
    bound: dict[str, int],
) -> TensorSpec:
    """The input's spec with every non-batch axis sized; records named dims in `bound`."""
    axes = _dims(path, value)
    if axes[0].HasField("dim_value"):
        raise ModelError(
            f"model {path}: input {value.name!r} has a fixed batch size {axes[0].dim_value} on "
            "axis 0; a dynamic batch dimension is needed (re-export with a symbolic axis 0)"
        )
    rest = axes[1:]
    if shape is not None and len(shape) != len(rest):
        raise ConfigError(
            f"--shape {value.name}: the input has {len(rest)} non-batch axes, "
            f"got {len(shape)} sizes ({_shape_text(shape)})"
        )
    sample_shape = []
    for axis, dim in enumerate(rest, start=1):
        if dim.HasField("dim_value"):
            size = dim.dim_value
            if shape is not None and shape[axis - 1] != size:
                raise ConfigError(
                    f"--shape {value.name}: axis {axis} is fixed at {size} in the model, "
                    f"got {shape[axis - 1]}"
                )
        elif shape is not None:
            size = shape[axis - 1]
        elif dim.dim_param in dims:
            size = dims[dim.dim_param]
        elif dim.dim_param:
            raise ConfigError(
                f"model {path.name}: input {value.name!r} axis {axis} is the symbolic dim "
                f"{dim.dim_param!r}; bind it with --dim {dim.dim_param}=N "
                f"(study file: [model] dims = {{{dim.dim_param} = N}})"
            )
        else:
            raise ConfigError(
                f"model {path.name}: input {value.name!r} axis {axis} has no size and no "
                f"name; set the input's non-batch sizes with --shape {value.name}=D1x... "
                f"(study file: [model] shapes = {{{value.name} = [D1, ...]}})"
            )
        if dim.dim_param:
            earlier = bound.setdefault(dim.dim_param, size)
            if earlier != size:
                raise ConfigError(
                    f"--shape {value.name}: axis {axis} is the dim {dim.dim_param!r}, which "
                    f"another input binds to {earlier}, not {size}"
                )
        sample_shape.append(size)
    dtype = _dtype(path, value)
    indexes = use is not None and np.dtype(dtype).kind in "iu"
    return TensorSpec(
        value.name,
        dtype,
        tuple(sample_shape),
        symbols=tuple(d.dim_param if not d.HasField("dim_value") else "" for d in rest),
        index_rows=use.rows if indexes and use is not None else None,
        index_nodes=use.nodes if indexes and use is not None else (),
    )


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _output_spec(path: Path, value: onnx.ValueInfoProto, bound: Mapping[str, int]) -> TensorSpec:
    dims = _dims(path, value)
    sample_shape = tuple(
        d.dim_value if d.HasField("dim_value") else bound.get(d.dim_param, -1) for d in dims[1:]
    )
    symbols = tuple(d.dim_param if not d.HasField("dim_value") else "" for d in dims[1:])
    return TensorSpec(value.name, _dtype(path, value), sample_shape, symbols=symbols)


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


def model_sha256(path: Path) -> tuple[str, bool]:
    """The sha256 of an ONNX file with its external data (see `_sha256`), and whether it has
    external data."""
    model = _load(Path(path))
    return _sha256(Path(path), model), bool(_external_locations(model))


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

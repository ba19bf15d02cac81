"""Check that a user's ONNX file can be batched by the harness, bind its symbolic dims, and
describe its tensors.

The weights are not loaded (external data stays on disk), but the content hash covers them, so
a changed weight file gives a new hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from harness.errors import ConfigError, ModelError
from harness.models.graph import IndexUse, index_uses
from harness.models.info import ModelInfo, TensorSpec

log = logging.getLogger(__name__)

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

    The batch is the dim that the first input's axis 0 is named (its batch symbol), wherever
    it stands in each input (a recurrent state's `[2, batch, 128]` is batched on axis 1); an
    axis 0 left unknown (written -1, 0, '?', 'unk__N' or empty) is a batch axis too. A rank-0
    input (a sample rate) and an input with no batch axis are fed as one value shared by every
    sample; a model with no batched input at all is refused. The other axes are fixed in the
    file, bound by name (`dims`, like ONNX Runtime's free-dimension overrides: every dim of
    that name) or set per input (`shapes`: the sizes of one input's axes other than its
    batch, the only way to size dims an exporter left anonymous); an unbound one is a
    ConfigError naming the input, the axis and the flag that binds it. `name` defaults to the
    file's stem.
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
    batch = _batch_symbol(path, values)
    axes = {v.name: _batch_axis(path, v, batch) for v in values}
    if all(a is None for a in axes.values()):
        raise ModelError(_unbatched(path, values))
    _check_bindings(path, values, axes, batch, dims, bound_shapes)
    for value in values:  # a dim named in one input's --shape is sized so in every input
        shape = bound_shapes.get(value.name)
        rest = _sample_dims(path, value, axes[value.name])
        if shape is not None and len(shape) == len(rest):
            for dim, size in zip(rest, shape, strict=True):
                if _named(dim):
                    dims.setdefault(dim.dim_param, size)
    uses = index_uses(model)
    bound: dict[str, int] = {}
    inputs = tuple(
        _input_spec(path, v, axes[v.name], dims, bound_shapes.get(v.name), uses.get(v.name), bound)
        for v in values
    )
    for spec in inputs:
        if spec.batch_axis is None:
            log.info(
                "model %s: input %r has no batch axis (shape %s): every batch is fed the same "
                "value",
                path.name,
                spec.name,
                _shape_text(spec.sample_shape) or "a scalar",
            )
    outputs = tuple(_output_spec(path, v, batch, bound) for v in _outputs_with_shapes(model))
    inputs = tuple(
        dataclasses.replace(spec, state=True) if _carried_on(spec, outputs) else spec
        for spec in inputs
    )
    return ModelInfo(
        name=name if name is not None else path.stem,
        path=path.resolve(),
        sha256=_sha256(path, model),
        inputs=inputs,
        outputs=outputs,
        dims=dict(sorted(bound.items())),
        batch=batch,
    )


#: Names exporters give dims they know nothing about: tf2onnx's `unk__N`, paddle2onnx's and
#: TensorFlow's '?', Keras's 'None'. They name no particular dim, so `--dim` cannot bind them.
_ANONYMOUS = re.compile(r"(?:\?|unk__\d+|None|-1|)")


def is_anonymous(name: str) -> bool:
    """Whether a dim's name is a placeholder rather than a name (see _ANONYMOUS)."""
    return _ANONYMOUS.fullmatch(name.strip()) is not None


def _named(dim: onnx.TensorShapeProto.Dimension) -> bool:
    """A dim with a real name, which `--dim` binds wherever it stands."""
    return dim.HasField("dim_param") and not is_anonymous(dim.dim_param)


def _unknown(dim: onnx.TensorShapeProto.Dimension) -> bool:
    """A dim of no fixed size: a name, an anonymous one, or a size written -1 or 0."""
    return not dim.HasField("dim_value") or dim.dim_value <= 0


def _carried_on(spec: TensorSpec, outputs: Sequence[TensorSpec]) -> bool:
    """Whether a float input is a recurrent state: an output named after it (`state` ->
    `stateN`, `h` -> `hn`, `past` -> `past_out`) has its sample shape (or unknown sizes)."""
    if spec.np_dtype.kind != "f" or not spec.sample_shape:
        return False
    for out in outputs:
        if out.name != spec.name and out.name.lower().startswith(spec.name.lower()):
            same = len(out.sample_shape) == len(spec.sample_shape) and all(
                o in (s, -1) for o, s in zip(out.sample_shape, spec.sample_shape, strict=True)
            )
            if same and len(out.name) - len(spec.name) <= 4:
                return True
    return False


def _batch_symbol(path: Path, values: Sequence[onnx.ValueInfoProto]) -> str:
    """The name of the batch dim: the first input's axis 0, if named ("" if anonymous)."""
    for value in values:
        shape = _dims(path, value)
        if shape:
            return shape[0].dim_param if _named(shape[0]) else ""
    return ""


def _batch_axis(path: Path, value: onnx.ValueInfoProto, batch: str) -> int | None:
    """Where the input's batch axis stands: where the batch symbol does, else axis 0 if its
    size is unknown, else (the batch being anonymous) its one axis of unknown size; None for
    a rank-0 input or one with no such axis."""
    shape = _dims(path, value)
    if batch:
        for axis, dim in enumerate(shape):
            if dim.HasField("dim_param") and dim.dim_param == batch:
                return axis
    if shape and _unknown(shape[0]) and not _named(shape[0]):
        return 0
    if not batch and shape and not _unknown(shape[0]):
        # An exporter that names no dim (spox, some tf2onnx graphs) writes a recurrent state
        # as [2, ?, 128]: with the batch anonymous, a fixed axis 0 and one unknown axis, that
        # axis is the batch.
        unknown = [axis for axis, dim in enumerate(shape) if _unknown(dim) and not _named(dim)]
        if len(unknown) == 1:
            return unknown[0]
    return None


def _unbatched(path: Path, values: Sequence[onnx.ValueInfoProto]) -> str:
    """Why a model with no batched input is refused, naming an input and its axis 0."""
    for value in values:
        shape = _dims(path, value)
        if shape and shape[0].HasField("dim_value"):
            return (
                f"model {path}: input {value.name!r} has a fixed batch size "
                f"{shape[0].dim_value} on axis 0 and no input has a dynamic batch axis; "
                "re-export with a symbolic (or -1) batch axis, e.g. torch.onnx.export(..., "
                "dynamic_axes={NAME: {0: 'batch'}})"
            )
        if shape:
            return (
                f"model {path}: input {value.name!r} axis 0 is the dim "
                f"{shape[0].dim_param!r}, which no input uses as a batch; re-export with "
                "the batch as a named or -1 dim"
            )
    return f"model {path}: every input is a scalar (rank 0); there is nothing to batch"


def _sample_dims(
    path: Path, value: onnx.ValueInfoProto, batch_axis: int | None
) -> list[onnx.TensorShapeProto.Dimension]:
    """The input's dims other than its batch axis."""
    shape = _dims(path, value)
    return [d for axis, d in enumerate(shape) if axis != batch_axis]


def _check_bindings(
    path: Path,
    values: Sequence[onnx.ValueInfoProto],
    axes: Mapping[str, int | None],
    batch: str,
    dims: Mapping[str, int],
    shapes: Mapping[str, tuple[int, ...]],
) -> None:
    """ConfigError for a `--dim` no input axis carries, one naming the batch axis or an
    anonymous dim, or a `--shape` of an input the model lacks."""
    names = [v.name for v in values]
    for name in shapes:
        if name not in names:
            raise ConfigError(
                f"--shape {name}: model {path.name} has no input {name!r} "
                f"(inputs: {', '.join(names)})"
            )
    symbols = {
        d.dim_param for v in values for d in _sample_dims(path, v, axes[v.name]) if _named(d)
    }
    for name in dims:
        if is_anonymous(name):
            raise ConfigError(
                f"--dim {name}: {name!r} is not a name but a placeholder the exporter writes "
                f"for any unknown dim; size such axes per input with --shape INPUT=D1xD2... "
                f"(model {path.name}'s inputs: {', '.join(names)})"
            )
        if name == batch and name not in symbols:
            raise ConfigError(
                f"--dim {name}: {name!r} is the batch axis of model {path.name}; "
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
    """The tensor's dimensions, which must be known in number (rank 0 is fine)."""
    if not value.type.HasField("tensor_type"):
        kind = value.type.WhichOneof("value") or "unknown"
        raise ModelError(f"model {path}: {value.name!r} is a {kind}, not a tensor")
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise ModelError(f"model {path}: tensor {value.name!r} has unknown rank")
    return list(tensor_type.shape.dim)


def _input_spec(
    path: Path,
    value: onnx.ValueInfoProto,
    batch_axis: int | None,
    dims: Mapping[str, int],
    shape: tuple[int, ...] | None,
    use: IndexUse | None,
    bound: dict[str, int],
) -> TensorSpec:
    """The input's spec with every axis but the batch sized; records named dims in `bound`."""
    full = _dims(path, value)
    rest = [(axis, d) for axis, d in enumerate(full) if axis != batch_axis]
    where = {None: " (the input has no batch axis)", 0: ""}.get(
        batch_axis, f" (its batch is axis {batch_axis})"
    )
    if shape is not None and len(shape) != len(rest):
        what = "axes" if batch_axis is None else "axes besides the batch"
        raise ConfigError(
            f"--shape {value.name}: the input has {len(rest)} {what}{where}, "
            f"got {len(shape)} sizes ({_shape_text(shape)})"
        )
    example = _shape_hint(value.name, [d for _, d in rest], dims)
    sample_shape = []
    for position, (axis, dim) in enumerate(rest):
        if not _unknown(dim):
            size = dim.dim_value
            if shape is not None and shape[position] != size:
                raise ConfigError(
                    f"--shape {value.name}: axis {axis} is fixed at {size} in the model, "
                    f"got {shape[position]}"
                )
        elif shape is not None:
            size = shape[position]
        elif _named(dim) and dim.dim_param in dims:
            size = dims[dim.dim_param]
        elif _named(dim):
            raise ConfigError(
                f"model {path.name}: input {value.name!r} axis {axis} is the symbolic dim "
                f"{dim.dim_param!r}{where}; bind it with --dim {dim.dim_param}=N "
                f"(study file: [model] dims = {{{dim.dim_param} = N}})"
            )
        else:
            written = _written(dim)
            raise ConfigError(
                f"model {path.name}: input {value.name!r} axis {axis} has no size "
                f"(written {written}){where}; set the sizes of its axes besides the batch "
                f"with --shape {example} (study file: [model] shapes = "
                f"{{{value.name} = [{example.partition('=')[2].replace('x', ', ')}]}})"
            )
        if _named(dim):
            earlier = bound.setdefault(dim.dim_param, size)
            if earlier != size:
                raise ConfigError(
                    f"--shape {value.name}: axis {axis} is the dim {dim.dim_param!r}, which "
                    f"another input binds to {earlier}, not {size}"
                )
        if size <= 0:
            raise ConfigError(
                f"model {path.name}: input {value.name!r} axis {axis} sized {size}; "
                "sizes must be at least 1"
            )
        sample_shape.append(size)
    dtype = _dtype(path, value)
    selects = use is not None and np.dtype(dtype).kind in "iu"
    return TensorSpec(
        value.name,
        dtype,
        tuple(sample_shape),
        symbols=tuple(d.dim_param if _named(d) else "" for _, d in rest),
        domain=(use.low, use.high) if selects and use is not None else None,
        domain_source=use.source if selects and use is not None else "",
        index_nodes=use.nodes if selects and use is not None else (),
        batch_axis=batch_axis,
    )


def _written(dim: onnx.TensorShapeProto.Dimension) -> str:
    """How the file writes an unknown dim, for messages: -1, 0, '?', 'unk__3' or nothing."""
    if dim.HasField("dim_value"):
        return str(dim.dim_value)
    return repr(dim.dim_param) if dim.dim_param else "as nothing"


def _shape_hint(
    name: str, rest: Sequence[onnx.TensorShapeProto.Dimension], dims: Mapping[str, int]
) -> str:
    """`NAME=3xH1xW2`: the --shape argument for an input, known sizes filled in."""
    parts = []
    unknown = 0
    for dim in rest:
        if not _unknown(dim):
            parts.append(str(dim.dim_value))
        elif _named(dim) and dim.dim_param in dims:
            parts.append(str(dims[dim.dim_param]))
        else:
            unknown += 1
            parts.append(f"D{unknown}")
    return f"{name}={'x'.join(parts)}"


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _output_spec(
    path: Path, value: onnx.ValueInfoProto, batch: str, bound: Mapping[str, int]
) -> TensorSpec:
    """An output batched where the batch symbol stands (axis 0 when its size is unknown),
    with its other sizes bound where named (-1 where not known)."""
    dims = _dims(path, value)
    axis = _batch_axis(path, value, batch)
    rest = [d for i, d in enumerate(dims) if i != axis]
    sample_shape = tuple(
        d.dim_value if not _unknown(d) else (bound.get(d.dim_param, -1) if _named(d) else -1)
        for d in rest
    )
    symbols = tuple(d.dim_param if _named(d) else "" for d in rest)
    return TensorSpec(
        value.name, _dtype(path, value), sample_shape, symbols=symbols, batch_axis=axis
    )


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


def external_files(path: Path) -> list[Path]:
    """The weight files an ONNX file keeps beside itself (external data), sorted."""
    model = _load(Path(path))
    return [Path(path).parent / location for location in sorted(_external_locations(model))]


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

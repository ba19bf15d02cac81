"""What a model's integer inputs index: the tables their values must stay inside.

An integer input that reaches a `Gather` as its indices (directly, or through shape-only and
cast-like nodes such as Cast, Unsqueeze, Reshape) must stay below the rows of the table it
indexes: a token-type id into a 2-row table, a recommender's categorical feature into its
embedding table. Synthetic samples are drawn from `[0, rows - 1]` of the smallest such table
(harness.dataset), so a model runs as exported without `--input-range`.

The walk reads the graph only (no weights are loaded: a table's rows are its initializer's
first dims, which an external-data model keeps in the `.onnx` file).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import onnx

#: Nodes whose first input's values reach their output unchanged (shape, layout or type).
_PASS_THROUGH = frozenset(
    {
        "Cast",
        "Identity",
        "Unsqueeze",
        "Squeeze",
        "Reshape",
        "Flatten",
        "Expand",
        "Transpose",
        "Slice",
        "Tile",
        "Split",
        "Concat",
        "Clip",
    }
)
#: Nodes that shift the values by their other operand: followed, the offset taken off the rows
#: when it is a constant (RoBERTa's position ids are `cumsum + padding_idx`).
_OFFSETS = frozenset({"Add", "Sub"})
#: Nodes a table passes through on its way to the Gather (a cast or a dequantized table).
_TABLE_THROUGH = frozenset({"Cast", "Identity", "DequantizeLinear"})


@dataclass(frozen=True)
class IndexUse:
    """The tables an integer input indexes: `rows` of the smallest (after any constant
    offset), its initializer's name, and the names of the Gather nodes it reaches."""

    input: str
    rows: int
    table: str
    nodes: tuple[str, ...]


def index_uses(model: onnx.ModelProto) -> dict[str, IndexUse]:
    """Graph input name -> what it indexes, for every input that reaches a Gather's indices
    through the nodes above; inputs that reach none are absent."""
    graph = model.graph
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    producers: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name:
                consumers[name].append((node, slot))
        for name in node.output:
            producers[name] = node
    constants = _constants(graph)
    uses: dict[str, IndexUse] = {}
    for value in graph.input:
        if value.name in constants:
            continue
        found = list(_gathers(value.name, consumers, producers, constants))
        if not found:
            continue
        rows, table = min((r, t) for r, t, _ in found)
        nodes = tuple(sorted({n for _, _, n in found}))
        uses[value.name] = IndexUse(value.name, max(rows, 1), table, nodes)
    return uses


def _gathers(
    start: str,
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]],
    producers: dict[str, onnx.NodeProto],
    constants: dict[str, onnx.TensorProto],
) -> Iterable[tuple[int, str, str]]:
    """(rows, table, node name) of every Gather that `start`'s values reach as indices."""
    stack = [(start, 0)]  # (tensor, offset added to the values on the way)
    seen: set[str] = set()
    while stack:
        name, offset = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for node, slot in consumers.get(name, ()):
            if node.op_type == "Gather" and slot == 1:
                table = _table(node.input[0], producers, constants)
                if table is not None:
                    axis = _axis(node)
                    dims = list(table.dims)
                    if -len(dims) <= axis < len(dims):
                        yield dims[axis] - max(offset, 0), table.name, node.name or node.output[0]
            elif node.op_type in _PASS_THROUGH and (slot == 0 or node.op_type == "Concat"):
                stack.extend((out, offset) for out in node.output if out)
            elif node.op_type in _OFFSETS and len(node.input) == 2:
                if node.op_type == "Sub" and slot == 1:
                    continue  # c - x: the values are mirrored, not shifted
                other = constants.get(node.input[1 - slot])
                shift = (_scalar(other) if other is not None else None) or 0
                if node.op_type == "Sub":
                    shift = -shift
                stack.extend((out, offset + shift) for out in node.output if out)


def _table(
    name: str, producers: dict[str, onnx.NodeProto], constants: dict[str, onnx.TensorProto]
) -> onnx.TensorProto | None:
    """The constant tensor a Gather's data comes from, through casts and dequantization."""
    for _ in range(8):
        if name in constants:
            return constants[name]
        node = producers.get(name)
        if node is None or node.op_type not in _TABLE_THROUGH or not node.input:
            return None
        name = node.input[0]
    return None


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant nodes' tensors, by name (data not loaded)."""
    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    tensor = onnx.TensorProto()
                    tensor.CopyFrom(attr.t)
                    tensor.name = node.output[0]
                    tensors[node.output[0]] = tensor
    return tensors


def _axis(node: onnx.NodeProto) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "axis"), 0)


def _scalar(tensor: onnx.TensorProto) -> int | None:
    """The integer value of a one-element constant, else None (a vector offset is ignored)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    from onnx import numpy_helper

    try:
        array = numpy_helper.to_array(tensor)
    except Exception:  # an odd encoding: treat as unknown
        return None
    if array.size != 1 or array.dtype.kind not in "iu":
        return None
    return int(array.reshape(-1)[0])

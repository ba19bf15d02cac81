"""What a model's integer inputs select: the values that keep them meaningful.

An integer input that reaches a `Gather` as its indices (directly, or through shape-only and
cast-like nodes such as Cast, Unsqueeze, Reshape) must stay below the rows of the table it
indexes: a token-type id into a 2-row table, a recommender's categorical feature into its
embedding table. One that reaches a `OneHot` must stay below its depth, and one compared by
`Equal` against a constant range (jax's `one_hot`, exported through jax2tf and tf2onnx, is
`Equal(x, Range(0, depth))`) selects nothing outside those values: a byte classifier's input
lives in 0..256, not in 0..1. Synthetic samples are drawn from the values valid for every such
use (harness.dataset), so a model runs as exported without `--input-range`.

The walk reads the graph only (no weights are loaded: a table's rows are its initializer's
first dims, which an external-data model keeps in the `.onnx` file; an Equal's constant
operand is read when it is small and inside the file).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
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
    """The values an integer input may take: `low`..`high` (both inclusive), `source`, what
    bounds them (the smallest table it indexes, a one-hot's depth, the values it is compared
    against), and the names of the nodes that read it that way."""

    input: str
    low: int
    high: int
    source: str
    nodes: tuple[str, ...]

    @property
    def rows(self) -> int:
        """How many values are valid."""
        return self.high - self.low + 1


def index_uses(model: onnx.ModelProto) -> dict[str, IndexUse]:
    """Graph input name -> its valid values, for every input that reaches a Gather's indices,
    a OneHot's indices or one side of an Equal against constants, through the nodes above;
    inputs that reach none are absent. Several uses: the values valid for all of them."""
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
        found = list(_uses(value.name, consumers, producers, constants))
        if not found:
            continue
        low = max(f[0] for f in found)
        high = min(f[1] for f in found)
        tightest = min(found, key=lambda f: (f[1] - f[0], f[2]))
        if high < low:  # no value satisfies every use: keep the narrowest one's
            low, high = tightest[0], tightest[1]
        nodes = tuple(sorted({f[3] for f in found}))
        uses[value.name] = IndexUse(value.name, low, max(high, low), tightest[2], nodes)
    return uses


def _uses(
    start: str,
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]],
    producers: dict[str, onnx.NodeProto],
    constants: dict[str, onnx.TensorProto],
) -> Iterable[tuple[int, int, str, str]]:
    """(low, high, what bounds them, node name) of every node that `start`'s values reach as
    Gather or OneHot indices or as one side of an Equal against constant values."""
    stack = [(start, 0)]  # (tensor, offset added to the values on the way)
    seen: set[str] = set()
    while stack:
        name, offset = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for node, slot in consumers.get(name, ()):
            label = node.name or node.output[0]
            if node.op_type == "Gather" and slot == 1:
                table = _table(node.input[0], producers, constants)
                if table is not None:
                    axis = _axis(node)
                    dims = list(table.dims)
                    if -len(dims) <= axis < len(dims):
                        rows = dims[axis]
                        yield (
                            0,
                            max(rows - max(offset, 0), 1) - 1,
                            f"indexes a table of {rows} rows",
                            label,
                        )
            elif node.op_type == "OneHot" and slot == 0 and len(node.input) > 1:
                depth = _values(node.input[1], producers, constants)
                if depth is not None and depth.size == 1 and int(depth.reshape(-1)[0]) > 0:
                    d = int(depth.reshape(-1)[0])
                    yield -offset, d - 1 - offset, f"a one-hot of depth {d} (OneHot)", label
            elif node.op_type == "Equal" and len(node.input) == 2:
                other = _values(node.input[1 - slot], producers, constants)
                if other is not None and other.size > 1 and other.dtype.kind in "iu":
                    lo, hi = int(other.min()), int(other.max())
                    yield (
                        lo - offset,
                        hi - offset,
                        f"compared against the {other.size} values {lo}..{hi} (Equal: a one-hot)",
                        label,
                    )
            elif node.op_type in _PASS_THROUGH and (slot == 0 or node.op_type == "Concat"):
                stack.extend((out, offset) for out in node.output if out)
            elif node.op_type in _OFFSETS and len(node.input) == 2:
                if node.op_type == "Sub" and slot == 1:
                    continue  # c - x: the values are mirrored, not shifted
                other_tensor = constants.get(node.input[1 - slot])
                shift = (_scalar(other_tensor) if other_tensor is not None else None) or 0
                if node.op_type == "Sub":
                    shift = -shift
                stack.extend((out, offset + shift) for out in node.output if out)


#: Nodes a constant's values pass through unchanged on their way to an Equal or a depth.
_VALUES_THROUGH = frozenset(
    {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Transpose"}
)
#: A constant operand of Equal larger than this is not read (a one-hot's range is small).
_MAX_VALUES = 1 << 20


def _values(
    name: str, producers: dict[str, onnx.NodeProto], constants: dict[str, onnx.TensorProto]
) -> np.ndarray | None:
    """The values of a constant tensor, followed through shape-only nodes and computed for a
    Range of constants; None when they are not known without running the graph."""
    for _ in range(8):
        if name in constants:
            return _array(constants[name])
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Range" and len(node.input) == 3:
            ends = [_values(n, producers, constants) for n in node.input]
            if any(e is None or e.size != 1 for e in ends):
                return None
            start, limit, delta = (e.reshape(-1)[0] for e in ends if e is not None)
            if delta == 0 or abs((limit - start) / delta) > _MAX_VALUES:
                return None
            return np.arange(start, limit, delta)
        if node.op_type not in _VALUES_THROUGH or not node.input:
            return None
        name = node.input[0]
    return None


def _array(tensor: onnx.TensorProto) -> np.ndarray | None:
    """A constant's values, unless they live in external data or are too many to read."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    if int(np.prod(tensor.dims, dtype=np.int64)) > _MAX_VALUES:
        return None
    from onnx import numpy_helper

    try:
        return np.asarray(numpy_helper.to_array(tensor))
    except Exception:  # an odd encoding: treat as unknown
        return None


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
    array = _array(tensor)
    if array is None or array.size != 1 or array.dtype.kind not in "iu":
        return None
    return int(array.reshape(-1)[0])

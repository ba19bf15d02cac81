"""index_uses: which tables an integer input indexes, read from the graph alone."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from harness.models.graph import index_uses


def _model(
    nodes: list[onnx.NodeProto], inputs: list[str], tables: dict[str, int]
) -> onnx.ModelProto:
    initializers = [
        numpy_helper.from_array(np.zeros((rows, 4), np.float32), name)
        for name, rows in tables.items()
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", 3]) for n in inputs],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _const(name: str, value: int) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [], [value])
    )


def test_a_direct_gather_bounds_its_indices_by_the_table_rows() -> None:
    model = _model(
        [helper.make_node("Gather", ["types", "ids"], ["out"], name="emb")],
        ["ids"],
        {"types": 2},
    )
    use = index_uses(model)["ids"]
    assert (use.low, use.high, use.nodes) == (0, 1, ("emb",))
    assert use.source == "indexes a table of 2 rows"


def test_the_walk_follows_casts_and_reshapes_and_takes_the_smallest_table() -> None:
    nodes = [
        helper.make_node("Cast", ["ids"], ["as32"], to=TensorProto.INT32),
        helper.make_node("Unsqueeze", ["as32", "axes"], ["wide"]),
        helper.make_node("Gather", ["big", "wide"], ["g1"], name="big_gather"),
        helper.make_node("Gather", ["small", "ids"], ["g2"], name="small_gather"),
        helper.make_node("Add", ["g1", "g2"], ["out"]),
    ]
    model = _model(nodes, ["ids"], {"big": 1000, "small": 7})
    model.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "axes"))
    use = index_uses(model)["ids"]
    assert (use.rows, use.source) == (7, "indexes a table of 7 rows")
    assert use.nodes == ("big_gather", "small_gather")


def test_a_constant_offset_shrinks_the_rows() -> None:
    nodes = [
        _const("two", 2),
        helper.make_node("Add", ["pos", "two"], ["shifted"]),
        helper.make_node("Gather", ["positions", "shifted"], ["out"], name="pos_emb"),
    ]
    use = index_uses(_model(nodes, ["pos"], {"positions": 514}))["pos"]
    assert use.rows == 512


def test_a_dequantized_table_counts_and_the_axis_picks_its_dim() -> None:
    table = numpy_helper.from_array(np.zeros((4, 9), np.int8), "q")
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "scale"], ["deq"]),
        helper.make_node("Gather", ["deq", "ids"], ["out"], axis=1),
    ]
    model = _model(nodes, ["ids"], {})
    model.graph.initializer.extend(
        [table, numpy_helper.from_array(np.array(0.1, np.float32), "scale")]
    )
    assert index_uses(model)["ids"].rows == 9


def test_inputs_that_index_nothing_or_feed_gather_as_data_are_absent() -> None:
    nodes = [
        helper.make_node("Cast", ["mask"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["ids", "where"], ["picked"]),  # ids as data, not indices
        helper.make_node("Concat", ["f", "picked"], ["out"], axis=1),
    ]
    model = _model(nodes, ["mask", "ids", "where"], {})
    assert set(index_uses(model)) == set()  # `where` indexes a computed tensor, not a table


def test_a_one_hot_bounds_its_indices_by_its_depth() -> None:
    nodes = [
        _const("depth", 10),
        helper.make_node("Cast", ["ids"], ["as64"], to=TensorProto.INT64),
        helper.make_node("OneHot", ["as64", "depth", "onoff"], ["hot"], name="hot"),
    ]
    model = _model(nodes, ["ids"], {})
    model.graph.initializer.append(numpy_helper.from_array(np.array([0, 1], np.float32), "onoff"))
    use = index_uses(model)["ids"]
    assert (use.low, use.high, use.nodes) == (0, 9, ("hot",))
    assert "depth 10" in use.source


def test_an_equal_against_a_range_is_a_one_hot_over_its_values() -> None:
    """jax's one_hot through jax2tf and tf2onnx: Equal(Unsqueeze(x), Reshape(Range(0, 257)))."""
    nodes = [
        _const("start", 0),
        _const("limit", 257),
        _const("step", 1),
        helper.make_node("Range", ["start", "limit", "step"], ["iota"]),
        helper.make_node("Reshape", ["iota", "shape"], ["row"]),
        helper.make_node("Unsqueeze", ["bytes", "axes"], ["wide"]),
        helper.make_node("Equal", ["wide", "row"], ["hot"], name="one_hot"),
    ]
    model = _model(nodes, ["bytes"], {})
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([1, 1, 257], np.int64), "shape"),
            numpy_helper.from_array(np.array([-1], np.int64), "axes"),
        ]
    )
    use = index_uses(model)["bytes"]
    assert (use.low, use.high, use.nodes) == (0, 256, ("one_hot",))
    assert "257 values 0..256" in use.source


def test_an_equal_against_a_constant_table_and_a_gather_keep_the_values_valid_for_both() -> None:
    nodes = [
        helper.make_node("Equal", ["table", "ids"], ["hot"], name="eq"),
        helper.make_node("Gather", ["small", "ids"], ["g"], name="emb"),
    ]
    model = _model(nodes, ["ids"], {"small": 5})
    model.graph.initializer.append(
        numpy_helper.from_array(np.arange(3, 40, dtype=np.int64), "table")
    )
    use = index_uses(model)["ids"]
    assert (use.low, use.high) == (3, 4)
    assert use.nodes == ("emb", "eq")


def test_an_equal_against_one_value_bounds_nothing() -> None:
    """A flag compared with one constant (a sample rate against 16000) picks a branch: every
    value is valid, so it is not a one-hot."""
    nodes = [_const("rate", 16000), helper.make_node("Equal", ["sr", "rate"], ["is16k"])]
    assert set(index_uses(_model(nodes, ["sr"], {}))) == set()

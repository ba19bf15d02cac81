"""The real-architecture exports of tests/realmodels.py: they load in ONNX Runtime, run with
valid inputs, carry the dim names users see (`batch`, `sequence`), and index their tables.

The first run exports (30-45 s on 2 cores, the dynamo exporter most of it, those cases
marked slow); later runs reuse tests/.cache/realmodels/. Skipped where torch, transformers or
torchvision is missing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests import realmodels
from tests.realmodels import Exporter

EXPORTER_PARAMS = [
    pytest.param("torchscript"),
    pytest.param("dynamo", marks=pytest.mark.slow),
]
TEXT_INPUTS = {
    "bert": ("input_ids", "attention_mask", "token_type_ids"),
    "distilbert": ("input_ids", "attention_mask"),
}


def _text(arch: str, dynamic_sequence: bool, exporter: Exporter) -> Path:
    export = realmodels.bert if arch == "bert" else realmodels.distilbert
    return export(dynamic_sequence, exporter=exporter)


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _signature(path: Path) -> dict[str, tuple[str, list[str | int]]]:
    """{tensor name: (element type, dims)} of the graph's inputs and outputs."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        v.name: (onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type), _dims(v))
        for v in [*graph.input, *graph.output]
    }


def _tables(path: Path, input_name: str) -> list[int]:
    """Row counts of the initializer tables that `input_name` reaches as Gather indices."""
    graph = onnx.load(str(path), load_external_data=False).graph
    rows = {t.name: t.dims[0] for t in graph.initializer if t.dims}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found, queue, seen = [], deque([input_name]), {input_name}
    while queue:
        tensor = queue.popleft()
        for node in consumers.get(tensor, []):
            if node.op_type == "Gather" and node.input[1] == tensor and node.input[0] in rows:
                found.append(rows[node.input[0]])
                continue
            for out in node.output:
                if out not in seen:
                    seen.add(out)
                    queue.append(out)
    return sorted(found)


@pytest.mark.parametrize("exporter", EXPORTER_PARAMS)
@pytest.mark.parametrize("dynamic_sequence", [False, True], ids=["fixed-seq", "dynamic-seq"])
@pytest.mark.parametrize("arch", list(TEXT_INPUTS))
def test_text_model_signature_and_one_batch(
    arch: str, dynamic_sequence: bool, exporter: Exporter
) -> None:
    path = _text(arch, dynamic_sequence, exporter)
    sequence: str | int = "sequence" if dynamic_sequence else realmodels.EXAMPLE_SEQUENCE
    expected = {name: ("INT64", ["batch", sequence]) for name in TEXT_INPUTS[arch]}
    expected["logits"] = ("FLOAT", ["batch", realmodels.TEXT_LABELS])
    assert _signature(path) == expected

    feed = realmodels.text_feed(2, realmodels.EXAMPLE_SEQUENCE, token_types=arch == "bert")
    (logits,) = _session(path).run(None, feed)
    assert logits.shape == (2, realmodels.TEXT_LABELS)
    assert logits.dtype == np.float32 and np.isfinite(logits).all()


@pytest.mark.parametrize("exporter", EXPORTER_PARAMS)
def test_bert_indexes_its_tables(exporter: Exporter) -> None:
    """token_type_ids feeds a Gather on the 2-row table, input_ids one on the vocabulary."""
    path = realmodels.bert(True, exporter=exporter)
    assert _tables(path, "token_type_ids").count(realmodels.TYPE_VOCAB) == 1
    assert realmodels.TEXT_VOCAB in _tables(path, "input_ids")
    assert _tables(path, "attention_mask") == []


@pytest.mark.parametrize("exporter", EXPORTER_PARAMS)
@pytest.mark.parametrize("arch", list(TEXT_INPUTS))
def test_dynamic_sequence_runs_at_two_lengths_and_masks_padding(
    arch: str, exporter: Exporter
) -> None:
    """Lengths 8 and 40 both run; 8 tokens padded to 40 with mask 0 give the 8-token logits
    (the tracer did not bake the all-ones example mask in)."""
    session = _session(_text(arch, True, exporter))
    token_types = arch == "bert"
    short = realmodels.text_feed(2, 8, token_types=token_types, seed=1)
    short["attention_mask"][:] = 1
    long = realmodels.text_feed(2, 40, token_types=token_types, seed=2)
    long["attention_mask"][:] = 0
    for name, value in short.items():
        long[name][:, :8] = value
    (logits_short,) = session.run(None, short)
    (logits_long,) = session.run(None, long)
    assert logits_short.shape == logits_long.shape == (2, realmodels.TEXT_LABELS)
    # Unmasked, the 32 extra tokens move these logits (|x| ~ 0.05) by 2e-4 to 5e-4.
    np.testing.assert_allclose(logits_long, logits_short, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("exporter", EXPORTER_PARAMS)
def test_dlrm_signature_tables_and_one_batch(exporter: Exporter) -> None:
    path = realmodels.dlrm(exporter=exporter)
    expected = {"dense": ("FLOAT", ["batch", realmodels.DLRM_DENSE])}
    for i, _ in enumerate(realmodels.DLRM_TABLES):
        expected[f"cat_{i}"] = ("INT64", ["batch", 1])
    expected["score"] = ("FLOAT", ["batch", 1])
    assert _signature(path) == expected
    for i, rows in enumerate(realmodels.DLRM_TABLES):
        assert _tables(path, f"cat_{i}") == [rows]

    (score,) = _session(path).run(None, realmodels.dlrm_feed(2))
    assert score.shape == (2, 1)
    assert ((score > 0) & (score < 1)).all()


@pytest.mark.parametrize("exporter", EXPORTER_PARAMS)
def test_cnn_signature_and_one_batch(exporter: Exporter) -> None:
    path = realmodels.cnn(exporter=exporter)
    side = realmodels.CNN_IMAGE
    assert _signature(path) == {
        "input": ("FLOAT", ["batch", 3, side, side]),
        "logits": ("FLOAT", ["batch", realmodels.CNN_CLASSES]),
    }
    (logits,) = _session(path).run(None, realmodels.cnn_feed(2))
    assert logits.shape == (2, realmodels.CNN_CLASSES)
    assert np.isfinite(logits).all()


@pytest.mark.parametrize(
    ("name", "export", "feed", "threshold"),
    [
        pytest.param(
            "bert",
            lambda: realmodels.bert(True),
            lambda: realmodels.text_feed(2, 12),
            0,
            id="bert-torchscript",
        ),
        pytest.param(
            "dlrm", realmodels.dlrm, lambda: realmodels.dlrm_feed(2), 0, id="dlrm-torchscript"
        ),
        pytest.param(
            "bert",
            lambda: realmodels.bert(True, exporter="dynamo"),
            lambda: realmodels.text_feed(2, 12),
            1024,  # with 0 ONNX Runtime cannot shape-infer its external int64 Slice starts
            marks=pytest.mark.slow,
            id="bert-dynamo",  # its source already keeps the weights in bert.onnx.data
        ),
    ],
)
def test_external_data_copy_gives_the_same_outputs(
    name: str,
    export: Callable[[], Path],
    feed: Callable[[], dict[str, np.ndarray]],
    threshold: int,
) -> None:
    original = export()
    copy = realmodels.with_external_data(original, size_threshold=threshold)
    assert copy.parent != original.parent
    assert sorted(p.name for p in copy.parent.iterdir()) == [f"{name}.data", f"{name}.onnx"]
    stored = onnx.load(str(copy), load_external_data=False).graph.initializer
    external = [t for t in stored if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) == len(stored) if threshold == 0 else len(external) > len(stored) // 3
    assert realmodels.with_external_data(original, size_threshold=threshold) == copy  # cached

    inputs = feed()
    for expected, got in zip(
        _session(original).run(None, inputs), _session(copy).run(None, inputs), strict=True
    ):
        np.testing.assert_array_equal(got, expected)


def test_exports_are_cached_and_deterministic(tmp_path: Path) -> None:
    first = realmodels.dlrm(root=tmp_path / "a")
    stamp = first.stat().st_mtime_ns
    assert realmodels.dlrm(root=tmp_path / "a") == first
    assert first.stat().st_mtime_ns == stamp
    second = realmodels.dlrm(root=tmp_path / "b")
    assert second.read_bytes() == first.read_bytes()
    assert [p.name for p in (tmp_path / "a").iterdir()] == [first.parent.name]  # no leftovers

"""`python -m harness run` on models exported the way users export them (tests/realmodels.py):
a transformers BERT with the sequence dim symbolic, a DLRM-shaped recommender with small
tables, a torchvision CNN. Real exporters, real ONNX Runtime, real LoadGen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from tests import realmodels

pytestmark = pytest.mark.slow

#: Short LoadGen runs: these tests check what runs, not how fast.
QUICK = ["--duration-s", "0.2", "--samples", "64", "--batch-size", "4"]


def _run(capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str) -> tuple[int, dict, str]:
    out = tmp_path / "result.json"
    code = main(
        [
            "run",
            *argv,
            *QUICK,
            "--out",
            str(tmp_path / "logs"),
            "--json",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    captured = capsys.readouterr()
    result = json.loads(out.read_text()) if code == 0 else {}
    return code, result, captured.err


def _ranges(result: dict) -> dict[str, tuple[float, float, str]]:
    return {
        t["name"]: (t["range"]["low"], t["range"]["high"], t["range"]["source"])
        for t in result["inputs"]["tensors"]
        if "range" in t
    }


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("harness: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def bert_seq() -> Path:
    realmodels.need("transformers")
    return realmodels.bert(dynamic_sequence=True)


def test_bert_with_a_symbolic_sequence_runs_once_the_dim_is_bound(
    bert_seq: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, tmp_path, "--model", str(bert_seq))
    assert code == 2
    line = _one_line(err)
    assert "input 'input_ids' axis 1 is the symbolic dim 'sequence'" in line
    assert "--dim sequence=N" in line

    code, result, _ = _run(capsys, tmp_path, "--model", str(bert_seq), "--dim", "sequence=24")
    assert code == 0 and result["valid"]
    assert result["inputs"]["dims"] == {"sequence": 24}
    shapes = {t["name"]: t["sample_shape"] for t in result["inputs"]["tensors"]}
    assert shapes == {"input_ids": [24], "attention_mask": [24], "token_type_ids": [24]}
    ranges = _ranges(result)
    assert ranges["token_type_ids"] == (0, 1, "indexes a table of 2 rows")
    assert ranges["input_ids"][:2] == (0, realmodels.TEXT_VOCAB - 1)
    assert ranges["attention_mask"][2] == "default"


def test_a_wrong_dim_name_is_one_line_naming_the_dims_the_model_has(
    bert_seq: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, tmp_path, "--model", str(bert_seq), "--dim", "seq_len=24")
    assert code == 2
    assert "no input of model bert.onnx has a dimension named 'seq_len'" in _one_line(err)
    assert "(its symbolic non-batch dims: sequence)" in err


def test_an_out_of_table_range_names_the_input_and_the_fix(
    bert_seq: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(
        capsys,
        tmp_path,
        *("--model", str(bert_seq), "--dim", "sequence=8"),
        *("--input-range", "token_type_ids=0:99"),
    )
    assert code == 1
    line = _one_line(err)
    assert "token_type_ids" in line and "0..99 (--input-range)" in line
    assert "--input-range NAME=LO:HI" in line and "--data" in line


def test_bert_int8_is_built_and_scored_by_top1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    realmodels.need("transformers")
    model = realmodels.bert(dynamic_sequence=False)
    code, result, _ = _run(capsys, tmp_path, "--model", str(model), "--precision", "int8")
    assert code == 0 and result["valid"]
    agreement = result["agreement"]
    assert (agreement["metric"], agreement["output"]) == ("top1", "logits")
    # Top-1 kept on a count of samples, at least the tuner's default floor (0.8; all 32 of
    # 32 when this was written).
    assert agreement["value"] == agreement["top1"] and agreement["samples"] == 32
    assert (agreement["value"] * 32).is_integer() and agreement["value"] >= 0.8


def test_an_encoders_hidden_states_are_scored_by_cosine_and_any_output_can_be_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    realmodels.need("transformers")
    model = realmodels.bert_encoder()
    bound = ("--model", str(model), "--dim", "sequence=8", "--precision", "int8")
    code, result, _ = _run(capsys, tmp_path, *bound)
    assert code == 0 and result["valid"]
    agreement = result["agreement"]
    assert (agreement["metric"], agreement["output"]) == ("cosine", "last_hidden_state")
    assert agreement["value"] >= 0.99  # int8 hidden states point where fp32's do (0.9995)

    # A pooled embedding [N, 64] has the shape of class scores: auto would take top1, so an
    # embedding output is named with its metric.
    pooled = ("--accuracy-output", "pooler_output", "--accuracy-metric", "cosine")
    code, result, _ = _run(capsys, tmp_path, *bound, *pooled)
    assert code == 0
    assert (result["agreement"]["output"], result["agreement"]["metric"]) == (
        "pooler_output",
        "cosine",
    )

    code, _, err = _run(capsys, tmp_path, *bound, "--accuracy-output", "pooled")
    assert code == 2
    assert "(outputs: last_hidden_state, pooler_output)" in _one_line(err)


def test_tokenized_data_feeds_every_input_and_a_wrong_length_is_named(
    bert_seq: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "tokens.npz"
    np.savez(data, **realmodels.text_feed(16, 12, seed=1))
    code, result, _ = _run(
        capsys, tmp_path, "--model", str(bert_seq), "--dim", "sequence=12", "--data", str(data)
    )
    assert code == 0 and result["valid"]
    assert result["inputs"]["data"] == str(data)
    assert _ranges(result) == {}  # real data: no synthetic ranges

    folder = tmp_path / "per-input"
    folder.mkdir()
    for name, array in realmodels.text_feed(8, 12, seed=2).items():
        np.save(folder / f"{name}.npy", array)
    code, result, _ = _run(
        capsys, tmp_path, "--model", str(bert_seq), "--dim", "sequence=12", "--data", str(folder)
    )
    assert code == 0 and result["valid"]

    code, _, err = _run(
        capsys, tmp_path, "--model", str(bert_seq), "--dim", "sequence=32", "--data", str(data)
    )
    assert code == 2
    line = _one_line(err)
    assert "tokens.npz input input_ids has shape (16, 12)" in line and "(32,)" in line


def test_dlrm_indices_stay_inside_each_table_and_int8_is_scored_by_relative_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    realmodels.need("torch")
    model = realmodels.dlrm()
    code, result, _ = _run(capsys, tmp_path, "--model", str(model), "--precision", "int8")
    assert code == 0 and result["valid"]
    ranges = _ranges(result)
    for i, rows in enumerate(realmodels.DLRM_TABLES):
        assert ranges[f"cat_{i}"] == (0, rows - 1, f"indexes a table of {rows} rows")
    assert "dense" not in ranges
    assert result["agreement"]["metric"] == "relative"  # one score per sample

    code, result, _ = _run(
        capsys,
        tmp_path,
        *("--model", str(model), "--precision", "int8", "--accuracy-metric", "cosine"),
    )
    assert code == 0 and result["agreement"]["metric"] == "cosine"


def test_a_torchvision_cnn_exported_by_dynamo_with_external_data_runs_int8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    realmodels.need("torchvision")
    model = realmodels.cnn(exporter="dynamo")
    assert Path(f"{model}.data").is_file()  # the dynamo exporter keeps weights beside the model
    code, result, _ = _run(capsys, tmp_path, "--model", str(model), "--precision", "int8")
    assert code == 0 and result["valid"]
    assert result["agreement"]["metric"] == "top1"
    variant = Path(result["variant_path"])
    assert Path(f"{variant}.data").is_file()  # the int8 variant keeps its weights beside it too

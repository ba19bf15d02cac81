"""`python -m harness run` on models with exporters' quirks, with the real LoadGen and ONNX
Runtime: a state batched on axis 1 beside a rank-0 sample rate, a -1 batch with '?' sizes and
labelled data, a jax one-hot fed its whole domain, an agreement under the floor said loudly,
and a bound size past memory refused in one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import quirkmodels

FAST = ["--duration-s", "0.3", "--samples", "64"]


def _json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_a_stateful_model_runs_int8_with_its_state_on_axis_1(
    harness: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = quirkmodels.stateful(tmp_path / "vad.onnx")
    result = tmp_path / "r.json"
    code = harness(
        *("--model", str(model), "--precision", "int8", "--batch-size", "4", "--streams", "2"),
        *("--input-range", "sr=16000:16000", *FAST, "--json", str(result)),
    )
    assert code == 0, capsys.readouterr().err
    data = _json(result)
    assert data["valid"] and data["samples_per_second"] > 0
    tensors = {t["name"]: t for t in data["inputs"]["tensors"]}
    assert tensors["state"]["sample_shape"] == [2, 4]
    assert tensors["state"]["range"]["source"].startswith("a recurrent state")
    assert tensors["sr"]["range"] == {"low": 16000, "high": 16000, "source": "--input-range"}
    assert data["agreement"]["samples"] == 32 and data["agreement"]["floor"] == 0.8


def test_a_scalar_inputs_drawn_value_is_printed_with_the_result(
    harness: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """This model takes any sample rate, so it runs at the default 0..1: the value drawn is
    printed beside the result, where a user sees that sr needs --input-range."""
    model = quirkmodels.stateful(tmp_path / "vad.onnx")
    assert harness("--model", str(model), *FAST) == 0
    assert "sr 0..1 (default)" in capsys.readouterr().out


def test_labelled_data_scores_accuracy_relative_to_fp32(
    harness: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = quirkmodels.paddle_classifier(tmp_path / "cls.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 3, 6, 10)).astype(np.float32)
    # The labels fp32 would give (the weights' argmax), a tenth of them flipped.
    w = quirkmodels._weights(3, 2, 1) * 4
    labels = np.argmax(x.mean(axis=(2, 3)) @ w, axis=1)
    labels[::10] = 1 - labels[::10]
    data = tmp_path / "data.npz"
    np.savez(data, x=x, labels=labels.astype(np.int64))
    result = tmp_path / "r.json"
    code = harness(
        *("--model", str(model), "--shape", "x=3x6x10", "--data", str(data)),
        *("--precision", "int8", "--batch-size", "8", "--accuracy-floor", "0.99"),
        *("--duration-s", "0.3", "--json", str(result)),
    )
    out = capsys.readouterr().out
    assert code == 0
    agreement = _json(result)["agreement"]
    assert agreement["metric"] == "accuracy" and agreement["floor"] == 0.99
    # Samples 32..63 (after the 32 calibration samples): fp32 misses exactly the flipped ones.
    flipped = sum(1 for i in range(32, 64) if i % 10 == 0)
    assert agreement["reference_accuracy"] == pytest.approx(1 - flipped / 32)
    assert agreement["value"] == pytest.approx(
        agreement["accuracy"] / agreement["reference_accuracy"]
    )
    assert "accuracy on the labels: int8 " in out and f"fp32 {1 - flipped / 32:.4f}" in out


def test_a_byte_one_hot_is_fed_its_whole_domain(
    harness: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = quirkmodels.byte_classifier(tmp_path / "bytes.onnx")
    assert harness("--model", str(model), "--precision", "int8", *FAST) == 0
    out = capsys.readouterr().out
    assert "bytes 0..256 (compared against the 257 values 0..256 (Equal: a one-hot))" in out


def test_an_agreement_under_the_floor_is_a_warning_line(
    harness: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """int8 moves a classifier with random float weights off fp32's outputs, so its cosine
    agreement is under 1: with a floor of 1 the result carries one warning line beside its
    VALID row, not a silent figure."""
    model = quirkmodels.paddle_classifier(tmp_path / "cls.onnx")
    code = harness(
        *("--model", str(model), "--shape", "x=3x6x10", "--precision", "int8"),
        *("--accuracy-metric", "cosine", "--accuracy-floor", "1", *FAST),
    )
    assert code == 0
    out = capsys.readouterr().out
    warning = [line for line in out.splitlines() if line.startswith("WARNING:")]
    assert len(warning) == 1
    assert "int8 is under the accuracy floor: cosine 0." in warning[0] and "< 1;" in warning[0]
    assert "not a usable result" in warning[0]
    assert [line.split()[:2] for line in out.splitlines() if line.startswith("offline ")] == [
        ["offline", "VALID"]
    ]


def test_a_bound_size_past_memory_is_one_line_naming_the_input(
    harness: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = quirkmodels.paddle_classifier(tmp_path / "cls.onnx")
    assert harness("--model", str(model), "--shape", "x=3x999999x999999") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "input 'x' of shape 1x3x999999x999999 (float32) needs 10.9 TiB, more than" in err


def test_a_fixed_batch_model_is_refused_naming_input_and_axis(
    harness: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = quirkmodels.fixed_batch(tmp_path / "fixed.onnx")
    assert harness("--model", str(model)) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "input 'x' has a fixed batch size 1 on axis 0" in err

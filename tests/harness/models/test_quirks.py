"""Models as trained models' exporters write them: where each input's batch is, what an
anonymous dim needs, which values a one-hot input takes, and the errors that name the input,
the axis and the flag to pass."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from harness.dataset import input_ranges, synthetic_samples
from harness.errors import ConfigError, ModelError
from harness.models import inspect_model
from tests import quirkmodels


def _config_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as err:
        inspect_model(path, **kwargs)  # type: ignore[arg-type]
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_batch_written_minus_one_is_the_batch_and_question_marks_need_shape(
    tmp_path: Path,
) -> None:
    path = quirkmodels.paddle_classifier(tmp_path / "cls.onnx")
    message = _config_error(path)
    assert "input 'x' axis 2 has no size (written '?')" in message
    assert "--shape x=3xD1xD2" in message
    assert "shapes = {x = [3, D1, D2]}" in message
    info = inspect_model(path, shapes={"x": (3, 48, 192)})
    (x,) = info.inputs
    assert (x.batch_axis, x.sample_shape, x.symbols) == (0, (3, 48, 192), ("", "", ""))
    assert info.batch == "" and info.dims == {}  # the two '?' are not one dim
    assert (info.outputs[0].batch_axis, info.outputs[0].sample_shape) == (0, (2,))


def test_a_question_mark_is_not_a_dim_name_for_dim(tmp_path: Path) -> None:
    path = quirkmodels.paddle_classifier(tmp_path / "cls.onnx")
    message = _config_error(path, dims={"?": 48})
    assert message.startswith("--dim ?: '?' is not a name")
    assert "--shape INPUT=D1xD2" in message
    assert "unk__5" in _config_error(
        quirkmodels.byte_classifier(tmp_path / "b.onnx"), dims={"unk__5": 3}
    )


def test_a_state_is_batched_where_the_batch_symbol_stands_and_a_scalar_is_shared(
    tmp_path: Path,
) -> None:
    info = inspect_model(quirkmodels.stateful(tmp_path / "vad.onnx"))
    specs = {t.name: t for t in info.inputs}
    assert info.batch == "batch"
    assert (specs["input"].batch_axis, specs["input"].sample_shape) == (0, (16,))
    assert (specs["state"].batch_axis, specs["state"].sample_shape) == (1, (2, 4))
    assert (specs["sr"].batch_axis, specs["sr"].sample_shape) == (None, ())
    assert specs["state"].batch_shape(5) == (2, 5, 4)
    assert specs["sr"].batch_shape(5) == ()
    outputs = {t.name: t for t in info.outputs}
    assert (outputs["stateN"].batch_axis, outputs["stateN"].sample_shape) == (1, (2, 4))
    assert info.sample_nbytes == (16 + 8) * 4  # the shared scalar is not per sample


def test_an_anonymous_state_takes_its_one_unknown_axis_as_the_batch(tmp_path: Path) -> None:
    """spox writes every dynamic dim as neither a size nor a name: input [?, ?], state
    [2, ?, 4]. The batch is the first input's axis 0; the state's one unknown axis is its."""
    info = inspect_model(quirkmodels.stateful(tmp_path / "spox.onnx", batch=""))
    specs = {t.name: t for t in info.inputs}
    assert (specs["input"].batch_axis, specs["state"].batch_axis, specs["sr"].batch_axis) == (
        0,
        1,
        None,
    )


def _message_for_fixed_batch(tmp_path: Path) -> str:
    with pytest.raises(ModelError) as err:
        inspect_model(quirkmodels.fixed_batch(tmp_path / "fixed.onnx"))
    return str(err.value)


def test_a_model_with_no_batched_input_is_refused_naming_the_input_and_axis(
    tmp_path: Path,
) -> None:
    message = _message_for_fixed_batch(tmp_path)
    assert "input 'x' has a fixed batch size 1 on axis 0" in message
    assert "symbolic (or -1) batch axis" in message and "\n" not in message


def test_an_input_without_a_batch_axis_is_one_shared_value_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="harness"):
        info = inspect_model(quirkmodels.shared_input(tmp_path / "shared.onnx"))
    bias = {t.name: t for t in info.inputs}["bias"]
    assert (bias.batch_axis, bias.sample_shape) == (None, (5,))
    assert "input 'bias' has no batch axis (shape 5): every batch is fed the same value" in (
        caplog.text
    )


def test_one_hot_inputs_are_drawn_from_their_domain(tmp_path: Path) -> None:
    """The byte classifier's synthetic bytes cover 0..256, as real files' bytes and jax's
    padding value do, not the 0..1 of an unknown integer."""
    byte_info = inspect_model(quirkmodels.byte_classifier(tmp_path / "bytes.onnx"))
    ranges = input_ranges(byte_info)
    assert (ranges["bytes"].low, ranges["bytes"].high) == (0, 256)
    assert "257 values 0..256" in ranges["bytes"].source
    drawn = synthetic_samples(byte_info, 512, seed=0).inputs["bytes"]
    assert drawn.min() == 0 and drawn.max() == 256 and len(np.unique(drawn)) == 257

    hot_info = inspect_model(quirkmodels.one_hot_op(tmp_path / "hot.onnx"))
    span = input_ranges(hot_info)["ids"]
    assert (span.low, span.high) == (0, 10) and "depth 11" in span.source


def test_a_batch_is_fed_on_each_inputs_batch_axis_and_matches_per_sample_answers(
    tmp_path: Path,
) -> None:
    """Samples gathered for a batch reach the model on their batch axis: the model's answer
    for each sample is that sample's own (distinct inputs, distinct states)."""
    path = quirkmodels.stateful(tmp_path / "vad.onnx")
    info = inspect_model(path)
    samples = synthetic_samples(info, 16, seed=4, ranges=input_ranges(info, {"sr": (8000, 8000)}))
    assert samples.inputs["state"].shape == (16, 2, 4)  # the harness's layout: samples first
    assert np.all(samples.inputs["state"] == 0)  # a state starts at zeros
    assert input_ranges(info)["state"].source.startswith("a recurrent state")
    samples.inputs["state"][:] = np.arange(16 * 8, dtype=np.float32).reshape(16, 2, 4)
    batch = samples.gather(np.array([3, 7, 11], np.intp))
    assert batch["state"].shape == (2, 3, 4) and batch["sr"].shape == ()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output, state_n = session.run(None, batch)
    np.testing.assert_allclose(output, quirkmodels.stateful_expected(batch), rtol=1e-5)
    np.testing.assert_allclose(state_n[:, 1], np.tanh(samples.inputs["state"][7]), rtol=1e-6)
    assert float(batch["sr"]) == 8000

"""The query sample library: synthetic samples, sample folders and the default sample count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.dataset import (
    DEFAULT_INT_RANGE,
    DEFAULT_SAMPLE_BYTES,
    MAX_SAMPLES,
    SampleSet,
    default_sample_count,
    input_ranges,
    load_samples_from,
    synthetic_samples,
)
from harness.errors import ConfigError
from harness.models import ModelInfo, TensorSpec


def model(*inputs: TensorSpec) -> ModelInfo:
    return ModelInfo(
        name="m",
        path=Path("m.onnx"),
        sha256="0" * 64,
        inputs=inputs,
        outputs=(TensorSpec("out", "float32", (10,)),),
    )


IMAGE = TensorSpec("image", "float32", (3, 8, 8))
IDS = TensorSpec("ids", "int64", (5,))
MASK = TensorSpec("mask", "bool", (5,))
HALF = TensorSpec("half", "float16", (2, 2))
MIXED = model(IMAGE, IDS, MASK, HALF)


# --- synthetic samples --------------------------------------------------------------------


def test_synthetic_samples_match_every_input_shape_and_dtype() -> None:
    samples = synthetic_samples(MIXED, 7, seed=0)
    assert list(samples.inputs) == ["image", "ids", "mask", "half"]
    for spec in MIXED.inputs:
        array = samples.inputs[spec.name]
        assert array.shape == (7, *spec.sample_shape)
        assert array.dtype == spec.np_dtype
        assert array.flags.c_contiguous
    assert samples.count == 7
    assert samples.nbytes == 7 * MIXED.sample_nbytes
    ids = samples.inputs["ids"]
    assert ids.min() >= 0 and ids.max() < 100
    assert samples.inputs["mask"].any() and not samples.inputs["mask"].all()
    assert np.isfinite(samples.inputs["image"]).all() and samples.inputs["image"].std() > 0.5


def test_synthetic_samples_are_seeded() -> None:
    a = synthetic_samples(MIXED, 4, seed=1)
    b = synthetic_samples(MIXED, 4, seed=1)
    c = synthetic_samples(MIXED, 4, seed=2)
    for name in a.inputs:
        np.testing.assert_array_equal(a.inputs[name], b.inputs[name])
    assert not np.array_equal(a.inputs["image"], c.inputs["image"])
    assert not np.array_equal(a.inputs["ids"], c.inputs["ids"])


def test_synthetic_samples_reject_an_unsupported_dtype() -> None:
    with pytest.raises(ConfigError, match="strings"):
        synthetic_samples(model(TensorSpec("strings", "<U4", (2,))), 1, seed=0)


# --- gather and head ----------------------------------------------------------------------


def test_gather_takes_the_indexed_samples_of_every_input() -> None:
    samples = SampleSet(
        {
            "a": np.arange(10, dtype=np.float32).reshape(5, 2),
            "b": np.arange(5, dtype=np.int64),
        }
    )
    batch = samples.gather(np.array([3, 0, 3], dtype=np.intp))
    np.testing.assert_array_equal(batch["a"], [[6, 7], [0, 1], [6, 7]])
    np.testing.assert_array_equal(batch["b"], [3, 0, 3])


def test_head_returns_at_most_the_whole_set() -> None:
    samples = SampleSet({"a": np.arange(5, dtype=np.float32)})
    np.testing.assert_array_equal(samples.head(2)["a"], [0, 1])
    assert len(samples.head(64)["a"]) == 5


# --- default sample count -----------------------------------------------------------------


def test_default_sample_count_fits_the_ram_budget_for_a_big_model() -> None:
    resnet = model(TensorSpec("input", "float32", (3, 224, 224)))
    count = default_sample_count(resnet)
    assert count == DEFAULT_SAMPLE_BYTES // (3 * 224 * 224 * 4) == 222
    assert default_sample_count(resnet, budget_bytes=1) == 1


def test_default_sample_count_is_capped_for_a_tiny_model() -> None:
    tiny = model(TensorSpec("input", "float32", (16,)))
    assert default_sample_count(tiny) == MAX_SAMPLES == 1024
    assert default_sample_count(model(TensorSpec("empty", "float32", (0,)))) == MAX_SAMPLES


# --- sample folders -----------------------------------------------------------------------

SINGLE = model(TensorSpec("input", "float32", (4,)))
DOUBLE = model(TensorSpec("input", "float32", (4,)), TensorSpec("ids", "int64", (2,)))


def test_npy_folder_for_a_single_input_model(tmp_path: Path) -> None:
    for i in range(3):
        # float64 files are cast to the input's dtype; a leading batch axis of 1 is dropped.
        data = np.full((1, 4) if i == 1 else (4,), i, dtype=np.float64)
        np.save(tmp_path / f"sample_{i}.npy", data)
    samples = load_samples_from(tmp_path, SINGLE)
    array = samples.inputs["input"]
    assert array.shape == (3, 4) and array.dtype == np.float32
    np.testing.assert_array_equal(array[:, 0], [0, 1, 2])
    assert load_samples_from(tmp_path, SINGLE, limit=2).count == 2


def test_npz_folder_for_a_two_input_model(tmp_path: Path) -> None:
    for i in range(2):
        np.savez(
            tmp_path / f"s{i}.npz",
            input=np.full((1, 4), i, np.float32),
            ids=np.array([i, i + 1]),
            unused=np.zeros(3),
        )
    samples = load_samples_from(tmp_path, DOUBLE)
    assert samples.inputs["input"].shape == (2, 4)
    assert samples.inputs["ids"].dtype == np.int64
    np.testing.assert_array_equal(samples.inputs["ids"], [[0, 1], [1, 2]])


def test_wrong_shape_names_the_file_and_input(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros(4, np.float32))
    np.save(tmp_path / "b.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(ConfigError, match=r"b\.npy input input has shape \(2, 3\)"):
        load_samples_from(tmp_path, SINGLE)


def test_missing_input_names_the_file_and_input(tmp_path: Path) -> None:
    np.savez(tmp_path / "only_input.npz", input=np.zeros(4, np.float32))
    with pytest.raises(ConfigError, match=r"only_input\.npz lacks input\(s\) ids"):
        load_samples_from(tmp_path, DOUBLE)


def test_empty_folder_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no samples here")
    with pytest.raises(ConfigError, match=r"no \.npy or \.npz files") as info:
        load_samples_from(tmp_path, SINGLE)
    assert str(tmp_path) in str(info.value)


def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a file nor a folder"):
        load_samples_from(tmp_path / "nope", SINGLE)


def test_npy_files_for_a_two_input_model_name_the_inputs(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros(4, np.float32))
    with pytest.raises(ConfigError, match=r"2 inputs \(input, ids\).*\.npz"):
        load_samples_from(tmp_path, DOUBLE)


def test_unreadable_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(ConfigError, match=r"broken\.npy"):
        load_samples_from(tmp_path, SINGLE)


# --- value ranges -------------------------------------------------------------------------

TYPES = TensorSpec(
    "token_type_ids", "int64", (6,), domain=(0, 1), domain_source="indexes a table of 2 rows"
)
VOCAB = TensorSpec(
    "input_ids", "int32", (6,), domain=(0, 30521), domain_source="indexes a table of 30522 rows"
)
ATTENTION = TensorSpec("attention_mask", "int64", (6,))
DENSE = TensorSpec("dense", "float32", (13,))
ENCODER = model(VOCAB, ATTENTION, TYPES, DENSE)


def test_index_inputs_stay_inside_their_table_and_other_integers_get_the_default() -> None:
    ranges = input_ranges(ENCODER)
    assert (ranges["token_type_ids"].low, ranges["token_type_ids"].high) == (0, 1)
    assert ranges["token_type_ids"].source == "indexes a table of 2 rows"
    assert (ranges["input_ids"].low, ranges["input_ids"].high) == (0, 30521)
    assert (ranges["attention_mask"].low, ranges["attention_mask"].high) == DEFAULT_INT_RANGE
    assert "dense" not in ranges  # floats stay standard normal
    samples = synthetic_samples(ENCODER, 400, seed=3, ranges=ranges)
    types = samples.inputs["token_type_ids"]
    assert types.min() == 0 and types.max() == 1
    ids = samples.inputs["input_ids"]
    assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() <= 30521 and ids.max() > 1000


def test_an_override_wins_and_floats_take_one_too() -> None:
    ranges = input_ranges(ENCODER, {"attention_mask": (1, 1), "dense": (0.0, 0.5)})
    assert ranges["attention_mask"].source == "--input-range"
    samples = synthetic_samples(ENCODER, 50, seed=0, ranges=ranges)
    assert (samples.inputs["attention_mask"] == 1).all()
    dense = samples.inputs["dense"]
    assert dense.dtype == np.float32 and dense.min() >= 0.0 and dense.max() <= 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mask": (0, 1)}, r"--input-range mask: model m has no input 'mask' \(inputs: input_ids"),
        ({"attention_mask": (0, 1.5)}, r"attention_mask: the input is int64; give whole numbers"),
        ({"input_ids": (0, 2**40)}, r"input_ids: 0:1.09951e\+12 does not fit int32"),
    ],
)
def test_bad_overrides_are_config_errors(
    overrides: dict[str, tuple[float, float]], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        input_ranges(ENCODER, overrides)


# --- stacked data (tokenized sets) --------------------------------------------------------

TOKENS = model(TensorSpec("input_ids", "int64", (8,)), TensorSpec("attention_mask", "int64", (8,)))


def test_one_npz_archive_of_stacked_inputs(tmp_path: Path) -> None:
    ids = np.arange(5 * 8).reshape(5, 8)
    np.savez(tmp_path / "tokens.npz", input_ids=ids, attention_mask=np.ones((5, 8), np.int64))
    samples = load_samples_from(tmp_path / "tokens.npz", TOKENS)
    assert samples.count == 5
    np.testing.assert_array_equal(samples.inputs["input_ids"], ids)
    assert load_samples_from(tmp_path / "tokens.npz", TOKENS, limit=3).count == 3


def test_a_folder_with_one_npy_per_input(tmp_path: Path) -> None:
    np.save(tmp_path / "input_ids.npy", np.full((4, 8), 7, np.int32))
    np.save(tmp_path / "attention_mask.npy", np.ones((4, 8), np.int64))
    samples = load_samples_from(tmp_path, TOKENS)
    assert samples.count == 4 and samples.inputs["input_ids"].dtype == np.int64


def test_per_input_files_with_different_counts_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "input_ids.npy", np.zeros((4, 8), np.int64))
    np.save(tmp_path / "attention_mask.npy", np.zeros((3, 8), np.int64))
    with pytest.raises(ConfigError, match="input_ids 4, attention_mask 3"):
        load_samples_from(tmp_path, TOKENS)


def test_a_sequence_length_other_than_the_bound_one_names_file_and_input(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "short.npz",
        input_ids=np.zeros((2, 16), np.int64),
        attention_mask=np.zeros((2, 16), np.int64),
    )
    with pytest.raises(ConfigError) as err:
        load_samples_from(tmp_path / "short.npz", TOKENS)
    message = str(err.value)
    assert "short.npz input input_ids has shape (2, 16)" in message and "(8,)" in message
    assert "--dim" in message and "\n" not in message

"""The query sample library: inputs held in RAM, pre-stacked so a batch is one gather per input.

Samples are synthetic (seeded, of the model's bound shapes and dtypes, integer inputs inside
the tables they index) or read from `.npy` / `.npz` files (`load_samples_from`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import ConfigError
from harness.models.info import ModelInfo

#: Default RAM budget for the sample set; MLPerf's 1024 samples of ResNet-50 would take 616 MB.
DEFAULT_SAMPLE_BYTES = 128 * 2**20
MAX_SAMPLES = 1024


@dataclass(frozen=True)
class SampleSet:
    """Stacked inputs (axis 0 = sample index), one array per model input name."""

    inputs: Mapping[str, np.ndarray]

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The batch made of these sample indices (one `take` per input)."""
        return {name: array.take(indices, axis=0) for name, array in self.inputs.items()}

    def head(self, n: int) -> dict[str, np.ndarray]:
        """The first `n` samples (fewer if the set is smaller), as one batch."""
        return {name: array[:n] for name, array in self.inputs.items()}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.inputs.values())


def default_sample_count(model: ModelInfo, budget_bytes: int = DEFAULT_SAMPLE_BYTES) -> int:
    """As many samples as fit the RAM budget, at least 1 and at most MLPerf's 1024."""
    per_sample = max(1, model.sample_nbytes)
    return max(1, min(MAX_SAMPLES, budget_bytes // per_sample))


#: Values of an integer input that indexes no table (an attention mask, a flag): 0 or 1.
DEFAULT_INT_RANGE = (0, 1)


@dataclass(frozen=True)
class InputRange:
    """The values synthetic samples of one input are drawn from, both ends inclusive, and why."""

    low: float
    high: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "source": self.source}


def input_ranges(
    model: ModelInfo, overrides: Mapping[str, tuple[float, float]] | None = None
) -> dict[str, InputRange]:
    """The range of every integer or bool input, and of float inputs given one: `overrides`
    (--input-range) first; an integer input that indexes tables stays inside the smallest
    (harness.models.graph); other integers get DEFAULT_INT_RANGE. Floats without an override
    are standard normal and absent here."""
    overrides = dict(overrides or {})
    names = [s.name for s in model.inputs]
    for name in overrides:
        if name not in names:
            raise ConfigError(
                f"--input-range {name}: model {model.name} has no input {name!r} "
                f"(inputs: {', '.join(names)})"
            )
    ranges: dict[str, InputRange] = {}
    for spec in model.inputs:
        kind = spec.np_dtype.kind
        if spec.name in overrides:
            low, high = overrides[spec.name]
            if kind in "iub" and (low != int(low) or high != int(high)):
                raise ConfigError(
                    f"--input-range {spec.name}: the input is {spec.dtype}; give whole "
                    f"numbers, got {low:g}:{high:g}"
                )
            if kind in "iu":
                info = np.iinfo(spec.np_dtype)
                if low < info.min or high > info.max:
                    raise ConfigError(
                        f"--input-range {spec.name}: {low:g}:{high:g} does not fit {spec.dtype}"
                    )
            ranges[spec.name] = InputRange(low, high, "--input-range")
        elif kind in "iu" and spec.index_rows is not None:
            rows = spec.index_rows
            ranges[spec.name] = InputRange(0, rows - 1, f"indexes a table of {rows} rows")
        elif kind in "iub":
            ranges[spec.name] = InputRange(*DEFAULT_INT_RANGE, "default")
    return ranges


def synthetic_samples(
    model: ModelInfo,
    count: int,
    seed: int,
    ranges: Mapping[str, InputRange] | None = None,
) -> SampleSet:
    """Seeded random inputs: standard normal floats, integers and bools within `ranges`
    (default: `input_ranges(model)`), floats uniform within theirs where given."""
    ranges = input_ranges(model) if ranges is None else ranges
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for spec in model.inputs:
        shape = (count, *spec.sample_shape)
        dtype = spec.np_dtype
        span = ranges.get(spec.name)
        if dtype.kind == "f":
            if span is None:
                array = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
            else:
                array = rng.uniform(span.low, span.high, size=shape).astype(dtype)
        elif dtype.kind in "iub":
            low, high = span_of(span)
            array = rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
        else:
            raise ConfigError(f"input {spec.name}: cannot synthesise samples of dtype {dtype}")
        inputs[spec.name] = np.ascontiguousarray(array)
    return SampleSet(inputs)


def span_of(span: InputRange | None) -> tuple[int, int]:
    """An integer input's (low, high), DEFAULT_INT_RANGE when none is given."""
    if span is None:
        return DEFAULT_INT_RANGE
    return int(span.low), int(span.high)


def load_samples_from(path: Path, model: ModelInfo, limit: int | None = None) -> SampleSet:
    """Samples from `path` (--data), any of:

    * a `.npz` file, or a folder of them: arrays named after the inputs, each one sample
      (the input's sample shape) or a stack of them (`(n, *sample shape)`, e.g. the
      `input_ids` / `attention_mask` arrays of a tokenized text set);
    * a folder with one `<input name>.npy` per input, each a stack of samples;
    * a `.npy` file, or a folder of them, for a model with one input: one sample or a stack
      per file.

    Every array must have the input's bound sample shape; a ConfigError names the file and
    the input otherwise.
    """
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        per_input = [path / f"{s.name}.npy" for s in model.inputs]
        if len(model.inputs) > 1 and all(p.is_file() for p in per_input):
            return _per_input_files(per_input, model, limit)
        files = sorted(path.glob("*.npz")) or sorted(path.glob("*.npy"))
        if not files:
            raise ConfigError(f"--data: {path} holds no .npy or .npz files")
    else:
        raise ConfigError(f"--data: {path} is neither a file nor a folder")
    if files[0].suffix not in (".npy", ".npz"):
        raise ConfigError(f"--data: {files[0]} is not a .npy or .npz file")
    if files[0].suffix == ".npy" and len(model.inputs) != 1:
        names = ", ".join(s.name for s in model.inputs)
        raise ConfigError(
            f"--data: {path} holds .npy samples but the model has {len(model.inputs)} inputs "
            f"({names}); give .npz files with one array per input name, or a folder with "
            "one <input name>.npy per input"
        )
    columns: dict[str, list[np.ndarray]] = {s.name: [] for s in model.inputs}
    total = 0
    for file in files:
        arrays = _read_sample(file, model)
        counts = set()
        for spec in model.inputs:
            stack = _as_stack(file, spec.name, arrays[spec.name], spec.sample_shape)
            counts.add(len(stack))
            columns[spec.name].append(stack.astype(spec.np_dtype, copy=False))
        if len(counts) > 1:
            raise ConfigError(
                f"--data: {file.name} holds different numbers of samples per input "
                f"({sorted(counts)})"
            )
        total += counts.pop()
        if limit and total >= limit:
            break
    return _stacked(columns, limit)


def _per_input_files(files: list[Path], model: ModelInfo, limit: int | None) -> SampleSet:
    columns: dict[str, list[np.ndarray]] = {}
    for file, spec in zip(files, model.inputs, strict=True):
        array = _read_sample(file, model, spec.name)[spec.name]
        columns[spec.name] = [
            _as_stack(file, spec.name, array, spec.sample_shape).astype(spec.np_dtype, copy=False)
        ]
    counts = {name: len(c[0]) for name, c in columns.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name} {n}" for name, n in counts.items())
        raise ConfigError(f"--data: the per-input files hold different sample counts ({listed})")
    return _stacked(columns, limit)


def _as_stack(
    file: Path, name: str, array: np.ndarray, sample_shape: tuple[int, ...]
) -> np.ndarray:
    """`array` as `(n, *sample_shape)`: one sample gets a leading axis."""
    array = np.asarray(array)
    if array.shape == sample_shape:
        return array[None]
    if array.shape[1:] == sample_shape and len(array) > 0:
        return array
    raise ConfigError(
        f"--data: {file.name} input {name} has shape {array.shape}, the model needs "
        f"{sample_shape} per sample (or a stack of them); bind the model's dims to the "
        "data's (--dim, --shape) or re-tokenize"
    )


def _stacked(columns: Mapping[str, list[np.ndarray]], limit: int | None) -> SampleSet:
    inputs = {
        name: np.ascontiguousarray(
            np.concatenate(parts)[:limit] if limit else np.concatenate(parts)
        )
        for name, parts in columns.items()
    }
    return SampleSet(inputs)


def _read_sample(
    path: Path, model: ModelInfo, single: str | None = None
) -> Mapping[str, np.ndarray]:
    """The arrays of one file by input name (no pickles: allow_pickle=False)."""
    try:
        if path.suffix == ".npy":
            return {single or model.inputs[0].name: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            missing = [s.name for s in model.inputs if s.name not in archive.files]
            if missing:
                raise ConfigError(
                    f"--data: {path.name} lacks input(s) {', '.join(missing)} "
                    f"(it holds {', '.join(archive.files) or 'nothing'})"
                )
            return {s.name: archive[s.name] for s in model.inputs}
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(f"--data: cannot read {path}: {exc}") from exc

"""The query sample library: inputs held in RAM, pre-stacked so a batch is one gather per input.

Samples are synthetic (seeded, of the model's bound shapes and dtypes, integer inputs inside
the tables they index) or read from `.npy` / `.npz` files (`load_samples_from`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import ConfigError
from harness.models.info import ModelInfo, TensorSpec, to_batch_axis

#: Default RAM budget for the sample set; MLPerf's 1024 samples of ResNet-50 would take 616 MB.
DEFAULT_SAMPLE_BYTES = 128 * 2**20
MAX_SAMPLES = 1024


@dataclass(frozen=True)
class SampleSet:
    """Inputs held in the harness's layout: one array per model input name with the sample
    index on axis 0, except an unbatched input's (`axes[name]` None), which is its one value.
    `gather` hands a batch over in the model's layout: each input's samples on its batch axis
    (`axes`, 0 where absent)."""

    inputs: Mapping[str, np.ndarray]
    axes: Mapping[str, int | None] = field(default_factory=dict)
    #: Each sample's correct class, where the data has them (--data with `labels`).
    labels: np.ndarray | None = None

    @property
    def count(self) -> int:
        return next(
            (len(a) for name, a in self.inputs.items() if self.axes.get(name, 0) is not None),
            1,
        )

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The batch made of these sample indices (one `take` per batched input), as the model
        takes it."""
        batch = {}
        for name, array in self.inputs.items():
            axis = self.axes.get(name, 0)
            batch[name] = array if axis is None else to_batch_axis(array.take(indices, 0), axis)
        return batch

    def head(self, n: int) -> dict[str, np.ndarray]:
        """The first `n` samples (fewer if the set is smaller) in the harness's layout
        (samples on axis 0; an unbatched input's one value as it is)."""
        return {
            name: array if self.axes.get(name, 0) is None else array[:n]
            for name, array in self.inputs.items()
        }

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.inputs.values())


def check_fits(model: ModelInfo, count: int, batch: int = 1) -> None:
    """ConfigError, naming the input, its shape and its size, when `count` samples or one
    batch of `batch` cannot fit in the memory this machine has available (a detector's
    height and width bound to 99999 would need 112 GiB per image)."""
    available = available_memory()
    if available is None:
        return
    need = 0
    for spec in model.inputs:
        samples = 1 if spec.batch_axis is None else max(count, batch)
        size = spec.value_nbytes * samples
        need += size
        if size > available:
            shape = "x".join(str(d) for d in spec.batch_shape(samples)) or "a scalar"
            raise ConfigError(
                f"input {spec.name!r} of shape {shape} ({spec.dtype}) needs "
                f"{_bytes_text(size)}, more than the {_bytes_text(available)} of memory this "
                "machine has available; bind smaller sizes (--dim, --shape) or a smaller batch"
            )
    if need > available:
        raise ConfigError(
            f"model {model.name}: {max(count, batch)} samples of its inputs need "
            f"{_bytes_text(need)}, more than the {_bytes_text(available)} of memory this "
            "machine has available; use fewer samples (--samples) or a smaller batch"
        )


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux's MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _bytes_text(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def batch_axes(model: ModelInfo) -> dict[str, int | None]:
    """Each input's batch axis (None: fed as one value), for SampleSet."""
    return {spec.name: spec.batch_axis for spec in model.inputs}


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
    (--input-range) first; an integer input whose values select something stays inside the
    values valid for it (the smallest table it indexes, a one-hot's depth: see
    harness.models.graph); other integers get DEFAULT_INT_RANGE. A recurrent state (an output
    carries it on) is 0..0: it starts at zeros. Other floats without an override are standard
    normal and absent here."""
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
        elif kind in "iu" and spec.domain is not None:
            ranges[spec.name] = InputRange(*spec.domain, spec.domain_source)
        elif kind == "f" and spec.state:
            ranges[spec.name] = InputRange(
                0.0, 0.0, "a recurrent state an output carries on: starts at zeros"
            )
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
    (default: `input_ranges(model)`), floats uniform within theirs where given. An unbatched
    input gets one value (a rank-0 sample rate: one number within its range); a recurrent
    state starts at zeros (its range, unless --input-range gives another)."""
    ranges = input_ranges(model) if ranges is None else ranges
    check_fits(model, count)
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for spec in model.inputs:
        shape = spec.sample_shape if spec.batch_axis is None else (count, *spec.sample_shape)
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
        inputs[spec.name] = np.asarray(array, order="C")  # 0-d stays 0-d
    return SampleSet(inputs, batch_axes(model))


def span_of(span: InputRange | None) -> tuple[int, int]:
    """An integer input's (low, high), DEFAULT_INT_RANGE when none is given."""
    if span is None:
        return DEFAULT_INT_RANGE
    return int(span.low), int(span.high)


#: The array of a `--data` file that holds each sample's correct class, when it has them.
LABELS = "labels"


def load_samples_from(path: Path, model: ModelInfo, limit: int | None = None) -> SampleSet:
    """Samples from `path` (--data), any of:

    * a `.npz` file, or a folder of them: arrays named after the inputs, each one sample
      (the input's sample shape) or a stack of them (`(n, *sample shape)`, e.g. the
      `input_ids` / `attention_mask` arrays of a tokenized text set);
    * a folder with one `<input name>.npy` per input, each a stack of samples;
    * a `.npy` file, or a folder of them, for a model with one input: one sample or a stack
      per file.

    Samples are stacked on axis 0 whatever the model's batch axis (a state `[2, batch, 128]`
    is given as `(n, 2, 128)`); an input with no batch axis is given once, its one value (the
    same in every file). A `labels` array (`labels.npy` in a per-input folder), one integer
    class per sample, gives each sample its correct answer: the precision check then scores
    task accuracy against fp32's (harness.precision). Every array must have the input's
    bound sample shape; a ConfigError names the file and the input otherwise.
    """
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        per_input = [path / f"{s.name}.npy" for s in model.inputs]
        if len(model.inputs) > 1 and all(p.is_file() for p in per_input):
            return _per_input_files(path, per_input, model, limit)
        files = sorted(path.glob("*.npz")) or [
            f for f in sorted(path.glob("*.npy")) if f.stem != LABELS
        ]
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
    shared: dict[str, np.ndarray] = {}
    labels: list[np.ndarray | None] = []
    total = 0
    for file in files:
        arrays = _read_sample(file, model)
        counts = set()
        for spec in model.inputs:
            if spec.batch_axis is None:
                shared[spec.name] = _shared(file, spec, arrays[spec.name], shared)
                continue
            stack = _as_stack(file, spec.name, arrays[spec.name], spec.sample_shape)
            counts.add(len(stack))
            columns[spec.name].append(stack.astype(spec.np_dtype, copy=False))
        if len(counts) > 1:
            raise ConfigError(
                f"--data: {file.name} holds different numbers of samples per input "
                f"({sorted(counts)})"
            )
        count = counts.pop()
        labels.append(_labels(file, arrays.get(LABELS), count))
        total += count
        if limit and total >= limit:
            break
    return _stacked(model, columns, shared, labels, limit)


def _per_input_files(
    folder: Path, files: list[Path], model: ModelInfo, limit: int | None
) -> SampleSet:
    columns: dict[str, list[np.ndarray]] = {}
    shared: dict[str, np.ndarray] = {}
    for file, spec in zip(files, model.inputs, strict=True):
        array = _read_sample(file, model, spec.name)[spec.name]
        if spec.batch_axis is None:
            shared[spec.name] = _shared(file, spec, array, shared)
            continue
        columns[spec.name] = [
            _as_stack(file, spec.name, array, spec.sample_shape).astype(spec.np_dtype, copy=False)
        ]
    counts = {name: len(c[0]) for name, c in columns.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name} {n}" for name, n in counts.items())
        raise ConfigError(f"--data: the per-input files hold different sample counts ({listed})")
    labels_file = folder / f"{LABELS}.npy"
    labels = None
    if labels_file.is_file() and LABELS not in columns:
        array = _read_sample(labels_file, model, LABELS)[LABELS]
        labels = _labels(labels_file, array, next(iter(counts.values()), 0))
    return _stacked(model, columns, shared, [labels], limit)


def _shared(
    file: Path, spec: TensorSpec, array: np.ndarray, seen: Mapping[str, np.ndarray]
) -> np.ndarray:
    """The one value of an input with no batch axis: the input's whole shape, the same in
    every file."""
    array = np.asarray(array)
    if array.shape != spec.sample_shape:
        raise ConfigError(
            f"--data: {file.name} input {spec.name} has shape {array.shape}; the input has "
            f"no batch axis, so give its one value, of shape {spec.sample_shape}"
        )
    value = np.asarray(array, dtype=spec.np_dtype, order="C")
    earlier = seen.get(spec.name)
    if earlier is not None and not np.array_equal(earlier, value):
        raise ConfigError(
            f"--data: {file.name} input {spec.name} differs from an earlier file's; the input "
            "has no batch axis, so every batch is fed one value"
        )
    return value


def _labels(file: Path, array: np.ndarray | None, count: int) -> np.ndarray | None:
    """A file's labels: one integer per sample, or None when it has none."""
    if array is None:
        return None
    array = np.asarray(array)
    one_per_sample = array.shape == (count,) or (count == 1 and array.shape == ())
    if array.dtype.kind not in "iu" or not one_per_sample:
        raise ConfigError(
            f"--data: {file.name} {LABELS} has shape {array.shape} and dtype {array.dtype}; "
            f"give one integer class per sample ({count} here)"
        )
    return array.reshape(count).astype(np.int64)


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
        f"{sample_shape} per sample (or a stack of them, samples on axis 0); bind the "
        "model's dims to the data's (--dim, --shape) or re-tokenize"
    )


def _stacked(
    model: ModelInfo,
    columns: Mapping[str, list[np.ndarray]],
    shared: Mapping[str, np.ndarray],
    labels: list[np.ndarray | None],
    limit: int | None,
) -> SampleSet:
    inputs = {}
    for spec in model.inputs:
        if spec.name in shared:
            inputs[spec.name] = shared[spec.name]
        else:
            joined = np.concatenate(columns[spec.name])
            inputs[spec.name] = np.ascontiguousarray(joined[:limit] if limit else joined)
    known = [part for part in labels if part is not None]
    if known and len(known) != len(labels):
        raise ConfigError(
            f"--data: some files hold {LABELS} and some do not; give every file its labels or none"
        )
    joined_labels = None
    if known:
        joined_labels = np.concatenate(known)
        joined_labels = joined_labels[:limit] if limit else joined_labels
    return SampleSet(inputs, batch_axes(model), joined_labels)


def _read_sample(
    path: Path, model: ModelInfo, single: str | None = None
) -> Mapping[str, np.ndarray]:
    """The arrays of one file by input name, and its labels if it has them (no pickles:
    allow_pickle=False)."""
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
            arrays = {s.name: archive[s.name] for s in model.inputs}
            if LABELS in archive.files and LABELS not in arrays:
                arrays[LABELS] = archive[LABELS]
            return arrays
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(f"--data: cannot read {path}: {exc}") from exc

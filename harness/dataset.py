"""The query sample library: inputs held in RAM, pre-stacked so a batch is one gather per input.

Samples are synthetic (seeded, of the model's real shapes and dtypes) or read from a folder of
`.npy` files (single-input models, one sample per file) or `.npz` files (one array per input
name, one sample per file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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


def synthetic_samples(model: ModelInfo, count: int, seed: int) -> SampleSet:
    """Seeded random inputs: standard normal floats, small non-negative integers, random bools."""
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for spec in model.inputs:
        shape = (count, *spec.sample_shape)
        dtype = spec.np_dtype
        if dtype.kind == "f":
            array = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
        elif dtype.kind in "iu":
            array = rng.integers(0, 100, size=shape).astype(dtype)
        elif dtype.kind == "b":
            array = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise ConfigError(f"input {spec.name}: cannot synthesise samples of dtype {dtype}")
        inputs[spec.name] = np.ascontiguousarray(array)
    return SampleSet(inputs)


def load_sample_folder(folder: Path, model: ModelInfo, limit: int | None = None) -> SampleSet:
    """Samples from `folder`: `*.npz` (arrays named after the inputs) or `*.npy` (one input)."""
    if not folder.is_dir():
        raise ConfigError(f"data_dir: {folder} is not a folder")
    files = sorted(folder.glob("*.npz")) or sorted(folder.glob("*.npy"))
    if not files:
        raise ConfigError(f"data_dir: {folder} holds no .npy or .npz files")
    if files[0].suffix == ".npy" and len(model.inputs) != 1:
        names = ", ".join(s.name for s in model.inputs)
        raise ConfigError(
            f"data_dir: {folder} holds .npy files but the model has {len(model.inputs)} inputs "
            f"({names}); use .npz files with one array per input name"
        )
    files = files[:limit] if limit else files
    columns: dict[str, list[np.ndarray]] = {s.name: [] for s in model.inputs}
    for path in files:
        arrays = _read_sample(path, model)
        for spec in model.inputs:
            array = np.asarray(arrays[spec.name])
            if array.shape == (1, *spec.sample_shape):
                array = array[0]
            if array.shape != spec.sample_shape:
                raise ConfigError(
                    f"data_dir: {path.name} input {spec.name} has shape {array.shape}, "
                    f"the model needs {spec.sample_shape}"
                )
            columns[spec.name].append(array.astype(spec.np_dtype, copy=False))
    return SampleSet({name: np.ascontiguousarray(np.stack(c)) for name, c in columns.items()})


def _read_sample(path: Path, model: ModelInfo) -> Mapping[str, np.ndarray]:
    try:
        if path.suffix == ".npy":
            return {model.inputs[0].name: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            missing = [s.name for s in model.inputs if s.name not in archive.files]
            if missing:
                raise ConfigError(f"data_dir: {path.name} lacks input(s) {', '.join(missing)}")
            return {s.name: archive[s.name] for s in model.inputs}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data_dir: cannot read {path}: {exc}") from exc

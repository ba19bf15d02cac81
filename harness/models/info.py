"""What the harness knows about a model: its file, content hash and batched inputs/outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. Axis 0 is the shared dynamic batch dimension.

    `sample_shape` is the shape of one sample (the full shape is `(batch, *sample_shape)`);
    `dtype` is a NumPy dtype name such as ``"float32"``.
    """

    name: str
    dtype: str
    sample_shape: tuple[int, ...]

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def sample_nbytes(self) -> int:
        return int(np.prod(self.sample_shape, dtype=np.int64)) * self.np_dtype.itemsize


@dataclass(frozen=True)
class ModelInfo:
    """A usable ONNX model: path, sha256 of its bytes, inputs and outputs (batch on axis 0)."""

    name: str
    path: Path
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def sample_nbytes(self) -> int:
        """Bytes of input data one sample needs, over all inputs."""
        return sum(t.sample_nbytes for t in self.inputs)

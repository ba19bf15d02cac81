"""What the harness knows about a model: its file, content hash and batched inputs/outputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. Axis 0 is the shared dynamic batch dimension.

    `sample_shape` is the shape of one sample (the full shape is `(batch, *sample_shape)`),
    with symbolic dims bound (an output's unknown dims are -1); `dtype` is a NumPy dtype name
    such as ``"float32"``. `symbols` names each non-batch axis's symbolic dim ("" where the
    file fixes its size). An integer input that indexes tables has `index_rows`, the rows of
    the smallest, and `index_nodes`, the Gather nodes it reaches (harness.models.graph).
    """

    name: str
    dtype: str
    sample_shape: tuple[int, ...]
    symbols: tuple[str, ...] = field(default=(), compare=False)
    index_rows: int | None = None
    index_nodes: tuple[str, ...] = field(default=(), compare=False)

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
    #: The symbolic non-batch dims this model has, bound to their sizes (by --dim or --shape).
    dims: Mapping[str, int] = field(default_factory=dict)

    @property
    def sample_nbytes(self) -> int:
        """Bytes of input data one sample needs, over all inputs."""
        return sum(t.sample_nbytes for t in self.inputs)

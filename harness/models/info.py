"""What the harness knows about a model: its file, content hash and batched inputs/outputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def to_batch_axis(stacked: np.ndarray, axis: int | None) -> np.ndarray:
    """Samples stacked on axis 0 moved to `axis` (contiguous, as runtimes want them); the
    array as it is for axis 0, or for an unbatched input's one value (`axis` None)."""
    if not axis or stacked.ndim == 0:
        return stacked
    return np.ascontiguousarray(np.moveaxis(stacked, 0, axis))


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output, batched on `batch_axis` (None: not batched at all).

    `sample_shape` is the shape of one sample, the tensor's shape without its batch axis
    (`batch_shape(n)` puts the batch back), with symbolic dims bound (an output's unknown dims
    are -1); an unbatched tensor (a rank-0 sample rate, a table shared by every sample) has its
    whole shape there and is fed as one value per batch. `dtype` is a NumPy dtype name such as
    ``"float32"``. `symbols` names each sample axis's symbolic dim ("" where the file fixes
    its size or leaves it anonymous). An integer input whose values select something has
    `domain`, the smallest and largest value that stays valid, `domain_source`, what set it
    (the table it indexes, a one-hot's depth), and `index_nodes`, the nodes that read it
    (harness.models.graph).
    """

    name: str
    dtype: str
    sample_shape: tuple[int, ...]
    symbols: tuple[str, ...] = field(default=(), compare=False)
    domain: tuple[int, int] | None = None
    domain_source: str = field(default="", compare=False)
    index_nodes: tuple[str, ...] = field(default=(), compare=False)
    batch_axis: int | None = 0
    #: An output carries this input on (a recurrent state: `state` -> `stateN`, `h` -> `hn`):
    #: synthetic samples start it at zeros, a valid starting state.
    state: bool = field(default=False, compare=False)

    @property
    def batched(self) -> bool:
        return self.batch_axis is not None

    def batch_shape(self, n: int) -> tuple[int, ...]:
        """The tensor's shape for a batch of `n` samples (its sample shape if unbatched)."""
        if self.batch_axis is None:
            return self.sample_shape
        shape = list(self.sample_shape)
        shape.insert(self.batch_axis, n)
        return tuple(shape)

    def feed(self, stacked: np.ndarray) -> np.ndarray:
        """Samples stacked on axis 0 (the harness's layout) as the model takes them: the
        stack moved to the batch axis; an unbatched input's one value as it is."""
        return to_batch_axis(stacked, self.batch_axis)

    def axis_of(self, shape: tuple[int, ...], n: int) -> int | None:
        """Where a batch of `n` stands in an array of this tensor's: its batch axis, or the
        one axis of size `n` where the file did not say (dims all anonymous); None if neither."""
        axis = self.batch_axis
        if axis is not None and axis < len(shape) and shape[axis] == n:
            return axis
        sized = [i for i, d in enumerate(shape) if d == n]
        return sized[0] if len(sized) == 1 else None

    def stack(self, output: np.ndarray, n: int) -> np.ndarray:
        """A batch of `n` samples' output with its samples on axis 0: moved from the batch
        axis, or from the one axis of size `n` where the file did not say (an output whose
        dims are all anonymous); an output with no such axis as one entry."""
        axis = self.axis_of(output.shape, n)
        if axis is None:
            return output[None]
        return output if axis == 0 else np.moveaxis(output, axis, 0)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def sample_nbytes(self) -> int:
        """Bytes of one sample; an unbatched input's one value counts as none."""
        if self.batch_axis is None:
            return 0
        return self.value_nbytes

    @property
    def value_nbytes(self) -> int:
        """Bytes of one sample, or of an unbatched input's one value; Python ints, so a bound
        size far past memory does not overflow."""
        count = 1
        for d in self.sample_shape:
            count *= max(int(d), 0)
        return count * self.np_dtype.itemsize


@dataclass(frozen=True)
class ModelInfo:
    """A usable ONNX model: path, sha256 of its bytes, inputs and outputs (each with its batch
    axis), and `batch`, the name of its batch dim ("" where the file leaves it anonymous)."""

    name: str
    path: Path
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: The symbolic non-batch dims this model has, bound to their sizes (by --dim or --shape).
    dims: Mapping[str, int] = field(default_factory=dict)
    batch: str = ""

    @property
    def sample_nbytes(self) -> int:
        """Bytes of input data one sample needs, over all inputs."""
        return sum(t.sample_nbytes for t in self.inputs)

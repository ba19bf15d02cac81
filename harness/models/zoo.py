"""Built-in models, written with `onnx.helper` so tests and demos need no downloads or torch.

Weights are random but deterministic (fixed seeds). They are shaped so that fp16 and int8
variants can be checked for top-1 agreement with fp32 on random-normal inputs:

* Filters mimic a folded BatchNorm: every tap sums to zero over its input channels (a depthwise
  filter has zero outer row and column sums instead) and every output channel has the same norm,
  so all channels share one mean and one variance and zero padding shifts nothing. A plain random
  net instead maps every input to nearly the same features: logits that ignore the input.
* Each ReLU input has mean `shift` (in units of its std). Centred ReLUs make a deep random net
  chaotic (rounding errors grow 1.47x in variance per layer); shifted ones are mostly linear.
* Weights are exact multiples of max|row| / 127, so per-channel int8 weights are lossless and
  only the activations carry quantization error.
* The classifier's rows sum to zero, cancelling the feature mean shared by all inputs, and are
  scaled for logits with a std of about `_LOGIT_STD` over classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VERSION = 1
"""Bump when any builder's graph or weights change; it is part of the cached file name."""

_OPSET = 17
_IR_VERSION = 8
_SEED = 20261128
_QMAX = 127
_RESNET_SHIFT = 1.0
_MOBILENET_SHIFT = 1.5
"""ReLU shifts that gave the best int8 agreement (ResNet's residuals already damp the chaos)."""
_BRANCH_GAIN = 0.2
"""Scale of the last conv of each residual branch, so the residual adds do not blow up."""
_DW_CORNER_STD = 30.0
"""Spread of a depthwise filter's corner taps in int8 steps; its centre tap is 127."""
_LOGIT_STD = 4.0
_POOLED_STD = 1.0 / 7.0
"""Rough std over inputs of a pooled feature: the mean of 7x7 roughly independent positions."""


def _relu_moments(shift: float) -> tuple[float, float]:
    """Mean and variance of relu(z) for z ~ N(shift, 1)."""
    pdf = math.exp(-0.5 * shift * shift) / math.sqrt(2.0 * math.pi)
    cdf = 0.5 * (1.0 + math.erf(shift / math.sqrt(2.0)))
    mean = shift * cdf + pdf
    return mean, (shift * shift + 1.0) * cdf + shift * pdf - mean * mean


def _int8_exact(scaled: np.ndarray, zero_sum_axis: int | None) -> np.ndarray:
    """Round rows (axis 0) scaled to a max |value| of 127 to integers, keeping zero sums zero.

    Each row's largest entry stays exactly +-127. Where `zero_sum_axis` is given, the sums over
    it are restored to zero by moving the entries that rounding moved furthest by one step.
    """
    k = np.round(scaled)
    if zero_sum_axis is None:
        return k
    frac = np.moveaxis(scaled - k, zero_sum_axis, -1)
    k = np.moveaxis(k, zero_sum_axis, -1)
    shape = k.shape
    frac, k = frac.reshape(-1, shape[-1]), k.reshape(-1, shape[-1])
    excess = k.sum(axis=1)
    most = int(np.abs(excess).max())
    if most:
        # Per group, the |excess| entries rounded furthest in the excess's direction, in order.
        key = np.where(np.abs(k) >= _QMAX, np.inf, frac * np.sign(excess)[:, None])
        pick = np.argpartition(key, most - 1, axis=1)[:, :most]
        order = np.argsort(np.take_along_axis(key, pick, axis=1), axis=1, kind="stable")
        pick = np.take_along_axis(pick, order, axis=1)
        rows, cols = np.nonzero(np.arange(most)[None, :] < np.abs(excess)[:, None])
        k[rows, pick[rows, cols]] -= np.sign(excess)[rows]
    return np.moveaxis(k.reshape(shape), -1, zero_sum_axis)


def _rows_to_norm(k: np.ndarray, norm: float) -> np.ndarray:
    """Scale each row (axis 0) to the given L2 norm."""
    row_norms = np.sqrt((k.reshape(k.shape[0], -1) ** 2).sum(axis=1))
    return k * (norm / row_norms).reshape((-1,) + (1,) * (k.ndim - 1))


def _dense_filters(
    rng: np.random.Generator, shape: tuple[int, ...], norm: float, zero_sum: bool
) -> np.ndarray:
    """Random int8-exact rows of the given norm; with `zero_sum`, each tap sums to 0 on axis 1."""
    w = rng.standard_normal(shape)
    if zero_sum:
        w -= w.mean(axis=1, keepdims=True)
    row_max = np.abs(w.reshape(shape[0], -1)).max(axis=1)
    w *= (_QMAX / row_max).reshape((-1,) + (1,) * (w.ndim - 1))
    return _rows_to_norm(_int8_exact(w, 1 if zero_sum else None), norm)


def _depthwise_filters(rng: np.random.Generator, channels: int, norm: float) -> np.ndarray:
    """3x3 filters: centre 127, random corners, edges that zero the outer rows and columns.

    The zero sums mean zero padding shifts no border position (only the corners, slightly);
    the centre tap passes the low frequencies, which the global average pool keeps.
    """
    corners = np.clip(np.round(rng.standard_normal((channels, 4)) * _DW_CORNER_STD), -63, 63)
    a, b, c, d = corners.T
    centre = np.full(channels, float(_QMAX))
    k = np.stack([a, -(a + b), b, -(a + c), centre, -(b + d), c, -(c + d), d], axis=1)
    return _rows_to_norm(k.reshape(channels, 1, 3, 3), norm)


class _Graph:
    """Nodes and initializers of one model being built; local to one build call."""

    def __init__(self, seed: int, shift: float) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shift = shift
        self.relu_mean, relu_var = _relu_moments(shift)
        self.gain = 1.0 / math.sqrt(relu_var)
        self._count = 0

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{kind}_{self._count}"

    def weight(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: object) -> str:
        name = self._name(op_type.lower())
        node = helper.make_node(op_type, list(inputs), [name], name=name)
        node.attribute.extend(helper.make_attribute(k, v) for k, v in sorted(attrs.items()))
        self.nodes.append(node)
        return name

    def conv(
        self,
        x: str,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int = 1,
        group: int = 1,
        *,
        from_input: bool = False,
        branch_end: bool = False,
    ) -> str:
        """Conv with a folded BatchNorm, for a ReLU output (or the zero-mean model input).

        Its output has std 1 and mean `shift`, ready for a ReLU; a residual branch's last conv
        (`branch_end`) has mean 0 and std `_BRANCH_GAIN` instead.
        """
        gain = (1.0 if from_input else self.gain) * (_BRANCH_GAIN if branch_end else 1.0)
        if group == c_in == c_out:
            w = _depthwise_filters(self.rng, c_out, gain)
        else:
            w = _dense_filters(self.rng, (c_out, c_in // group, kernel, kernel), gain, True)
        input_mean = 0.0 if from_input else self.relu_mean
        b = (0.0 if branch_end else self.shift) - input_mean * w.reshape(c_out, -1).sum(axis=1)
        name = self._name("conv")
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.weight(f"{name}.weight", w), self.weight(f"{name}.bias", b)],
                [name],
                name=name,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[kernel // 2] * 4,
                group=group,
            )
        )
        return name

    def gemm(self, x: str, w: np.ndarray, name: str, output: str | None = None) -> str:
        """Fully connected layer (weights [out, in]) with a zero bias."""
        bias = self.weight(f"{name}.bias", np.zeros(w.shape[0]))
        inputs = [x, self.weight(f"{name}.weight", w), bias]
        out = output or name
        self.nodes.append(helper.make_node("Gemm", inputs, [out], name=name, transB=1))
        return out

    def classifier(self, x: str, c_in: int, classes: int) -> None:
        """GlobalAveragePool, Flatten and a Gemm with zero-sum rows, writing `logits`."""
        flat = self.op("Flatten", self.op("GlobalAveragePool", x), axis=1)
        w = _dense_filters(self.rng, (classes, c_in), _LOGIT_STD / _POOLED_STD, zero_sum=True)
        self.gemm(flat, w, "fc", output="logits")

    def save(self, path: Path, name: str, sample_shape: list[int], classes: int) -> None:
        """Check the model and write it to `path`."""
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *sample_shape])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
            initializer=self.inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", _OPSET)],
            ir_version=_IR_VERSION,
            producer_name="harness.models.zoo",
            producer_version=str(VERSION),
        )
        onnx.checker.check_model(model)
        onnx.save_model(model, str(path), format="protobuf")


def _bottleneck(g: _Graph, x: str, c_in: int, width: int, stride: int) -> str:
    """ResNet v1.5 bottleneck: 1x1, 3x3 (carrying the stride), 1x1 to 4x width, plus shortcut."""
    c_out = 4 * width
    y = g.op("Relu", g.conv(x, c_in, width, 1))
    y = g.op("Relu", g.conv(y, width, width, 3, stride=stride))
    y = g.conv(y, width, c_out, 1, branch_end=True)
    shortcut = x if stride == 1 and c_in == c_out else g.conv(x, c_in, c_out, 1, stride=stride)
    return g.op("Relu", g.op("Add", shortcut, y))


def build_resnet50(path: Path) -> None:
    """ResNet-50 v1.5 with BatchNorm folded: [batch,3,224,224] -> logits [batch,1000]."""
    g = _Graph(_SEED, _RESNET_SHIFT)
    x = g.op("Relu", g.conv("input", 3, 64, 7, stride=2, from_input=True))
    x = g.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c_in = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            x = _bottleneck(g, x, c_in, width, stride if i == 0 else 1)
            c_in = 4 * width
    g.classifier(x, c_in, 1000)
    g.save(path, "resnet50", [3, 224, 224], 1000)


def build_mobilenet(path: Path) -> None:
    """MobileNet-v1 1.0/224 (depthwise as grouped Conv): [batch,3,224,224] -> [batch,1000]."""
    g = _Graph(_SEED + 1, _MOBILENET_SHIFT)
    x = g.op("Relu", g.conv("input", 3, 32, 3, stride=2, from_input=True))
    c_in = 32
    layers = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
    layers += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for c_out, stride in layers:
        x = g.op("Relu", g.conv(x, c_in, c_in, 3, stride=stride, group=c_in))
        x = g.op("Relu", g.conv(x, c_in, c_out, 1))
        c_in = c_out
    g.classifier(x, c_in, 1000)
    g.save(path, "mobilenet", [3, 224, 224], 1000)


def build_tiny(path: Path) -> None:
    """A very cheap MLP for tests and harness-capacity runs: [batch,16] -> [batch,10]."""
    g = _Graph(_SEED + 2, 0.0)
    h = g.gemm("input", _dense_filters(g.rng, (32, 16), math.sqrt(2.0), zero_sum=False), "fc1")
    w2 = _dense_filters(g.rng, (10, 32), _LOGIT_STD, zero_sum=True)
    g.gemm(g.op("Relu", h), w2, "fc2", output="logits")
    g.save(path, "tiny", [16], 10)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "resnet50": build_resnet50,
    "mobilenet": build_mobilenet,
    "tiny": build_tiny,
}
"""Built-in model name -> function writing that model to a path."""

BUILTIN_MODELS: tuple[str, ...] = tuple(BUILDERS)

"""Precision variants: one ONNX file per precision (fp32, fp16, int8 Q/DQ), cached by content.

Every backend builds from the same variant file (TensorRT 11 is strongly typed and ONNX Runtime's
CPU int8 needs Q/DQ), so precision is a property of the model file, not of a backend flag.
int8 is static Q/DQ calibrated on the sample set: dynamic quantization is 5-10x slower than fp32
for conv nets on CPU and is never offered. `agreement` scores a variant's outputs against fp32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from harness.config import PRECISIONS
from harness.errors import ConfigError, ModelError
from harness.models.info import ModelInfo

RECIPE_VERSION = 1
"""Bump when a recipe below changes, so cached variants built by the old one are not reused."""
CALIBRATION_SAMPLES = 32
CALIBRATION_BATCH = 8
_NOTE_KEY = "batch_tuner.note"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """A model file at one precision. `cached` is True when this call built nothing.

    `build_seconds` is the time this call spent building (0 on a cache hit and for fp32);
    `note` says how the recipe deviated, e.g. int8 quantized without pre-processing.
    """

    precision: str
    path: Path
    sha256: str
    source_sha256: str
    build_seconds: float
    cached: bool
    note: str = ""


@dataclass(frozen=True)
class Agreement:
    """How closely a variant's outputs match the reference (fp32) outputs.

    `top1` is the fraction of matching argmaxes of the first output, NaN when that output is
    not a class score (fewer than 2 axes or a single class).
    """

    samples: int
    top1: float
    max_abs_error: float

    def to_dict(self) -> dict[str, float]:
        """Plain dict for results and trial attributes (a NaN `top1` stays NaN)."""
        return dict(asdict(self))


def make_variant(
    model: ModelInfo,
    precision: str,
    calibration: Mapping[str, np.ndarray],
    cache_dir: Path,
) -> Variant:
    """Return `model` at `precision`, building it into `cache_dir / "variants"` unless cached.

    fp32 is the model file itself, and so is bf16: no ONNX variant is built for it, the
    backends that run it (torch) cast the fp32 model themselves. fp16 keeps float32 inputs and
    outputs so the harness feeds the same data. int8 is calibrated on the first
    `CALIBRATION_SAMPLES` of `calibration` (arrays per input name, axis 0 = samples);
    `calibration` is ignored for other precisions.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision in ("fp32", "bf16"):
        return Variant(precision, model.path, model.sha256, model.sha256, 0.0, cached=True)

    feeds = _calibration_feeds(model, calibration) if precision == "int8" else {}
    key_parts = [model.sha256, precision, RECIPE_VERSION]
    if precision == "int8":
        key_parts.append(_arrays_sha256(feeds))
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()
    folder = Path(cache_dir) / "variants"
    path = folder / f"{precision}-{key[:32]}.onnx"

    if path.exists():
        sha, note = _read_variant(path)
        return Variant(precision, path, sha, model.sha256, 0.0, cached=True, note=note)

    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
        built = Path(tmp) / "variant.onnx"
        try:
            if precision == "fp16":
                note = _build_fp16(model.path, built)
            else:
                note = _build_int8(model.path, built, feeds, Path(tmp))
        except Exception as exc:  # the onnx/onnxruntime tools raise anything
            raise ModelError(
                f"cannot build the {precision} variant of model {model.name!r}: {_one_line(exc)}"
            ) from exc
        os.replace(built, path)  # atomic: a concurrent builder of the same key writes the same
    seconds = time.perf_counter() - start
    if note:
        log.warning("%s variant of %s: %s", precision, model.name, note)
    sha, _ = _read_variant(path)
    return Variant(precision, path, sha, model.sha256, seconds, cached=False, note=note)


def agreement(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> Agreement:
    """Compare two runs' outputs (one array per model output, all samples concatenated)."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError(
            f"expected the same non-zero number of outputs, got "
            f"{len(reference)} and {len(candidate)}"
        )
    for i, (ref, cand) in enumerate(zip(reference, candidate, strict=True)):
        if np.shape(ref) != np.shape(cand):
            raise ValueError(f"output {i} shapes differ: {np.shape(ref)} vs {np.shape(cand)}")
    first = np.asarray(reference[0])
    samples = int(first.shape[0]) if first.ndim else 1
    top1 = math.nan
    if first.ndim >= 2 and first.shape[-1] > 1 and first.size:
        same = np.argmax(first, axis=-1) == np.argmax(np.asarray(candidate[0]), axis=-1)
        top1 = float(np.mean(same))
    max_abs = 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        if np.size(ref):
            diff = np.abs(np.asarray(ref, np.float64) - np.asarray(cand, np.float64))
            max_abs = max(max_abs, float(np.max(diff)))
    return Agreement(samples=samples, top1=top1, max_abs_error=max_abs)


def _build_fp16(source: Path, out: Path) -> str:
    """Float weights and compute in float16; graph inputs and outputs stay float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    OnnxModel.graph_topological_sort(converted.graph, is_deterministic=True)  # casts come last
    onnx.save(converted, str(out))
    return ""


def _build_int8(source: Path, out: Path, feeds: dict[str, np.ndarray], tmp: Path) -> str:
    """Static Q/DQ int8 (per-channel int8 weights, uint8 activations) after pre-processing."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[dict[str, np.ndarray]] = iter(())
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

        def rewind(self) -> None:
            self.batches = iter(_batches(feeds))

    note = ""
    prepared = tmp / "prepared.onnx"
    try:
        quant_pre_process(str(source), str(prepared))
    except Exception as exc:  # symbolic shape inference fails on some models
        note = f"quant_pre_process failed ({_one_line(exc)}); quantized without it"
        prepared = source
    quantize_static(
        str(prepared),
        str(tmp / "quantized.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    quantized = onnx.load(str(tmp / "quantized.onnx"))
    if note:
        quantized.metadata_props.add(key=_NOTE_KEY, value=note)
    onnx.save(quantized, str(out))
    return note


def _calibration_feeds(
    model: ModelInfo, calibration: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The first `CALIBRATION_SAMPLES` of every model input, in the input's dtype."""
    feeds: dict[str, np.ndarray] = {}
    for spec in model.inputs:
        if spec.name not in calibration:
            raise ModelError(
                f"int8 variant of model {model.name!r} needs calibration data "
                f"for input {spec.name!r}"
            )
        data = np.asarray(calibration[spec.name])[:CALIBRATION_SAMPLES]
        if data.ndim == 0 or data.shape[0] == 0:
            raise ModelError(
                f"int8 variant of model {model.name!r}: no calibration samples "
                f"for input {spec.name!r}"
            )
        feeds[spec.name] = np.ascontiguousarray(data, dtype=spec.np_dtype)
    return feeds


def _batches(feeds: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    count = min(a.shape[0] for a in feeds.values())
    for lo in range(0, count, CALIBRATION_BATCH):
        yield {name: a[lo : lo + CALIBRATION_BATCH] for name, a in feeds.items()}


def _arrays_sha256(feeds: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(feeds):
        a = feeds[name]
        digest.update(json.dumps([name, a.dtype.str, a.shape]).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _read_variant(path: Path) -> tuple[str, str]:
    """The variant file's sha256 and the build note stored in its metadata."""
    data = path.read_bytes()
    props = onnx.load_model_from_string(data).metadata_props
    note = next((p.value for p in props if p.key == _NOTE_KEY), "")
    return hashlib.sha256(data).hexdigest(), note


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."

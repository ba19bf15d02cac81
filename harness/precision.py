"""Precision variants: one ONNX file per precision (fp32, fp16, int8 Q/DQ), cached by content.

Every backend builds from the same variant file (TensorRT 11 is strongly typed and ONNX Runtime's
CPU int8 needs Q/DQ), so precision is a property of the model file, not of a backend flag.
int8 is static Q/DQ calibrated on the sample set: dynamic quantization is 5-10x slower than fp32
for conv nets on CPU and is never offered. `agreement` scores a variant's outputs against fp32.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from harness.config import ACCURACY_METRICS, PRECISIONS
from harness.errors import ConfigError, ModelError, VariantUnavailable
from harness.models.info import ModelInfo
from harness.models.inspect import model_sha256
from harness.pids import pid_exists

RECIPE_VERSION = 2
"""Bump when a recipe below changes, so cached variants built by the old one are not reused."""
CALIBRATION_SAMPLES = 32
CALIBRATION_BATCH = 8
_NOTE_KEY = "batch_tuner.note"
#: A source model this large is written with its weights beside it (protobuf's 2 GB limit).
_EXTERNAL_BYTES = 1 << 30

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

    `value` is the `metric` on output `output`, higher is better, at most 1 (what the study's
    accuracy floor reads): `top1`, the fraction of matching argmaxes of class scores [N, C];
    `cosine`, the mean per-sample cosine similarity of the flattened outputs; `relative`,
    1 - the mean per-sample relative L2 error (floored at 0). `top1` is also kept on its own,
    NaN when the output is not class scores (fewer than 2 axes or a single class).
    `max_abs_error` is over every output. Where the data has labels, `accuracy` and
    `reference_accuracy` are the variant's and fp32's top-1 accuracy on them, and the
    `accuracy` metric is their ratio (MLPerf keeps a precision that holds 99% of fp32's).
    """

    samples: int
    top1: float
    max_abs_error: float
    metric: str = "top1"
    value: float = math.nan
    output: str = ""
    accuracy: float = math.nan
    reference_accuracy: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for results and trial attributes (a NaN stays NaN)."""
        return dict(asdict(self))


def source_precision(precision: str, casts_precision: bool = False) -> str:
    """The precision of the ONNX file a run at `precision` loads: the model itself ("fp32")
    for fp32 and bf16, and for every precision of a backend that casts the fp32 model itself
    (`Backend.casts_precision`); the precision's own variant otherwise. Configurations that
    load the same file on the same runtime fail alike where the runtime cannot read it."""
    return "fp32" if casts_precision or precision in ("fp32", "bf16") else precision


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
    refused = path.with_suffix(f".ort{_ort_version()}.refused")

    if path.exists() and (checked := _checked(path, precision, model.name)) is not None:
        sha, note = checked
        return Variant(precision, path, sha, model.sha256, 0.0, cached=True, note=note)
    if refused.exists():  # the converter failed on this model before: say why, build nothing
        raise VariantUnavailable(refused.read_text().strip())

    folder.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(folder)
    external = _external(model.path)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder, prefix=_build_prefix()) as tmp:
        built = Path(tmp) / path.name
        try:
            if precision == "fp16":
                note = _build_fp16(model.path, built, external)
            else:
                note = _build_int8(
                    model.path, built, list(_batches(model, feeds)), Path(tmp), external
                )
        except Exception as exc:  # the onnx/onnxruntime tools raise anything
            reason = (
                f"{precision} is infeasible for model {model.name!r}: the converter failed: "
                f"{_one_line(exc)}"
            )
            if not isinstance(exc, MemoryError):  # a lack of memory may pass; this won't
                _write_atomic_text(refused, reason)
            raise VariantUnavailable(reason) from exc
        # The hash first, the weights beside the variant next, the .onnx last (each atomic):
        # a variant in place has a recorded hash, and one cut short by a kill fails its check.
        sha, _ = model_sha256(built)
        _write_atomic_text(_hash_path(path), sha)
        data = built.with_name(built.name + ".data")
        if data.exists():
            os.replace(data, path.with_name(path.name + ".data"))
        os.replace(built, path)  # atomic: a concurrent builder of the same key writes the same
    seconds = time.perf_counter() - start
    if note:
        log.warning("%s variant of %s: %s", precision, model.name, note)
    return Variant(precision, path, sha, model.sha256, seconds, cached=False, note=note)


def output_index(names: Sequence[str], wanted: str | None) -> int:
    """The index of output `wanted` among `names` (None: the first); ConfigError naming the
    outputs when it is not one of them."""
    if wanted is None:
        return 0
    if wanted not in names:
        raise ConfigError(
            f"--accuracy-output {wanted}: the model has no output {wanted!r} "
            f"(outputs: {', '.join(names)})"
        )
    return list(names).index(wanted)


def pick_metric(metric: str, output: np.ndarray, labelled: bool = False) -> str:
    """`metric`, or for `auto` the one that fits the output: accuracy where the samples have
    labels, top1 for class scores [N, C], relative for one value per sample (a regression
    score), cosine otherwise (hidden states, embeddings)."""
    if metric == "accuracy" and not labelled:
        raise ConfigError(
            "accuracy_metric accuracy needs labels: a `labels` array in the --data files, "
            "one class per sample"
        )
    if metric != "auto":
        return metric
    if labelled:
        return "accuracy"
    per_sample = int(np.prod(output.shape[1:])) if output.ndim > 1 else 1
    if output.ndim == 2 and output.shape[1] > 1:
        return "top1"
    return "relative" if per_sample == 1 else "cosine"


def agreement(
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    metric: str = "auto",
    output: int = 0,
    output_name: str = "",
    labels: np.ndarray | None = None,
) -> Agreement:
    """Compare two runs' outputs (one array per model output, samples on axis 0) by `metric`
    (ACCURACY_METRICS) on output number `output`; with `labels` (each sample's class), also
    both runs' top-1 accuracy on them."""
    if metric not in ACCURACY_METRICS:
        raise ConfigError(f"accuracy_metric: unknown value {metric!r}")
    if len(reference) != len(candidate) or not reference:
        raise ValueError(
            f"expected the same non-zero number of outputs, got "
            f"{len(reference)} and {len(candidate)}"
        )
    for i, (ref, cand) in enumerate(zip(reference, candidate, strict=True)):
        if np.shape(ref) != np.shape(cand):
            raise ValueError(f"output {i} shapes differ: {np.shape(ref)} vs {np.shape(cand)}")
    first = np.asarray(reference[output])
    other = np.asarray(candidate[output])
    samples = int(first.shape[0]) if first.ndim else 1
    top1 = math.nan
    if first.ndim >= 2 and first.shape[-1] > 1 and first.size:
        same = np.argmax(first, axis=-1) == np.argmax(other, axis=-1)
        top1 = float(np.mean(same))
    max_abs = 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        if np.size(ref):
            diff = np.abs(np.asarray(ref, np.float64) - np.asarray(cand, np.float64))
            max_abs = max(max_abs, float(np.max(diff)))
    accuracy = reference_accuracy = math.nan
    if labels is not None:
        if len(labels) != samples:
            raise ValueError(f"{len(labels)} labels for {samples} samples")
        reference_accuracy = _accuracy(first, labels)
        accuracy = _accuracy(other, labels)
    chosen = pick_metric(metric, first, labels is not None)
    if chosen == "top1":
        value = top1
    elif chosen == "accuracy":
        value = accuracy / reference_accuracy if reference_accuracy > 0 else math.nan
    else:
        a = first.reshape(samples, -1).astype(np.float64)
        b = other.reshape(samples, -1).astype(np.float64)
        value = _cosine(a, b) if chosen == "cosine" else _relative(a, b)
    return Agreement(
        samples, top1, max_abs, chosen, value, output_name, accuracy, reference_accuracy
    )


def _accuracy(output: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of samples whose highest score is their label's class."""
    if not len(labels):
        return math.nan
    predicted = np.argmax(output.reshape(len(labels), -1), axis=1)
    return float(np.mean(predicted == labels))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-sample cosine similarity; two all-zero samples agree fully."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    both_zero = norms == 0
    cos = np.where(both_zero, 1.0, dots / np.where(both_zero, 1.0, norms))
    return float(np.mean(cos)) if cos.size else math.nan


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    """1 - the mean per-sample relative L2 error |b - a| / |a| (|a| floored to avoid /0)."""
    scale = np.maximum(np.linalg.norm(a, axis=1), 1e-12)
    errors = np.linalg.norm(b - a, axis=1) / scale
    return float(max(0.0, 1.0 - np.mean(errors))) if errors.size else math.nan


def _build_fp16(source: Path, out: Path, external: bool) -> str:
    """Float weights and compute in float16; graph inputs and outputs stay float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    OnnxModel.graph_topological_sort(converted.graph, is_deterministic=True)  # casts come last
    _save(converted, out, external)
    return ""


def _save(model: onnx.ModelProto, out: Path, external: bool) -> None:
    """Write `model` to `out`; with `external`, its weights to `<out name>.data` beside it
    (as exporters do past protobuf's 2 GB), so the variant is two files."""
    if external:
        onnx.save_model(
            model,
            str(out),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=out.name + ".data",
            size_threshold=128,  # weights beside it, small constants (scales) inline
        )
    else:
        onnx.save(model, str(out))


def _external(path: Path) -> bool:
    """Whether a variant of the model at `path` keeps its weights beside it: the source does,
    or is large enough that a variant could pass protobuf's 2 GB."""
    _, has_external = model_sha256(path)
    return has_external or path.stat().st_size > _EXTERNAL_BYTES


def _build_int8(
    source: Path,
    out: Path,
    batches: Sequence[dict[str, np.ndarray]],
    tmp: Path,
    external: bool,
) -> str:
    """Static Q/DQ int8 (per-channel int8 weights, uint8 activations) after pre-processing,
    calibrated on `batches` (each as the model takes it)."""
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
            self.batches = iter(batches)

    note = ""
    source, tmp = source.resolve(), tmp.resolve()
    prepared = tmp / "prepared.onnx"
    try:
        # Where symbolic shape inference stops short, ONNX Runtime saves what it inferred to
        # the working folder (sym_shape_infer_temp.onnx and its weights): keep that in tmp.
        with contextlib.chdir(tmp):
            quant_pre_process(
                str(source),
                str(prepared),
                save_as_external_data=external,
                all_tensors_to_one_file=True,
                external_data_location="prepared.onnx.data",
            )
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
        use_external_data_format=external,
    )
    quantized = onnx.load(str(tmp / "quantized.onnx"))  # external data read in, written anew
    if note:
        quantized.metadata_props.add(key=_NOTE_KEY, value=note)
    _save(quantized, out, external)
    return note


def _calibration_feeds(
    model: ModelInfo, calibration: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The first `CALIBRATION_SAMPLES` of every batched model input (samples on axis 0), an
    unbatched input's one value, in the input's dtype."""
    feeds: dict[str, np.ndarray] = {}
    for spec in model.inputs:
        if spec.name not in calibration:
            raise ModelError(
                f"int8 variant of model {model.name!r} needs calibration data "
                f"for input {spec.name!r}"
            )
        if spec.batch_axis is None:
            feeds[spec.name] = np.asarray(calibration[spec.name], dtype=spec.np_dtype, order="C")
            continue
        data = np.asarray(calibration[spec.name])[:CALIBRATION_SAMPLES]
        if data.ndim == 0 or data.shape[0] == 0:
            raise ModelError(
                f"int8 variant of model {model.name!r}: no calibration samples "
                f"for input {spec.name!r}"
            )
        feeds[spec.name] = np.ascontiguousarray(data, dtype=spec.np_dtype)
    return feeds


def _batches(model: ModelInfo, feeds: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """The calibration samples in batches, each input as the model takes it (its samples on
    its batch axis, an unbatched input's value in every batch)."""
    specs = [s for s in model.inputs if s.name in feeds]
    count = min((feeds[s.name].shape[0] for s in specs if s.batch_axis is not None), default=1)
    for lo in range(0, count, CALIBRATION_BATCH):
        yield {
            s.name: s.feed(
                feeds[s.name][lo : lo + CALIBRATION_BATCH] if s.batched else feeds[s.name]
            )
            for s in specs
        }


def _arrays_sha256(feeds: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(feeds):
        a = feeds[name]
        digest.update(json.dumps([name, a.dtype.str, a.shape]).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _checked(path: Path, precision: str, model: str) -> tuple[str, str] | None:
    """The cached variant's sha256 and note when its files hash to the sha256 recorded at its
    build; otherwise None, after one warning, with its files removed so it is built anew."""
    try:
        recorded = _hash_path(path).read_text().strip()
        sha, note = _read_variant(path)
    except FileNotFoundError as exc:
        reason = (
            "no hash was recorded for it"
            if exc.filename == str(_hash_path(path))
            else f"{exc.filename} is missing"
        )
    except (ModelError, OSError) as exc:
        reason = _one_line(exc)
    else:
        if sha == recorded:
            return sha, note
        reason = f"its sha256 {sha[:12]}... is not the {recorded[:12]}... recorded at its build"
    log.warning(
        "%s variant of %s: cached %s is damaged (%s); rebuilding it",
        precision,
        model,
        path,
        reason,
    )
    for stale in (path, path.with_name(path.name + ".data"), _hash_path(path)):
        stale.unlink(missing_ok=True)
    return None


def _hash_path(path: Path) -> Path:
    """Where a variant's sha256 (with its external data) is recorded when it is built."""
    return path.with_name(path.name + ".sha256")


def _build_prefix() -> str:
    """Build folders are named by host and pid, so one whose builder died can be removed."""
    return f".build-{socket.gethostname()}-{os.getpid()}-"


def _remove_dead_builds(folder: Path) -> None:
    """Remove the build folders this host's killed builders left behind (never used: a
    variant is used only once moved into place, but they may be large)."""
    host = f".build-{socket.gethostname()}-"
    for leftover in folder.glob(f"{glob.escape(host)}*"):
        pid = leftover.name[len(host) :].partition("-")[0]
        if pid.isdigit() and not pid_exists(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _read_variant(path: Path) -> tuple[str, str]:
    """The variant's sha256 (with its external data) and the build note in its metadata."""
    sha, _ = model_sha256(path)
    props = onnx.load(str(path), load_external_data=False).metadata_props
    note = next((p.value for p in props if p.key == _NOTE_KEY), "")
    return sha, note


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."

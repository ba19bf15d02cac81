"""Prepare trained ONNX models and real inputs for batch-tuner's benchmark on trained models.

The tool's other benchmark models are exported by torch.onnx with random weights. These are
trained models shipped inside public Python packages (rapidocr-onnxruntime, magika, silero-vad)
and written by other exporters (paddle2onnx, tf2onnx after jax2tf, spox; one torch export of
silero beside its spox one), so their graphs carry what such files carry in practice: a batch
written as -1 or as an exporter's own dim name, '?' dims, integer and rank-0 inputs, a state
batched on axis 1. Next to each model goes an .npz of real inputs (rendered text, files found
on this machine, synthetic audio), one array per model input with the samples on axis 0, plus
`labels` where a true answer exists, so accuracy can be measured next to speed.

    python prepare.py --out OUT_DIR     (prepare.sh makes OUT_DIR/.venv and runs this in it)

reads the wheels in OUT_DIR/wheels and the installed magika package, and writes
OUT_DIR/models/<name>.onnx, OUT_DIR/data/<name>.npz (and data/magika.files.txt) and
OUT_DIR/manifest.json. All randomness is seeded: only the magika data depends on the machine
(the files found under /usr and OUT_DIR/.venv).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import random
import re
import shutil
import stat
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import magika
import numpy as np
import onnx
import onnxruntime as ort
from magika import Magika
from magika.types.seekable import Seekable
from PIL import Image, ImageDraw, ImageFont

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelSource:
    """Where one model file comes from."""

    name: str
    """Stem of models/<name>.onnx and data/<name>.npz."""
    package: str
    origin: Literal["wheel", "installed"]
    member: str
    """Path of the .onnx inside the wheel or the installed package."""
    exporter: str
    """What wrote the file (paddle2onnx leaves the producer field empty in det/rec)."""


SOURCES = (
    ModelSource(
        "rapidocr_cls",
        "rapidocr-onnxruntime",
        "wheel",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "paddle2onnx",
    ),
    ModelSource(
        "rapidocr_det",
        "rapidocr-onnxruntime",
        "wheel",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "paddle2onnx",
    ),
    ModelSource(
        "rapidocr_rec",
        "rapidocr-onnxruntime",
        "wheel",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "paddle2onnx",
    ),
    ModelSource(
        "magika",
        "magika",
        "installed",
        "magika/models/standard_v3_3/model.onnx",
        "jax2tf + tf2onnx",
    ),
    ModelSource("silero_vad", "silero-vad", "wheel", "silero_vad/data/silero_vad.onnx", "spox"),
    ModelSource(
        "silero_vad_op15",
        "silero-vad",
        "wheel",
        "silero_vad/data/silero_vad_16k_op15.onnx",
        "torch.onnx",
    ),
)

FONT_SIZES_CLS = (24, 28, 32, 36, 40)
FONT_SIZES_DET = (20, 24, 28, 32, 40)
FONT_SIZES_REC = (24, 32, 40)
CLS_SAMPLES, DET_SAMPLES, REC_SAMPLES, SILERO_SAMPLES = 128, 16, 64, 128
CLS_SHAPE, REC_SHAPE = (48, 192), (48, 320)
"""Height and width of rapidocr's cls_image_shape and rec_img_shape."""
DET_SIZE = 640
"""rapidocr would scale a page to 736 (limit_type min); 640 is a multiple of 32 as well."""

MAGIKA_MODEL = "standard_v3_3"
MAGIKA_EXTENSIONS = {
    "py": "python",
    "json": "json",
    "html": "html",
    "c": "c",
    "sh": "shell",
    "xml": "xml",
    "md": "markdown",
    "yaml": "yaml",
    "js": "javascript",
    "css": "css",
    "rst": "rst",
    "pm": "perl",
    "svg": "svg",
    "php": "php",
    "sql": "sql",
    "png": "png",
    "gz": "gzip",
    "pyc": "pythonbytecode",
    "tcl": "tcl",
    "cmake": "cmake",
}
"""File extension -> magika label, 20 classes."""
MAGIKA_PER_CLASS = 10
MAGIKA_SHORT_PER_CLASS = 3
MAGIKA_SHORT_BYTES = 2000
"""Files this short leave part of the 1024 + 1024 bytes to the padding token."""
MAGIKA_MIN_BYTES, MAGIKA_MAX_BYTES = 65, 1024**2
"""The file sizes `find -size +64c -size -2M` lists (find rounds 2M up, so at most 1 MiB)."""

SAMPLE_RATE = 16000
SILERO_WINDOW = 576
"""utils_vad.OnnxWrapper feeds 512 new samples after 64 samples of context at 16 kHz."""


# ---------------------------------------------------------------------------- models


def find_wheel(wheels_dir: Path, package: str) -> Path:
    wheels = sorted(wheels_dir.glob(f"{package.replace('-', '_')}-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one {package} wheel in {wheels_dir}, found {len(wheels)}")
    return wheels[0]


def extract_model(source: ModelSource, wheels_dir: Path, models_dir: Path) -> str:
    """Copy the model to models_dir; return the version of the package it came from."""
    target = models_dir / f"{source.name}.onnx"
    if source.origin == "installed":
        distribution = importlib.metadata.distribution(source.package)
        shutil.copyfile(Path(str(distribution.locate_file(source.member))), target)
        return distribution.version
    wheel = find_wheel(wheels_dir, source.package)
    with zipfile.ZipFile(wheel) as archive, archive.open(source.member) as src:
        target.write_bytes(src.read())
    return wheel.name.split("-")[1]


def model_record(source: ModelSource, version: str, out_dir: Path) -> dict[str, Any]:
    """The manifest entry of one model, read from the file."""
    model = onnx.load(out_dir / "models" / f"{source.name}.onnx", load_external_data=False)
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    initializers = {tensor.name for tensor in model.graph.initializer}
    return {
        "model": f"models/{source.name}.onnx",
        "data": f"data/{source.name}.npz",
        "package": source.package,
        "version": version,
        "source_file": source.member,
        "exporter": source.exporter,
        "producer_name": model.producer_name,
        "producer_version": model.producer_version,
        "ir_version": model.ir_version,
        "opset": opsets["ai.onnx"],
        "opset_imports": opsets,
        "inputs": [
            describe_value(value) for value in model.graph.input if value.name not in initializers
        ],
    }


def describe_value(value: onnx.ValueInfoProto) -> dict[str, Any]:
    """Name, type and shape as written: an int, a dim_param string, or None for neither."""
    tensor_type = value.type.tensor_type
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        else:
            dims.append(dim.dim_param if dim.HasField("dim_param") else None)
    return {
        "name": value.name,
        "dtype": onnx.TensorProto.DataType.Name(tensor_type.elem_type),
        "shape": dims,
    }


def open_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One thread: the checks are small and the machine may be shared.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_input_names(session: ort.InferenceSession, arrays: Arrays) -> None:
    expected = sorted(value.name for value in session.get_inputs())
    stored = sorted(name for name in arrays if name != "labels")
    if expected != stored:
        raise SystemExit(f"data arrays {stored} do not match the model inputs {expected}")


def save_data(data_dir: Path, name: str, arrays: Arrays) -> None:
    path = data_dir / f"{name}.npz"
    np.savez_compressed(path, allow_pickle=False, **arrays)
    shapes = ", ".join(
        f"{key} {array.dtype} {tuple(array.shape)}" for key, array in arrays.items()
    )
    print(f"data/{path.name}: {shapes}")


# ---------------------------------------------------------------------------- text images


def word_list(seed: int = 0, n_files: int = 40) -> list[str]:
    """Words from the docstrings and comments of standard-library modules."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    random.Random(seed).shuffle(files)
    words: set[str] = set()
    for path in files[:n_files]:
        try:
            text = path.read_text(encoding="utf-8", errors="ignore")
        except OSError:
            continue
        words.update(re.findall(r"\b[A-Za-z]{3,10}\b", text))
    return sorted(words)


def random_text(rnd: random.Random, words: list[str], most_words: int) -> str:
    return " ".join(rnd.choice(words) for _ in range(rnd.randint(1, most_words)))


def render_line(text: str, size: int, margin: int = 6) -> np.ndarray:
    """Black text on white, cropped to the text plus a margin (like a detector's crop): RGB."""
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = (int(edge) for edge in font.getbbox(text))
    image = Image.new("RGB", (right - left + 2 * margin, bottom - top + 2 * margin), "white")
    ImageDraw.Draw(image).text((margin - left, margin - top), text, fill=(0, 0, 0), font=font)
    return np.asarray(image)


def source_positions(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output pixel: the two input pixels and the weight of the second."""
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    lower = np.floor(centres).astype(np.int64)
    weight = centres - lower
    # cv2 clamps at the border: a centre left of pixel 0 takes pixel 0 alone.
    weight = np.where(lower < 0, 0.0, weight)
    lower = np.clip(lower, 0, n_in - 1)
    upper = np.clip(lower + 1, 0, n_in - 1)
    return lower, upper, weight


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize(image, (width, height)) with INTER_LINEAR, in numpy (no opencv needed)."""
    row_lo, row_hi, row_weight = source_positions(height, image.shape[0])
    col_lo, col_hi, col_weight = source_positions(width, image.shape[1])
    pixels = image.astype(np.float32)
    col_w = col_weight[None, :, None]
    top = pixels[row_lo][:, col_lo] * (1 - col_w) + pixels[row_lo][:, col_hi] * col_w
    bottom = pixels[row_hi][:, col_lo] * (1 - col_w) + pixels[row_hi][:, col_hi] * col_w
    blended = top * (1 - row_weight)[:, None, None] + bottom * row_weight[:, None, None]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def resize_normalise(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """rapidocr's TextClassifier.resize_norm_img (TextRecognizer's at a fixed width): CHW."""
    ratio = image.shape[1] / float(image.shape[0])
    scaled_width = min(width, math.ceil(height * ratio))
    resized = resize_linear(image, scaled_width, height).astype(np.float32)
    channels_first = resized.transpose((2, 0, 1)) / 255
    channels_first -= 0.5
    channels_first /= 0.5
    padded = np.zeros((3, height, width), dtype=np.float32)
    padded[:, :, :scaled_width] = channels_first
    return padded


# ---------------------------------------------------------------------------- rapidocr


def make_cls_data(words: list[str]) -> Arrays:
    """Text lines, every odd one turned 180 degrees: label 1 is '180' in rapidocr's label_list."""
    rnd = random.Random(1234)
    images, labels = [], []
    for i in range(CLS_SAMPLES):
        line = render_line(random_text(rnd, words, 4), size=rnd.choice(FONT_SIZES_CLS))
        label = i % 2
        if label == 1:
            line = np.ascontiguousarray(line[::-1, ::-1])
        images.append(resize_normalise(line, *CLS_SHAPE))
        labels.append(label)
    return {"x": np.stack(images), "labels": np.array(labels, dtype=np.int64)}


def render_page(rnd: random.Random, words: list[str]) -> np.ndarray:
    """A white page with lines of text in several sizes: RGB uint8."""
    page = Image.new("RGB", (DET_SIZE, DET_SIZE), "white")
    draw = ImageDraw.Draw(page)
    line_top = rnd.randint(10, 40)
    while line_top < DET_SIZE - 60:
        size = rnd.choice(FONT_SIZES_DET)
        font = ImageFont.load_default(size=size)
        text = random_text(rnd, words, 5)
        draw.text((rnd.randint(10, 120), line_top), text, fill=(0, 0, 0), font=font)
        line_top += int(size * rnd.uniform(1.4, 2.5))
    return np.asarray(page)


def make_det_data(rnd: random.Random, words: list[str]) -> Arrays:
    """Pages normalised as rapidocr's DetPreProcess does: (x/255 - 0.5)/0.5, HWC -> CHW."""
    pages = []
    for _ in range(DET_SAMPLES):
        pixels = render_page(rnd, words).astype(np.float32)
        normalised = (pixels * (1 / 255.0) - np.array([0.5] * 3)) / np.array([0.5] * 3)
        pages.append(normalised.transpose(2, 0, 1).astype(np.float32))
    return {"x": np.stack(pages)}


def make_rec_data(rnd: random.Random, words: list[str]) -> tuple[Arrays, list[str]]:
    """Text lines for the recogniser, and the texts (kept for the check, not stored)."""
    images, texts = [], []
    for _ in range(REC_SAMPLES):
        text = random_text(rnd, words, 3)[:24]
        images.append(resize_normalise(render_line(text, rnd.choice(FONT_SIZES_REC)), *REC_SHAPE))
        texts.append(text)
    return {"x": np.stack(images)}, texts


def check_cls(model: Path, arrays: Arrays) -> None:
    predicted = open_session(model).run(None, {"x": arrays["x"]})[0].argmax(1)
    labels = arrays["labels"]
    upright = (predicted[labels == 0] == 0).mean()
    rotated = (predicted[labels == 1] == 1).mean()
    print(
        f"  fp32 accuracy: {(predicted == labels).mean():.4f}"
        f"  (upright {upright:.3f}, rotated {rotated:.3f})"
    )


def check_det(model: Path, arrays: Arrays) -> None:
    pages = arrays["x"][:2]
    probabilities = open_session(model).run(None, {"x": pages})[0]
    text_share = np.round((probabilities > 0.3).mean(axis=(1, 2, 3)), 3)
    ink_share = np.round((pages < 0).mean(axis=(1, 2, 3)), 3)
    print(f"  pixels > 0.3 on 2 pages: {text_share} (ink {ink_share}); no labels")


def ctc_greedy(best: np.ndarray, characters: list[str]) -> str:
    """Collapse repeats, drop blanks (index 0)."""
    kept, previous = [], -1
    for index in best:
        if index not in (previous, 0):
            kept.append(characters[index])
        previous = index
    return "".join(kept)


def check_rec(model: Path, arrays: Arrays, texts: list[str]) -> None:
    metadata = {prop.key: prop.value for prop in onnx.load(model).metadata_props}
    characters = ["blank", *metadata["character"].splitlines(), " "]
    scores = open_session(model).run(None, {"x": arrays["x"]})[0]
    decoded = [ctc_greedy(row.argmax(1), characters) for row in scores]
    exact = np.mean([found == text for found, text in zip(decoded, texts, strict=True)])
    print(f"  fp32 exact text match (greedy CTC, texts not stored): {exact:.3f}")


def prepare_rapidocr(models_dir: Path, data_dir: Path, words: list[str]) -> None:
    cls_arrays = make_cls_data(words)
    save_data(data_dir, "rapidocr_cls", cls_arrays)
    check_input_names(open_session(models_dir / "rapidocr_cls.onnx"), cls_arrays)
    check_cls(models_dir / "rapidocr_cls.onnx", cls_arrays)

    # det and rec draw from one seeded stream, det first, as when the data was first made.
    rnd = random.Random(99)
    det_arrays = make_det_data(rnd, words)
    save_data(data_dir, "rapidocr_det", det_arrays)
    check_det(models_dir / "rapidocr_det.onnx", det_arrays)
    rec_arrays, texts = make_rec_data(rnd, words)
    save_data(data_dir, "rapidocr_rec", rec_arrays)
    check_rec(models_dir / "rapidocr_rec.onnx", rec_arrays, texts)


# ---------------------------------------------------------------------------- magika


def files_by_extension(roots: list[Path]) -> dict[str, list[tuple[str, int]]]:
    """Regular files (no links) of MAGIKA_MIN_BYTES..MAGIKA_MAX_BYTES under roots, path-sorted,
    with their sizes, grouped by the extensions in MAGIKA_EXTENSIONS."""
    found: list[tuple[str, int]] = []
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                extension = name.rsplit(".", 1)[-1] if "." in name else ""
                if extension not in MAGIKA_EXTENSIONS:
                    continue
                path = os.path.join(folder, name)
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode) and (
                    MAGIKA_MIN_BYTES <= info.st_size <= MAGIKA_MAX_BYTES
                ):
                    found.append((path, info.st_size))
    grouped: dict[str, list[tuple[str, int]]] = {}
    for path, size in sorted(found):
        grouped.setdefault(path.rsplit(".", 1)[-1], []).append((path, size))
    return grouped


def magika_features(path: str, config: dict[str, Any]) -> list[int] | None:
    """The model's input for one file, by magika's own code; None if magika would not ask
    the model (a file shorter than min_file_size_for_dl)."""
    with open(path, "rb") as handle:
        features = Magika._extract_features_from_seekable(
            Seekable(handle),
            config["beg_size"],
            config["mid_size"],
            config["end_size"],
            config["padding_token"],
            config["block_size"],
            config["use_inputs_at_offsets"],
        )
    if features.beg[config["min_file_size_for_dl"] - 1] == config["padding_token"]:
        return None
    return features.beg[: config["beg_size"]] + features.end[-config["end_size"] :]


def pick_files(candidates: list[tuple[str, int]], rnd: random.Random) -> list[str]:
    """Shuffled, with a few short files first so that the padding token occurs."""
    shuffled = list(candidates)
    rnd.shuffle(shuffled)
    short = [path for path, size in shuffled if size < MAGIKA_SHORT_BYTES]
    short = short[:MAGIKA_SHORT_PER_CLASS]
    return short + [path for path, size in shuffled if size >= MAGIKA_SHORT_BYTES]


def make_magika_data(search_roots: list[Path]) -> tuple[Arrays, list[str], list[str]]:
    """Features and labels (indices into the model's output) of real files; the file paths;
    the label names in output order."""
    config_path = Path(magika.__file__).parent / "models" / MAGIKA_MODEL / "config.min.json"
    config = json.loads(config_path.read_text())
    label_space: list[str] = config["target_labels_space"]
    rnd = random.Random(7)
    grouped = files_by_extension(search_roots)
    features, labels, paths = [], [], []
    for extension, label in MAGIKA_EXTENSIONS.items():
        candidates = grouped.get(extension, [])
        chosen = 0
        for path in pick_files(candidates, rnd):
            if chosen == MAGIKA_PER_CLASS:
                break
            file_features = magika_features(path, config)
            if file_features is None:
                continue
            features.append(file_features)
            labels.append(label_space.index(label))
            paths.append(path)
            chosen += 1
        print(f"  {extension:6s} -> {label:15s}: {chosen} files (of {len(candidates)} found)")
    arrays: Arrays = {
        "bytes": np.array(features, dtype=np.int32),
        "labels": np.array(labels, dtype=np.int64),
    }
    return arrays, paths, label_space


def check_magika(model: Path, arrays: Arrays, paths: list[str], label_space: list[str]) -> None:
    predicted = open_session(model).run(None, {"bytes": arrays["bytes"]})[0].argmax(1)
    labels = arrays["labels"]
    print(f"  fp32 accuracy: {(predicted == labels).mean():.4f} on {len(labels)} files")
    for index in np.flatnonzero(predicted != labels):
        wrong = label_space[predicted[index]]
        print(f"    miss: {label_space[labels[index]]} -> {wrong}  {paths[index]}")
    # Magika's own pipeline on every 10th file: the features above must be the ones it uses.
    identifier = Magika()
    agree = [
        identifier.identify_path(Path(path)).dl.label == label_space[predicted[index]]
        for index, path in list(enumerate(paths))[::10]
    ]
    print(f"  same label as Magika().identify_path on every 10th file: {np.mean(agree):.2f}")


def prepare_magika(models_dir: Path, data_dir: Path, search_roots: list[Path]) -> None:
    arrays, paths, label_space = make_magika_data(search_roots)
    save_data(data_dir, "magika", arrays)
    lines = [
        f"{label}\t{label_space[label]}\t{path}\n"
        for label, path in zip(arrays["labels"], paths, strict=True)
    ]
    (data_dir / "magika.files.txt").write_text("".join(lines))
    check_input_names(open_session(models_dir / "magika.onnx"), arrays)
    check_magika(models_dir / "magika.onnx", arrays, paths, label_space)


# ---------------------------------------------------------------------------- silero


def voiced_clip(rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
    """Speech-like: harmonics of a wavering pitch, tilted spectrum, an onset, a little noise."""
    pitch = rng.uniform(90, 260) * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(3, 7) * times))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    signal = np.zeros(len(times))
    for harmonic in range(1, 25):
        if harmonic * pitch.mean() < 7000:
            gain = 1.0 / harmonic ** rng.uniform(0.8, 1.6)
            signal = signal + gain * np.sin(harmonic * phase + rng.uniform(0, 2 * np.pi))
    onset = np.sin(np.pi * np.clip((times + rng.uniform(0, 0.02)) / 0.06, 0, 1)) ** 0.5 + 0.05
    signal = signal * onset + 0.01 * rng.standard_normal(len(times))
    return signal / np.abs(signal).max() * rng.uniform(0.1, 0.6)


def pink_clip(rng: np.random.Generator, length: int) -> np.ndarray:
    """Integrated noise with its drift removed, quiet to near silence."""
    signal = np.cumsum(rng.standard_normal(length))
    signal -= np.linspace(signal[0], signal[-1], length)
    return signal / np.abs(signal).max() * rng.uniform(0.001, 0.05)


def make_silero_data() -> tuple[Arrays, np.ndarray]:
    """Clips of SILERO_WINDOW samples at 16 kHz, a quarter each voiced (kinds 0 and 1), white
    noise (2) and pink noise (3); zero state; sr as a 0-d array. Also returns the kinds."""
    rng = np.random.default_rng(2024)
    times = np.arange(SILERO_WINDOW) / SAMPLE_RATE
    clips = []
    for i in range(SILERO_SAMPLES):
        kind = i % 4
        if kind in (0, 1):
            clip = voiced_clip(rng, times)
        elif kind == 2:
            clip = rng.standard_normal(SILERO_WINDOW) * rng.uniform(0.001, 0.1)
        else:
            clip = pink_clip(rng, SILERO_WINDOW)
        clips.append(clip.astype(np.float32))
    arrays: Arrays = {
        "input": np.stack(clips),
        "state": np.zeros((SILERO_SAMPLES, 2, 128), np.float32),
        "sr": np.array(SAMPLE_RATE, dtype=np.int64),
    }
    return arrays, np.arange(SILERO_SAMPLES) % 4


def check_silero(model: Path, arrays: Arrays, kinds: np.ndarray) -> None:
    """Speech probability per sample, one sample per run as silero is used."""
    session = open_session(model)
    probabilities = []
    for i in range(SILERO_SAMPLES):
        feed = {
            "input": arrays["input"][i][None],
            "state": arrays["state"][i][:, None],  # the model's batch axis is axis 1
            "sr": arrays["sr"],
        }
        probabilities.append(float(np.ravel(session.run(None, feed)[0])[0]))
    speech = np.array(probabilities)
    groups = {"voiced": kinds < 2, "white": kinds == 2, "pink": kinds == 3}
    means = ", ".join(f"{group} {speech[chosen].mean():.3f}" for group, chosen in groups.items())
    print(f"  mean speech probability: {means}; no labels")


def prepare_silero(models_dir: Path, data_dir: Path) -> None:
    arrays, kinds = make_silero_data()
    for name in ("silero_vad", "silero_vad_op15"):
        save_data(data_dir, name, arrays)
        check_input_names(open_session(models_dir / f"{name}.onnx"), arrays)
        check_silero(models_dir / f"{name}.onnx", arrays, kinds)


# ---------------------------------------------------------------------------- main


def write_manifest(out_dir: Path, versions: dict[str, str]) -> None:
    models = {
        source.name: model_record(source, versions[source.name], out_dir) for source in SOURCES
    }
    models["magika"]["files"] = "data/magika.files.txt"
    path = out_dir / "manifest.json"
    path.write_text(json.dumps({"models": models}, indent=2) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the folder to fill")
    out_dir = parser.parse_args().out.resolve()
    models_dir, data_dir = out_dir / "models", out_dir / "data"
    models_dir.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)

    versions = {}
    for source in SOURCES:
        versions[source.name] = extract_model(source, out_dir / "wheels", models_dir)
        print(f"models/{source.name}.onnx  <- {source.package} {versions[source.name]}")

    words = word_list()
    prepare_rapidocr(models_dir, data_dir, words)
    prepare_magika(models_dir, data_dir, [Path("/usr"), out_dir / ".venv"])
    prepare_silero(models_dir, data_dir)
    write_manifest(out_dir, versions)


if __name__ == "__main__":
    main()

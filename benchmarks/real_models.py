"""Export the real-size benchmark architectures to ONNX (random, seeded weights).

    python benchmarks/real_models.py --export-only     # export what is missing, print sizes
    python benchmarks/real_models.py --list            # the tuner command for each model

bert-base (12 layers, hidden 768, sequence dynamic), bert-small (Google's BERT-Small shape: 4
layers, hidden 256, 4 heads, sequence dynamic; small enough to record a whole landscape on a
CPU), distilbert (6 layers, hidden 768, sequence dynamic), convnext-tiny (transformers
`ConvNextForImageClassification`, 224x224) and dlrm (13 dense floats, 26 categorical int64
inputs into tables of 3 to 100,000 rows). The batch is
dynamic everywhere, named `batch`; the sequence dim is named `sequence` and bound at tuning time
with `--dim sequence=128`. Models go to benchmarks/models/ (git-ignored). A model whose weights
would pass ONNX's 2 GB protobuf limit, or every model with --external-data, keeps its weights in
one `<name>.data` file beside the `.onnx`. The tuning itself is not run here.

The exporters (and the DLRM module) are those of tests/realmodels.py, so the benchmark models
are the test models at full size. Needs the torch extra and transformers.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/realmodels.py holds the exporters the tests use

from tests import realmodels  # noqa: E402
from tests.realmodels import Exporter  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "models"
PROTOBUF_LIMIT = 2 * 1024**3
"""An ONNX file holds at most 2 GiB (protobuf); bigger weights must go to external data."""
_MARGIN = 64 * 1024**2
"""Room for the graph itself next to the weights."""

TEXT_SEQUENCE = 128
"""Sequence length the tuner binds with --dim (and the export example's length)."""
DLRM_TABLES = (
    3, 4, 5, 7, 10, 14, 20, 30, 50, 100, 200, 500, 1000,
    2000, 3000, 5000, 8000, 10_000, 15_000, 20_000, 30_000, 40_000, 50_000, 65_000, 80_000,
    100_000,
)  # fmt: skip
DLRM_DENSE = 13
EXAMPLE_BATCH = 2
"""Batch of the export example: 1 would let torch.export specialise the batch dim."""

Built = tuple[Any, tuple[Any, ...], list[str], str, dict[str, dict[int, str]]]
"""(module, example args, input names, output name, {input: {axis: dim name}})."""


@dataclass(frozen=True)
class Model:
    """One benchmark model: how to build it, and how to tune it."""

    name: str
    summary: str
    build: Callable[[], Built]
    tuner_args: tuple[str, ...] = ()
    max_sizes: tuple[tuple[str, int], ...] = ()


def _bert() -> Built:
    torch, transformers = realmodels.need("torch"), realmodels.need("transformers")
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2))
    return _text(torch, model, ["input_ids", "attention_mask", "token_type_ids"], 30522)


def _bert_small() -> Built:
    torch, transformers = realmodels.need("torch"), realmodels.need("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        num_hidden_layers=4,
        hidden_size=256,
        num_attention_heads=4,
        intermediate_size=1024,
        num_labels=2,
    )  # Google's BERT-Small (L-4, H-256, A-4), BERT's vocabulary
    model = transformers.BertForSequenceClassification(config)
    return _text(torch, model, ["input_ids", "attention_mask", "token_type_ids"], 30522)


def _distilbert() -> Built:
    torch, transformers = realmodels.need("torch"), realmodels.need("transformers")
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(num_labels=2)
    model = transformers.DistilBertForSequenceClassification(config)
    return _text(torch, model, ["input_ids", "attention_mask"], 30522)


def _text(torch: Any, model: Any, names: list[str], vocab: int) -> Built:
    rng = np.random.default_rng(0)
    shape = (EXAMPLE_BATCH, TEXT_SEQUENCE)
    values = {
        "input_ids": rng.integers(0, vocab, shape),
        "attention_mask": np.ones(shape, dtype=np.int64),
        "token_type_ids": rng.integers(0, 2, shape),
    }
    args = tuple(torch.from_numpy(values[n].astype(np.int64)) for n in names)
    return model, args, names, "logits", {n: {0: "batch", 1: "sequence"} for n in names}


def _convnext() -> Built:
    torch, transformers = realmodels.need("torch"), realmodels.need("transformers")
    torch.manual_seed(0)
    config = transformers.ConvNextConfig(num_labels=1000)  # ConvNeXt-T, the ImageNet head
    model = transformers.ConvNextForImageClassification(config)
    pixels = torch.randn(EXAMPLE_BATCH, 3, 224, 224)
    return model, (pixels,), ["pixel_values"], "logits", {"pixel_values": {0: "batch"}}


def _dlrm() -> Built:
    torch = realmodels.need("torch")
    torch.manual_seed(0)
    model = realmodels.dlrm_module(DLRM_DENSE, DLRM_TABLES, 64, (512, 256), (512, 256))
    rng = np.random.default_rng(0)
    batch = EXAMPLE_BATCH
    args = (torch.from_numpy(rng.standard_normal((batch, DLRM_DENSE)).astype(np.float32)),)
    args += tuple(torch.from_numpy(rng.integers(0, n, (batch, 1))) for n in DLRM_TABLES)
    names = ["dense", *(f"cat_{i}" for i in range(len(DLRM_TABLES)))]
    return model, args, names, "score", {n: {0: "batch"} for n in names}


MODELS = {
    m.name: m
    for m in (
        Model(
            "bert-base",
            "BertForSequenceClassification, BERT-base shape (110M parameters), 2 labels",
            _bert,
            tuner_args=("--dim", f"sequence={TEXT_SEQUENCE}", "--max-batch", "64"),
            max_sizes=(("sequence", 512),),
        ),
        Model(
            "bert-small",
            "BertForSequenceClassification, BERT-Small shape (4 layers, hidden 256, 4 heads; "
            "11M), 2 labels",
            _bert_small,
            tuner_args=("--dim", f"sequence={TEXT_SEQUENCE}", "--max-batch", "64"),
            max_sizes=(("sequence", 512),),
        ),
        Model(
            "distilbert",
            "DistilBertForSequenceClassification, 6 layers, hidden 768 (67M), 2 labels",
            _distilbert,
            tuner_args=("--dim", f"sequence={TEXT_SEQUENCE}", "--max-batch", "64"),
            max_sizes=(("sequence", 512),),
        ),
        Model(
            "convnext-tiny",
            "ConvNextForImageClassification, ConvNeXt-T (29M), 224x224, 1000 classes",
            _convnext,
            tuner_args=("--max-batch", "64"),
        ),
        Model(
            "dlrm",
            "DLRM shape: 13 dense + 26 categorical (3..100,000 rows, dim 64), MLPs "
            "512-256-64 / 512-256-1",
            _dlrm,
            tuner_args=("--max-batch", "4096"),
        ),
    )
}


def model_path(out: Path, name: str) -> Path:
    return out / f"{name}.onnx"


def export(model: Model, out: Path, exporter: Exporter, external_data: bool) -> Path:
    """Export `model` to `out/<name>.onnx` (whole files renamed into place); return the path."""
    module, args, names, output, dynamic = model.build()
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    external = external_data or weights > PROTOBUF_LIMIT - _MARGIN
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=out))
    try:
        raw = staging / "raw" / f"{model.name}.onnx"
        raw.parent.mkdir()
        realmodels.export_module(
            module, args, raw, exporter, names, output, dynamic, max_sizes=dict(model.max_sizes)
        )
        final = staging / raw.name
        if external:  # one `<name>.data`, whatever (and however many files) the exporter wrote
            onnx.save_model(
                onnx.load(str(raw)), str(final), save_as_external_data=True,
                all_tensors_to_one_file=True, location=f"{model.name}.data",
            )  # fmt: skip
        else:
            final = raw
        produced = sorted(p for p in final.parent.iterdir() if p.is_file())
        for stale in _files(out, model.name):
            stale.unlink()
        for file in sorted(produced, key=lambda p: p.suffix == ".onnx"):  # the .onnx last
            os.replace(file, out / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_path(out, model.name)


def _files(out: Path, name: str) -> list[Path]:
    """The model file and its external data files."""
    return sorted(p for p in out.glob(f"{name}.*") if p.is_file())


def _size(files: list[Path]) -> str:
    mb = sum(p.stat().st_size for p in files) / 1e6
    return f"{mb:9.1f} MB"


def tuner_command(model: Model, path: Path) -> str:
    try:
        shown = path.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = path
    words = ["python", "-m", "tuner", "optimize", "--model", str(shown), *model.tuner_args]
    words += ["--study", f"real-{model.name}"]
    return shlex.join(words)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/real_models.py",
        description="Export the real-size benchmark models (BERT-base, BERT-Small, DistilBERT, "
        "ConvNeXt-T, DLRM; random seeded weights) to ONNX, and print the tuner command for each. "
        "Without --export-only or --list: export what is missing, then list.",
        epilog="models: " + "; ".join(f"{m.name}: {m.summary}" for m in MODELS.values()),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="folder for the models (default: %(default)s)",
    )
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help="comma-separated subset of: %(default)s",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--export-only", action="store_true", help="export, print file sizes and export times"
    )
    action.add_argument(
        "--list", action="store_true", help="print the tuner command for each model; no export"
    )
    parser.add_argument(
        "--force", action="store_true", help="export again even where the file exists"
    )
    parser.add_argument(
        "--exporter",
        choices=realmodels.EXPORTERS,
        default="torchscript",
        help="torch.onnx.export with dynamo=False (dynamic_axes; what Hugging Face's exporters "
        "use; default) or dynamo=True (torch's default; weights in <name>.onnx.data)",
    )
    parser.add_argument(
        "--external-data",
        action="store_true",
        help="keep every model's weights in <name>.data (automatic past the 2 GB limit)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(
            f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(MODELS)}", file=sys.stderr
        )
        return 2
    chosen = [MODELS[n] for n in names]
    if not args.list:
        print(f"exporter: {args.exporter}; folder: {args.out}")
        for model in chosen:
            path = model_path(args.out, model.name)
            if path.is_file() and not args.force:
                print(f"{model.name:14} {_size(_files(args.out, model.name))}   (exists)")
                continue
            start = time.perf_counter()
            try:
                export(model, args.out, args.exporter, args.external_data)
            except pytest.skip.Exception as exc:  # realmodels.need: a library is missing
                print(f"cannot export {model.name}: {exc.msg}", file=sys.stderr)
                return 1
            seconds = time.perf_counter() - start
            files = _files(args.out, model.name)
            shown = ", ".join(p.name for p in files)
            print(f"{model.name:14} {_size(files)} {seconds:7.1f} s   {shown}")
    if not args.export_only:
        for model in chosen:
            print(tuner_command(model, model_path(args.out, model.name)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Small real architectures exported to ONNX at test time, the way users export them.

Each function builds a seeded, randomly initialised model (BERT and DistilBERT from
`transformers`, a DLRM-shaped recommender, a torchvision CNN), exports it with
`torch.onnx.export` and returns the path of the `.onnx` file. Files are cached in a folder per
exporter parameters and library versions (`tests/.cache/realmodels/`, git-ignored), so only the
first test run pays for the export. A folder is written whole under a temporary name and then
renamed, so a reader never sees half a model.

Two exporters, both those of torch 2.14's `torch.onnx.export`:

- "torchscript" (`dynamo=False`, `dynamic_axes`): the legacy tracer that Hugging Face's
  exporters (`transformers.onnx`, optimum) use; one self-contained file, opset 20, IR 9.
- "dynamo" (`dynamo=True`, `dynamic_shapes` with named `Dim`s): torch's default since 2.9; it
  writes the weights to `<name>.onnx.data` beside the model by default (kept here, as users get
  it), opset 20, IR 10.

Both write the dim names given (`batch`, `sequence`) as `dim_param` (dynamo with unnamed
`Dim.AUTO` would write `s18`, `s41`, ...; the legacy one with axis lists
`input_ids_dynamic_axes_1`). When torch, transformers or torchvision is missing, the functions
skip the calling test (`pytest.importorskip`); a cached file needs neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import io
import itertools
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import onnx
import pytest

Exporter = Literal["torchscript", "dynamo"]
EXPORTERS: tuple[Exporter, ...] = ("torchscript", "dynamo")

CACHE_ROOT = Path(__file__).resolve().parent / ".cache" / "realmodels"
_FORMAT = 1
"""Bump when a builder below changes, so cached files from the old code are not reused."""

# BERT and DistilBERT: tiny encoders with the real structure.
TEXT_VOCAB = 1000
TYPE_VOCAB = 2
MAX_POSITIONS = 256
TEXT_LABELS = 4
EXAMPLE_SEQUENCE = 16
"""Sequence length of the export example, and the fixed length of the batch-only exports."""

# DLRM: dense features through a bottom MLP, one index per table, dot interaction, top MLP.
DLRM_DENSE = 13
DLRM_TABLES = (3, 7, 50, 1000)
DLRM_EMBEDDING_DIM = 16

# CNN: torchvision MobileNetV3-small at a small resolution.
CNN_IMAGE = 64
CNN_CLASSES = 10

_EXAMPLE_BATCH = 2
"""Export example batch: 1 would let torch.export specialise the batch dim to a constant."""


def need(module_name: str) -> ModuleType:
    """Import `module_name`, or skip the calling test with the extra that provides it."""
    return pytest.importorskip(
        module_name,
        reason=f"needs {module_name} to export real models "
        "(pip install 'batch-tuner[torch,test]')",
    )


# ---------------------------------------------------------------------------------------------
# Public exporters


def bert(
    dynamic_sequence: bool, *, exporter: Exporter = "torchscript", root: Path | None = None
) -> Path:
    """`BertForSequenceClassification` (2 layers, hidden 64): int64 `input_ids`,
    `attention_mask`, `token_type_ids` [batch, sequence or 16] -> `logits` [batch, 4]."""
    names = ("input_ids", "attention_mask", "token_type_ids")
    params = {"dynamic_sequence": dynamic_sequence}
    return _cached(
        "bert", params, exporter, ("transformers",), root,
        lambda f: _export_text(f, "bert", names, dynamic_sequence, exporter),
    )  # fmt: skip


def distilbert(
    dynamic_sequence: bool, *, exporter: Exporter = "torchscript", root: Path | None = None
) -> Path:
    """`DistilBertForSequenceClassification` (2 layers, dim 64): int64 `input_ids`,
    `attention_mask` [batch, sequence or 16] -> `logits` [batch, 4]."""
    names = ("input_ids", "attention_mask")
    params = {"dynamic_sequence": dynamic_sequence}
    return _cached(
        "distilbert", params, exporter, ("transformers",), root,
        lambda f: _export_text(f, "distilbert", names, dynamic_sequence, exporter),
    )  # fmt: skip


def bert_encoder(*, root: Path | None = None) -> Path:
    """A bare `BertModel` (2 layers, hidden 64), sequence dynamic, with two outputs:
    `last_hidden_state` [batch, sequence, 64] and `pooler_output` [batch, 64] (TorchScript
    exporter: one output name per output)."""
    return _cached("bert-encoder", {}, "torchscript", ("transformers",), root, _export_encoder)


def dlrm(*, exporter: Exporter = "torchscript", root: Path | None = None) -> Path:
    """DLRM-shaped recommender: float32 `dense` [batch, 13] and int64 `cat_0..cat_3`
    [batch, 1] indexing tables of 3, 7, 50 and 1000 rows -> `score` [batch, 1] in (0, 1)."""
    params = {"tables": list(DLRM_TABLES), "dim": DLRM_EMBEDDING_DIM}
    return _cached("dlrm", params, exporter, (), root, lambda f: _export_dlrm(f, exporter))


def cnn(*, exporter: Exporter = "torchscript", root: Path | None = None) -> Path:
    """torchvision `mobilenet_v3_small` (10 classes): float32 `input` [batch, 3, 64, 64]
    -> `logits` [batch, 10]."""
    params = {"arch": "mobilenet_v3_small", "image": CNN_IMAGE, "classes": CNN_CLASSES}
    return _cached(
        "cnn", params, exporter, ("torchvision",), root, lambda f: _export_cnn(f, exporter)
    )


def with_external_data(path: Path, *, size_threshold: int = 0, root: Path | None = None) -> Path:
    """A copy of the model at `path`, in its own folder, with every tensor of at least
    `size_threshold` bytes in one `<stem>.data` file beside it.

    With the default 0 even the small int64 shape tensors go out: fine for the torchscript
    exports (they keep those in Constant nodes), but ONNX Runtime 1.32 refuses a dynamo export
    so saved ("Cannot parse data from external tensors", shape inference of a Slice);
    onnx's own default of 1024 keeps them inline, as torch does.
    """
    path = Path(path)
    model = onnx.load(str(path))  # pulls in the source's own external data, if any
    digest = hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:16]
    folder = (root or CACHE_ROOT) / f"external-{path.stem}-{size_threshold}-{digest}"
    target = folder / path.name

    def write(file: Path) -> None:
        onnx.save_model(
            model,
            str(file),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{path.stem}.data",
            size_threshold=size_threshold,
        )

    return _publish(folder, target.name, write)


# ---------------------------------------------------------------------------------------------
# Valid inputs


def text_feed(
    batch: int, sequence: int, *, token_types: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    """Valid int64 inputs for `bert` (`token_types=True`) or `distilbert`: ids inside the
    vocabulary, token types 0..1, and a mask with a padded tail on every other row."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, TEXT_VOCAB, (batch, sequence), dtype=np.int64)
    mask = np.ones((batch, sequence), dtype=np.int64)
    mask[1::2, max(1, sequence // 2) :] = 0
    feed = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        feed["token_type_ids"] = rng.integers(0, TYPE_VOCAB, (batch, sequence), dtype=np.int64)
    return feed


def dlrm_feed(batch: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid inputs for `dlrm`: dense floats, and each index inside its own table."""
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {
        "dense": rng.standard_normal((batch, DLRM_DENSE)).astype(np.float32)
    }
    for i, rows in enumerate(DLRM_TABLES):
        feed[f"cat_{i}"] = rng.integers(0, rows, (batch, 1), dtype=np.int64)
    return feed


def cnn_feed(batch: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid input for `cnn`: normalised-image-like floats."""
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((batch, 3, CNN_IMAGE, CNN_IMAGE)).astype(np.float32)}


# ---------------------------------------------------------------------------------------------
# Cache


def _cached(
    name: str,
    params: dict[str, Any],
    exporter: Exporter,
    libraries: Sequence[str],
    root: Path | None,
    export: Callable[[Path], None],
) -> Path:
    """The cached export keyed by (name, params, exporter, library versions); exports if absent."""
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    if exporter == "dynamo":
        libraries = (*libraries, "onnxscript")
    versions = {lib: _version(lib) for lib in ("torch", *libraries, "onnx")}
    key = {"format": _FORMAT, "name": name, "exporter": exporter, **params, **versions}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = (root or CACHE_ROOT) / f"{name}-{exporter}-{digest}"
    return _publish(folder, f"{name}.onnx", export)


def _version(library: str) -> str:
    """The installed version, read without importing (torch takes seconds); skips if absent."""
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return str(need(library).__version__)  # skips, unless importable without metadata


def _publish(folder: Path, filename: str, write: Callable[[Path], None]) -> Path:
    """`folder/filename`, written by `write` into a temporary sibling folder renamed into place."""
    target = folder / filename
    if target.is_file():
        return target
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(staging / filename)
        try:
            os.replace(staging, folder)
        except OSError:
            if not target.is_file():  # not a concurrent writer that got there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# Builders (torch is imported here, never at module import)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' deprecation/tracer warnings and the dynamo progress lines."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export_module(
    module: Any,
    args: tuple[Any, ...],
    file: Path,
    exporter: Exporter,
    input_names: Sequence[str],
    output_name: str,
    dynamic: dict[str, dict[int, str]],
    *,
    max_sizes: Mapping[str, int] | None = None,
) -> None:
    """Export `module` (eval mode) with named dynamic dims, `dynamic[input] = {axis: name}`;
    `max_sizes[name]` bounds a dim for torch.export (e.g. sequence <= position embeddings)."""
    torch = need("torch")
    module.eval()
    with _quiet(), torch.no_grad():
        if exporter == "torchscript":
            axes: dict[str, dict[int, str]] = {**dynamic, output_name: {0: "batch"}}
            torch.onnx.export(
                module, args, str(file), dynamo=False, input_names=list(input_names),
                output_names=[output_name], dynamic_axes=axes,
            )  # fmt: skip
        else:
            dims: dict[str, Any] = {}
            for axis_names in dynamic.values():
                for label in axis_names.values():
                    upper = (max_sizes or {}).get(label)
                    dims.setdefault(label, torch.export.Dim(label, max=upper))
            shapes: tuple[Any, ...] = tuple(
                {axis: dims[label] for axis, label in dynamic.get(n, {}).items()} or None
                for n in input_names
            )
            signature = list(inspect.signature(module.forward).parameters.values())
            if signature and signature[-1].kind is inspect.Parameter.VAR_POSITIONAL:
                fixed = len(signature) - 1  # torch.export wants `*args` as one nested tuple
                shapes = (*shapes[:fixed], shapes[fixed:])
            need("onnxscript")  # the dynamo exporter's translator; torch does not require it
            program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=shapes)
            graph = program.model.graph
            _rename(graph, [*graph.inputs, *graph.outputs], [*input_names, output_name])
            program.save(str(file), external_data=True)  # as torch.onnx.export(..., f) saves


def _rename(graph: Any, values: Sequence[Any], names: Sequence[str]) -> None:
    """Name `values` of an onnx_ir graph `names`, first moving aside any other value so named.

    torch 2.14's `input_names` renames without that check: an input named `cat_1` collides with
    the output of the second `torch.cat` and ONNX Runtime rejects the file ("Duplicate definition
    of name"; pytorch/pytorch#168211, #158094).
    """
    others = [*graph.initializers.values(), *(out for node in graph for out in node.outputs)]
    taken = {v.name for v in [*others, *values]}
    mine = {id(v) for v in values}
    for value in others:
        if value.name in names and id(value) not in mine:
            fresh = next(
                f"{value.name}_{i}" for i in range(1, 1 << 20) if f"{value.name}_{i}" not in taken
            )
            taken.add(fresh)
            value.name = fresh
    for value, name in zip(values, names, strict=True):
        value.name = name


def _export_text(
    file: Path, arch: str, names: Sequence[str], dynamic_sequence: bool, exporter: Exporter
) -> None:
    torch = need("torch")
    transformers = need("transformers")
    torch.manual_seed(0)
    if arch == "bert":
        config = transformers.BertConfig(
            vocab_size=TEXT_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=128, max_position_embeddings=MAX_POSITIONS,
            type_vocab_size=TYPE_VOCAB, num_labels=TEXT_LABELS,
        )  # fmt: skip
        model = transformers.BertForSequenceClassification(config)
    else:
        config = transformers.DistilBertConfig(
            vocab_size=TEXT_VOCAB, dim=64, n_layers=2, n_heads=2, hidden_dim=128,
            max_position_embeddings=MAX_POSITIONS, num_labels=TEXT_LABELS,
        )  # fmt: skip
        model = transformers.DistilBertForSequenceClassification(config)
    example = text_feed(_EXAMPLE_BATCH, EXAMPLE_SEQUENCE, token_types=len(names) == 3)
    args = tuple(torch.from_numpy(example[n]) for n in names)
    axes = {0: "batch", 1: "sequence"} if dynamic_sequence else {0: "batch"}
    dynamic = {n: dict(axes) for n in names}
    limits = {"sequence": MAX_POSITIONS}
    export_module(model, args, file, exporter, names, "logits", dynamic, max_sizes=limits)


def _export_encoder(file: Path) -> None:
    torch = need("torch")
    transformers = need("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=TEXT_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=MAX_POSITIONS, type_vocab_size=TYPE_VOCAB,
    )  # fmt: skip
    encoder = transformers.BertModel(config).eval()

    class Encoder(torch.nn.Module):  # keyword arguments in, a tuple of tensors out
        def __init__(self) -> None:
            super().__init__()
            self.bert = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state, out.pooler_output

    model = Encoder().eval()
    names = ("input_ids", "attention_mask", "token_type_ids")
    example = text_feed(_EXAMPLE_BATCH, EXAMPLE_SEQUENCE)
    args = tuple(torch.from_numpy(example[n]) for n in names)
    outputs = ("last_hidden_state", "pooler_output")
    axes = {
        **{n: {0: "batch", 1: "sequence"} for n in names},
        "last_hidden_state": {0: "batch", 1: "sequence"},
        "pooler_output": {0: "batch"},
    }
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            model, args, str(file), dynamo=False, input_names=list(names),
            output_names=list(outputs), dynamic_axes=axes,
        )  # fmt: skip


def _export_dlrm(file: Path, exporter: Exporter) -> None:
    torch = need("torch")
    torch.manual_seed(0)
    model = dlrm_module(DLRM_DENSE, DLRM_TABLES, DLRM_EMBEDDING_DIM, (32,), (32,))
    example = dlrm_feed(_EXAMPLE_BATCH)
    names = list(example)
    args = tuple(torch.from_numpy(example[n]) for n in names)
    export_module(model, args, file, exporter, names, "score", {n: {0: "batch"} for n in names})


def _export_cnn(file: Path, exporter: Exporter) -> None:
    torch = need("torch")
    torchvision = need("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=CNN_CLASSES)
    args = (torch.from_numpy(cnn_feed(_EXAMPLE_BATCH)["input"]),)
    export_module(model, args, file, exporter, ["input"], "logits", {"input": {0: "batch"}})


def dlrm_module(
    dense: int, tables: Sequence[int], dim: int, bottom: Sequence[int], top: Sequence[int]
) -> Any:
    """A DLRM-shaped `nn.Module`: forward(dense [N, dense], *cats [N, 1]) -> [N, 1] in (0, 1).

    Bottom MLP `dense -> *bottom -> dim`; one `dim` vector per table; pairwise dot products of
    the dense vector and the embeddings; top MLP `-> *top -> 1`, sigmoid.
    """
    torch = need("torch")
    nn: Any = torch.nn

    def mlp(widths: Sequence[int], last: Any) -> Any:
        layers: list[Any] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers += [nn.Linear(a, b), nn.ReLU() if i < len(widths) - 2 else last]
        return nn.Sequential(*layers)

    features = len(tables) + 1
    rows, cols = torch.triu_indices(features, features, offset=1)
    pairs = features * (features - 1) // 2

    class DLRM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bottom = mlp([dense, *bottom, dim], nn.ReLU())
            self.embeddings = nn.ModuleList(nn.Embedding(n, dim) for n in tables)
            self.top = mlp([dim + pairs, *top, 1], nn.Sigmoid())
            self.register_buffer("upper", rows * features + cols)  # i < j in the flat dots

        def forward(self, x: Any, *cats: Any) -> Any:
            x = self.bottom(x)  # [N, dim]
            vectors = [x.unsqueeze(1)] + [e(c) for e, c in zip(self.embeddings, cats, strict=True)]
            stacked = torch.cat(vectors, dim=1)  # [N, features, dim]
            dots = torch.bmm(stacked, stacked.transpose(1, 2)).flatten(1)
            return self.top(torch.cat([x, dots.index_select(1, self.upper)], dim=1))

    return DLRM()

"""Models the harness can run: built-in ones (built on first use) and user ONNX files."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.errors import ModelError
from harness.models.info import ModelInfo, TensorSpec
from harness.models.inspect import inspect_model
from harness.models.zoo import BUILDERS, BUILTIN_MODELS, VERSION

__all__ = ["BUILTIN_MODELS", "ModelInfo", "TensorSpec", "inspect_model", "resolve_model"]


def resolve_model(
    spec: str,
    cache_dir: Path,
    dims: Mapping[str, int] | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> ModelInfo:
    """A built-in model name (built once into `cache_dir`/models) or a path to an ONNX file,
    with its symbolic dims bound by `dims` / `shapes` (see inspect_model).

    A built-in name wins over a file of the same name in the working directory.
    """
    if spec in BUILDERS:
        path = _build_cached(spec, Path(cache_dir) / "models")
        return inspect_model(path, name=spec, dims=dims, shapes=shapes)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(
            f"model file not found: {spec} (built-in models: {', '.join(BUILTIN_MODELS)})"
        )
    return inspect_model(path, dims=dims, shapes=shapes)


def _build_cached(name: str, folder: Path) -> Path:
    """Build the model unless cached; atomic, so concurrent builders never see a partial file."""
    path = folder / f"{name}-v{VERSION}.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    # A unique name rather than mkstemp, whose 0600 mode would stick to the cached file.
    tmp = folder / f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex}.tmp.onnx"
    try:
        BUILDERS[name](tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

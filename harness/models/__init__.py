"""Models the harness can run: built-in ones (built on first use) and user ONNX files."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.errors import ModelError
from harness.models.info import ModelInfo, TensorSpec
from harness.models.inspect import inspect_model
from harness.models.zoo import BUILDERS, BUILTIN_MODELS, VERSION

__all__ = ["BUILTIN_MODELS", "ModelInfo", "TensorSpec", "inspect_model", "resolve_model"]

log = logging.getLogger(__name__)


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
        folder = Path(cache_dir) / "models"
        path = _build_cached(spec, folder)
        try:
            info = inspect_model(path, name=spec, dims=dims, shapes=shapes)
            recorded = _hash_path(path).read_text().strip()
        except (ModelError, OSError) as exc:  # unreadable, truncated, or no recorded hash
            reason = "no hash was recorded for it" if isinstance(exc, OSError) else str(exc)
        else:
            if info.sha256 == recorded:
                return info
            reason = f"its sha256 {info.sha256[:12]}... is not the {recorded[:12]}... recorded"
        log.warning("model %s: cached %s is damaged (%s); rebuilding it", spec, path, reason)
        path.unlink(missing_ok=True)
        return inspect_model(_build_cached(spec, folder), name=spec, dims=dims, shapes=shapes)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(
            f"model file not found: {spec} (built-in models: {', '.join(BUILTIN_MODELS)})"
        )
    return inspect_model(path, dims=dims, shapes=shapes)


def _build_cached(name: str, folder: Path) -> Path:
    """Build the model unless cached; atomic, so concurrent builders never see a partial file.

    Its sha256 is recorded beside it first (`<file>.sha256`), so `resolve_model` can tell a
    cached file that was later truncated or damaged and build it anew."""
    path = folder / f"{name}-v{VERSION}.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    # Unique names rather than mkstemp, whose 0600 mode would stick to the cached file.
    unique = f"{os.getpid()}.{uuid.uuid4().hex}"
    tmp = folder / f".{path.stem}.{unique}.tmp.onnx"
    tmp_hash = folder / f".{path.stem}.{unique}.tmp.sha256"
    try:
        BUILDERS[name](tmp)
        tmp_hash.write_text(_file_sha256(tmp) + "\n")
        os.replace(tmp_hash, _hash_path(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_hash.unlink(missing_ok=True)
    return path


def _hash_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

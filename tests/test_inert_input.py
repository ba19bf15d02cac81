"""Untrusted input stays inert: a data file holding a pickle is refused, not
unpickled; no module of harness/ or tuner/ unpickles, torch.loads, or hands a string to a
shell; an exported command quotes what the database says and lets no line break out of a
comment."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest

from harness.dataset import load_samples_from
from harness.errors import ConfigError
from harness.models.info import ModelInfo, TensorSpec

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "tuner")

MODEL = ModelInfo(
    name="mlp",
    path=Path("mlp.onnx"),
    sha256="0" * 64,
    inputs=(TensorSpec("input", "float32", (4,)),),
    outputs=(TensorSpec("logits", "float32", (2,)),),
)


class _Trap:
    """Unpickling this runs code: it writes the file named at pickling time."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _object_array(marker: Path) -> np.ndarray:
    array = np.empty(2, dtype=object)
    array[0], array[1] = _Trap(marker), _Trap(marker)
    return array


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_data_file_holding_a_pickle_is_refused_in_one_line(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "code-ran"
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / f"samples{suffix}"
    if suffix == ".npy":
        np.save(path, _object_array(marker), allow_pickle=True)
    else:
        np.savez(path, input=_object_array(marker))
    with pytest.raises(ConfigError) as info:
        load_samples_from(path, MODEL)
    message = str(info.value)
    assert str(path) in message and "pickle" in message.lower(), message
    assert "\n" not in message
    assert not marker.exists()  # nothing was unpickled


# ----------------------------------------------------------------- a check over the source

#: Calls that run code from data or hand a string to a shell, by their dotted name.
FORBIDDEN_CALLS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "cPickle.load",
    "cPickle.loads",
    "dill.load",
    "dill.loads",
    "joblib.load",
    "torch.load",
    "torch.jit.load",
    "marshal.loads",
    "shelve.open",
    "os.system",
    "os.popen",
    "eval",
    "exec",
}
NUMPY_LOADS = {"np.load", "numpy.load"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _violations(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            modules.append(getattr(node, "module", None) or "")
            if any(m.split(".")[0] in ("pickle", "cPickle", "dill", "shelve") for m in modules):
                found.append(f"{name}:{node.lineno}: imports a pickle module")
        if not isinstance(node, ast.Call):
            continue
        called = _dotted(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        if called in FORBIDDEN_CALLS:
            found.append(f"{name}:{node.lineno}: calls {called}")
        shell = keywords.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            found.append(f"{name}:{node.lineno}: passes shell= to {called or 'a call'}")
        if called in NUMPY_LOADS:
            pickles = keywords.get("allow_pickle")
            if not (isinstance(pickles, ast.Constant) and pickles.value is False):
                found.append(f"{name}:{node.lineno}: {called} without allow_pickle=False")
    return found


def test_the_source_check_finds_what_it_looks_for() -> None:
    bad = (
        "import pickle\nimport subprocess, os, numpy as np, torch\n"
        "pickle.loads(b'')\ntorch.load('m.pt')\nos.system('ls')\n"
        "subprocess.run('ls', shell=True)\nnp.load('a.npy')\nnp.load('a.npy', allow_pickle=True)\n"
    )
    assert len(_violations(bad, "bad.py")) == 7
    good = "import numpy as np, subprocess\nnp.load('a.npy', allow_pickle=False)\n"
    good += "subprocess.run(['ls', name])\n"
    assert _violations(good, "good.py") == []


def test_no_module_unpickles_or_uses_a_shell() -> None:
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert len(files) > 20
    found = [
        v for path in files for v in _violations(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert found == []

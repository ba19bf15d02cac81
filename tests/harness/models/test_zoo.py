"""Built-in models: they run, have the expected size, are deterministic; resolve_model caches."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from harness.errors import ModelError
from harness.models import BUILTIN_MODELS, resolve_model, zoo

EXPECTED = {  # name: (sample shape, classes, parameter count, tolerance)
    "resnet50": ((3, 224, 224), 1000, 25.5e6, 0.02),
    "mobilenet": ((3, 224, 224), 1000, 4.2e6, 0.02),
    "tiny": ((16,), 10, 874, 0.0),
}


NAMES = [pytest.param("resnet50", marks=pytest.mark.slow), "mobilenet", "tiny"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Path of a built-in model, built on first use and once for this module (ResNet: seconds)."""
    folder = tmp_path_factory.mktemp("zoo")
    paths: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in paths:
            zoo.BUILDERS[name](folder / f"{name}.onnx")
            paths[name] = folder / f"{name}.onnx"
        return paths[name]

    return get


@pytest.fixture(scope="module")
def session(built: Callable[[str], Path]) -> Callable[[str], ort.InferenceSession]:
    """An ONNX Runtime CPU session of a built-in model, created once per model."""
    sessions: dict[str, ort.InferenceSession] = {}

    def get(name: str) -> ort.InferenceSession:
        if name not in sessions:
            sessions[name] = ort.InferenceSession(
                str(built(name)), providers=["CPUExecutionProvider"]
            )
        return sessions[name]

    return get


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _random_input(name: str, batch: int, seed: int = 0) -> np.ndarray:
    shape = EXPECTED[name][0]
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


def test_registry_lists_the_three_builtins() -> None:
    assert set(BUILTIN_MODELS) == set(EXPECTED) == set(zoo.BUILDERS)
    assert isinstance(zoo.VERSION, int)


@pytest.mark.parametrize("name", NAMES)
def test_graph_has_dynamic_batch_and_named_io(name: str, built: Callable[[str], Path]) -> None:
    model = onnx.load(str(built(name)))
    onnx.checker.check_model(model)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    in_dims = inp.type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch"
    assert tuple(d.dim_value for d in in_dims[1:]) == EXPECTED[name][0]
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count(name: str, built: Callable[[str], Path]) -> None:
    model = onnx.load(str(built(name)))
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    _, _, expected, tolerance = EXPECTED[name]
    assert abs(params - expected) <= tolerance * expected, params


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 3])
def test_runs_in_onnxruntime(
    name: str, batch: int, session: Callable[[str], ort.InferenceSession]
) -> None:
    (logits,) = session(name).run(None, {"input": _random_input(name, batch)})
    assert logits.shape == (batch, EXPECTED[name][1])
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_logits_spread_and_depend_on_the_input(
    name: str, session: Callable[[str], ort.InferenceSession]
) -> None:
    """A flat or input-independent output would make fp32-vs-int8 top-1 checks meaningless."""
    (logits,) = session(name).run(None, {"input": _random_input(name, 8, seed=1)})
    assert 1.0 < float(logits.std(axis=1).mean()) < 20.0
    assert len(set(logits.argmax(axis=1).tolist())) >= 4
    between_inputs = float(logits.var(axis=0).mean())
    assert between_inputs > 0.5 * float(logits.var())


def test_conv_weights_are_exact_per_channel_int8(built: Callable[[str], Path]) -> None:
    """Each weight row is an integer multiple of max|row| / 127, so int8 weights are lossless."""
    model = onnx.load(str(built("mobilenet")))
    weights = [
        numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(".weight")
    ]
    assert len(weights) == 28  # 27 convolutions and the classifier
    for w in weights:
        rows = w.reshape(w.shape[0], -1).astype(np.float64)
        steps = rows / (np.abs(rows).max(axis=1, keepdims=True) / 127)
        assert np.abs(steps - np.round(steps)).max() < 1e-3


@pytest.mark.parametrize("name", ["tiny", "mobilenet"])
def test_build_is_deterministic(name: str, built: Callable[[str], Path], tmp_path: Path) -> None:
    again = tmp_path / "again.onnx"
    zoo.BUILDERS[name](again)
    assert _sha(again) == _sha(built(name))


def test_resolve_builtin_builds_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def spy(path: Path) -> None:
        calls.append(path)
        zoo.build_tiny(path)

    monkeypatch.setitem(zoo.BUILDERS, "tiny", spy)
    first = resolve_model("tiny", tmp_path)
    second = resolve_model("tiny", tmp_path)
    expected_path = (tmp_path / "models" / f"tiny-v{zoo.VERSION}.onnx").resolve()
    assert first == second
    assert len(calls) == 1
    assert first.name == "tiny"
    assert first.path == expected_path
    assert [t.sample_shape for t in first.inputs] == [(16,)]
    assert [t.sample_shape for t in first.outputs] == [(10,)]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        expected_path.name,
        expected_path.name + ".sha256",  # what resolve_model checks the cached file against
    ]


def test_resolve_concurrent_builds_leave_one_complete_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builders racing both write temp files; os.replace makes either result whole."""
    barrier = threading.Barrier(2)

    def slow_build(path: Path) -> None:
        barrier.wait(timeout=30)  # both threads are past the cache check before either writes
        zoo.build_tiny(path)

    monkeypatch.setitem(zoo.BUILDERS, "tiny", slow_build)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_model("tiny", tmp_path).sha256))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2
    assert len(set(results)) == 1
    name = f"tiny-v{zoo.VERSION}.onnx"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [name, f"{name}.sha256"]


def test_resolve_failed_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: Path) -> None:
        path.write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setitem(zoo.BUILDERS, "tiny", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model("tiny", tmp_path)
    assert list((tmp_path / "models").iterdir()) == []


def test_resolve_path_uses_the_file(tmp_path: Path) -> None:
    path = tmp_path / "my-model.onnx"
    zoo.build_tiny(path)
    info = resolve_model(str(path), tmp_path / "cache")
    assert info.name == "my-model"
    assert info.path == path.resolve()
    assert info.sha256 == _sha(path)
    assert not (tmp_path / "cache").exists()


def test_resolve_unknown_spec_names_the_file_and_the_builtins(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        resolve_model("resnet51", tmp_path)
    message = str(err.value)
    assert "resnet51" in message
    assert "not found" in message
    assert all(name in message for name in BUILTIN_MODELS)
    assert "\n" not in message

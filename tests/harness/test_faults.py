"""Faults in the harness's caches, for real: precision variants cut short by a SIGKILL of the
process building them or damaged on disk, and a truncated built-in model. Each is detected
(hash or ONNX load), rebuilt with one warning, and the rebuilt file runs in ONNX Runtime."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from harness.models import resolve_model
from harness.models.info import ModelInfo
from harness.models.inspect import inspect_model, model_sha256
from harness.precision import agreement, make_variant
from tests.conftest import make_mlp

ROOT = Path(__file__).resolve().parents[2]
FEATURES = 16


def _external_mlp(folder: Path) -> ModelInfo:
    """make_mlp's model with its weights in `mlp.onnx.data`, so a variant is two files."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = make_mlp(folder / "plain.onnx", features=FEATURES)
    path = folder / "mlp.onnx"
    onnx.save_model(
        onnx.load(str(plain)),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="mlp.onnx.data",
        size_threshold=0,
    )
    return inspect_model(path)


def _inputs(count: int = 32, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, FEATURES)).astype(np.float32)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


def _assert_works(model: ModelInfo, variant_path: Path) -> None:
    """The variant loads in ONNX Runtime and agrees with the source model."""
    x = _inputs()
    score = agreement([_run(model.path, x)], [_run(variant_path, x)], metric="cosine")
    assert score.top1 >= 0.9, score
    assert score.value >= 0.99, score


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def mlp(tmp_path: Path) -> ModelInfo:
    return _external_mlp(tmp_path / "model")


# --------------------------------------------------------------- damaged variants on disk


@pytest.mark.parametrize("damage", ["truncate-onnx", "truncate-data", "flip-data", "no-hash"])
def test_damaged_variant_is_rebuilt_with_one_warning(
    mlp: ModelInfo, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    cache = tmp_path / "cache"
    first = make_variant(mlp, "fp16", {}, cache)
    assert not first.cached
    onnx_file = first.path
    data = onnx_file.with_name(onnx_file.name + ".data")
    recorded = onnx_file.with_name(onnx_file.name + ".sha256")
    assert data.is_file() and recorded.read_text().strip() == first.sha256
    if damage == "truncate-onnx":
        onnx_file.write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 2])
    elif damage == "truncate-data":
        data.write_bytes(data.read_bytes()[:-64])
    elif damage == "flip-data":  # same size, other bytes: only the hash can tell
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    else:
        recorded.unlink()

    with caplog.at_level(logging.WARNING, logger="harness"):
        again = make_variant(mlp, "fp16", {}, cache)
    lines = _warnings(caplog)
    assert len(lines) == 1, lines
    assert "damaged" in lines[0] and str(onnx_file) in lines[0] and "rebuilding" in lines[0]
    assert "\n" not in lines[0]
    assert not again.cached  # rebuilt, not used as it was
    assert again.path == onnx_file and again.sha256 == first.sha256
    assert model_sha256(again.path)[0] == recorded.read_text().strip()
    _assert_works(mlp, again.path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harness"):
        assert make_variant(mlp, "fp16", {}, cache).cached  # and now trusted again
    assert _warnings(caplog) == []


# ------------------------------------------------------------------- a builder killed


_BUILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path

    from harness.models.inspect import inspect_model
    from harness.precision import make_variant

    model_path, cache, precision = sys.argv[1], sys.argv[2], sys.argv[3]
    kill_at, kill_call = int(sys.argv[4]), int(sys.argv[5])
    real_replace, moves, calls = os.replace, [], [0]

    def replace(src, dst):  # a real SIGKILL of this process just before the kill_at-th move
        moves.append(dst)
        if len(moves) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    def profile(frame, event, arg):  # ... or at the kill_call-th Python call of the build
        if event == "call":
            calls[0] += 1
            if calls[0] == kill_call:
                os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    rng = __import__("numpy").random.default_rng(0)
    calibration = {"input": rng.standard_normal((32, 16)).astype("float32")}
    model = inspect_model(Path(model_path))
    sys.setprofile(profile)
    make_variant(model, precision, calibration, Path(cache))
    sys.setprofile(None)
    print("built after", calls[0], "calls")
    """
)


def _build_in_child(
    model: ModelInfo, cache: Path, precision: str, kill_at: int = 0, kill_call: int = 0
) -> subprocess.CompletedProcess[str]:
    """A real build in a process of its own, killed (SIGKILL, by itself) just before its
    kill_at-th move or at its kill_call-th Python function call (0: never)."""
    argv = [str(model.path), str(cache), precision, str(kill_at), str(kill_call)]
    return subprocess.run(
        [sys.executable, "-c", _BUILD, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "kill_at,left",
    [
        (1, "a build folder only"),
        (2, "the hash, no weights, no .onnx"),
        (3, "the hash and the weights, no .onnx"),
    ],
)
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_a_builder_killed_at_each_move_leaves_nothing_used_wrongly(
    mlp: ModelInfo,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    kill_at: int,
    left: str,
    precision: str,
) -> None:
    """A variant is put in place by three atomic moves (hash, weights, .onnx); a SIGKILL
    before any of them leaves files that the next build replaces, never uses."""
    cache = tmp_path / "cache"
    assert _build_in_child(mlp, cache, precision, kill_at).returncode == -signal.SIGKILL, left
    folder = cache / "variants"
    assert not list(folder.glob(f"{precision}-*.onnx")), left  # the .onnx is moved last
    assert list(folder.glob(".build-*")), "the killed builder's folder is still there"

    calibration = {"input": np.random.default_rng(0).standard_normal((32, 16)).astype("float32")}
    with caplog.at_level(logging.WARNING, logger="harness"):
        variant = make_variant(mlp, precision, calibration, cache)
    assert not variant.cached
    assert not [w for w in _warnings(caplog) if "damaged" in w]
    assert model_sha256(variant.path)[0] == variant.sha256
    clean = make_variant(mlp, precision, calibration, tmp_path / "clean")
    assert variant.sha256 == clean.sha256  # the same files an uninterrupted build writes
    _assert_works(mlp, variant.path)
    assert not list(folder.glob(".build-*")), "the dead builder's folder was not removed"


@pytest.fixture(scope="module")
def int8_build_calls(tmp_path_factory: pytest.TempPathFactory) -> int:
    """Python function calls a whole int8 build of make_mlp's model makes (it varies by a few
    hundredths of a percent from one process to the next)."""
    folder = tmp_path_factory.mktemp("count")
    model = inspect_model(make_mlp(folder / "mlp.onnx", features=FEATURES))
    built = _build_in_child(model, folder / "cache", "int8")
    assert built.returncode == 0, built.stderr
    calls = int(built.stdout.split()[-2])
    assert calls > 10_000, built.stdout  # quantization is Python: plenty of moments
    return calls


def _kill_when_the_build_folder_appears(model: ModelInfo, cache: Path) -> int:
    """SIGKILL from outside as soon as the build's temporary folder appears; the exit code."""
    argv = [str(model.path), str(cache), "int8", "0", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _BUILD, *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while proc.poll() is None and not list((cache / "variants").glob(".build-*")):
            time.sleep(0.002)
        proc.kill()  # SIGKILL, unless it already finished (then its code says so)
    finally:
        proc.wait(timeout=60)
    return proc.returncode


@pytest.mark.parametrize("moment", ["folder", 0.02, 0.2, 0.4, 0.6, 0.8, 0.95])
def test_a_builder_killed_whenever_leaves_nothing_used_wrongly(
    tmp_path: Path, int8_build_calls: int, moment: str | float
) -> None:
    """SIGKILL of a real int8 build at moments spread over it: from outside as soon as its
    build folder appears, and at a share of the way through its Python calls (the moves into
    place, its last steps, have a test of their own above). The builder died of the SIGKILL
    each time; the next build replaces what it left, and uses none of it wrongly."""
    model = inspect_model(make_mlp(tmp_path / "mlp.onnx", features=FEATURES))
    cache = tmp_path / "cache"
    if moment == "folder":
        code = _kill_when_the_build_folder_appears(model, cache)
    else:
        assert isinstance(moment, float)
        code = _build_in_child(model, cache, "int8", kill_call=int(moment * int8_build_calls))
        code = code.returncode
    assert code == -signal.SIGKILL, f"the builder was not killed at {moment} (exit {code})"
    assert not list((cache / "variants").glob("int8-*.onnx"))  # nothing in place yet
    calibration = {"input": np.random.default_rng(0).standard_normal((32, 16)).astype("float32")}
    variant = make_variant(model, "int8", calibration, cache)
    assert not variant.cached
    assert model_sha256(variant.path)[0] == variant.sha256
    clean = make_variant(model, "int8", calibration, tmp_path / "clean")
    assert variant.sha256 == clean.sha256  # the same files an uninterrupted build writes
    _assert_works(model, variant.path)
    assert make_variant(model, "int8", calibration, cache).cached


# ------------------------------------------------------------------- the model cache


def test_truncated_builtin_model_is_rebuilt_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    first = resolve_model("tiny", cache)
    good = first.path.read_bytes()
    first.path.write_bytes(good[: len(good) // 3])
    with caplog.at_level(logging.WARNING, logger="harness"):
        again = resolve_model("tiny", cache)
    lines = _warnings(caplog)
    assert len(lines) == 1 and "damaged" in lines[0] and str(first.path) in lines[0], lines
    assert again.path == first.path and again.sha256 == first.sha256
    assert again.path.read_bytes() == good
    out = _run(again.path, _inputs(4))
    assert out.shape == (4, 10)


# ----------------------------------------------------------- the TensorRT engine cache
# TensorRT is not installed here: load_engine (the GPU-free part of TensorRTBackend.load) runs
# on real files with a stand-in for IRuntime.deserialize_cuda_engine, which returns None for a
# plan it cannot read. Nothing here ran on a GPU.

GOOD_PLAN = b"plan:" + bytes(range(256)) * 8


class _FakeRuntime:
    """deserialize_cuda_engine's contract: an engine for a whole plan, None for anything else
    (or, as `raising`, the error some TensorRT builds raise instead)."""

    def __init__(self, raising: BaseException | None = None) -> None:
        self.raising = raising
        self.builds = 0

    def build(self) -> bytes:
        self.builds += 1
        return GOOD_PLAN

    def deserialize(self, plan: bytes) -> object | None:
        if plan == GOOD_PLAN:
            return {"engine": len(plan)}
        if self.raising is not None:
            raise self.raising
        return None


@pytest.mark.parametrize(
    "raising", [None, RuntimeError("std::exception: Serialization assertion failed")]
)
def test_bad_engine_file_is_deleted_and_rebuilt_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, raising: BaseException | None
) -> None:
    from harness.backends.trt_engine import load_engine

    path = tmp_path / "engines" / "fp16-b8-tesla-t4-sm75-trt10.13-0123456789abcdef.plan"
    path.parent.mkdir()
    path.write_bytes(GOOD_PLAN[:100])  # truncated
    runtime = _FakeRuntime(raising)
    with caplog.at_level(logging.WARNING, logger="harness"):
        engine, cached, _ = load_engine(path, runtime.build, runtime.deserialize)
    lines = _warnings(caplog)
    assert len(lines) == 1 and str(path) in lines[0] and "rebuilding" in lines[0], lines
    assert engine == {"engine": len(GOOD_PLAN)} and not cached and runtime.builds == 1
    assert path.read_bytes() == GOOD_PLAN
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harness"):
        assert load_engine(path, runtime.build, runtime.deserialize)[1]  # cached now
    assert runtime.builds == 1 and _warnings(caplog) == []


def test_out_of_memory_while_deserializing_keeps_the_engine_file(tmp_path: Path) -> None:
    from harness.backends.trt_engine import load_engine
    from harness.errors import OutOfMemory

    path = tmp_path / "engine.plan"
    path.write_bytes(b"not read")
    runtime = _FakeRuntime(MemoryError("cuMemAlloc failed: out of memory"))
    with pytest.raises(MemoryError):
        load_engine(path, runtime.build, runtime.deserialize)
    runtime.raising = OutOfMemory("out of memory: tensorrt: cannot deserialize the engine")
    with pytest.raises(OutOfMemory):
        load_engine(path, runtime.build, runtime.deserialize)
    assert path.read_bytes() == b"not read" and runtime.builds == 0


# --------------------------------------------------------- a full disk under LoadGen's logs


@pytest.mark.parametrize(
    "leave_bytes,when", [(0, "full before the run"), (12 * 1024, "fills during the run")]
)
def test_a_full_disk_under_loadgens_logs_is_a_one_line_scenario_error(
    tmp_path: Path, leave_bytes: int, when: str
) -> None:
    """A real tmpfs of 64 KiB, filled up (LoadGen writes ~33 KB of logs per Offline run)."""
    from harness.backends import BackendOptions
    from harness.backends.null import NullBackend
    from harness.config import ScenarioSpec
    from harness.dataset import SampleSet
    from harness.errors import ScenarioError
    from harness.scenarios import offline
    from harness.sut import BatchingSUT
    from tests.tmpfs import fill, tmpfs

    backend = NullBackend(
        Path("unused.onnx"), BackendOptions(max_batch=4, extra={"latency_ms": 1})
    )
    backend.load()
    samples = SampleSet({"input": np.zeros((16, 4), np.float32)})
    with tmpfs(tmp_path / "logs", 64) as logs:
        fill(logs, leave_bytes)
        with BatchingSUT(backend, samples, 4, 1, 0) as sut, pytest.raises(ScenarioError) as info:
            offline.run(sut, ScenarioSpec(duration_s=0.2), estimate_sps=1000, out_dir=logs)
    message = str(info.value)
    assert message == (
        f"LoadGen could not write its logs to {logs / 'offline-1'}: No space left on device"
    ), when

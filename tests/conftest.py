"""Shared fixtures: a cache folder per session and tiny ONNX models built in the tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.nvidia import gpu_missing
from tests.pg import PostgresServer, find_bin_dir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests skip where the driver (NVML, else nvidia-smi) lists no GPU; where one is
    there, each skips on its own for what else it needs (TensorRT, torch with CUDA, NVML)."""
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked or (reason := gpu_missing()) is None:
        return
    for item in marked:
        # First of the item's skipif marks, so the missing GPU is the reason it gives.
        item.add_marker(pytest.mark.skipif(True, reason=reason), append=False)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model/variant cache for the whole test session (built-in models build once)."""
    return tmp_path_factory.mktemp("cache")


def make_mlp(path: Path, features: int = 16, classes: int = 10, seed: int = 0) -> Path:
    """A two-layer MLP, dynamic batch: input [N, features] -> logits [N, classes]."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((features, 32)) / np.sqrt(features)).astype(np.float32)
    w2 = rng.standard_normal((32, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["logits"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def mlp_model(tmp_path: Path) -> Path:
    return make_mlp(tmp_path / "mlp.onnx")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for the session (skipped where PostgreSQL is absent;
    .ci/run installs it). `create_database()` gives a test its own database."""
    pytest.importorskip("psycopg", reason="needs psycopg (pip install 'batch-tuner[postgres]')")
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed: no initdb/pg_ctl on PATH nor in "
            "/usr/lib/postgresql/*/bin (.ci/run installs the Debian package)"
        )
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """`postgresql+psycopg://...` URL of a database on the session's server."""
    return postgres_server.create_database()

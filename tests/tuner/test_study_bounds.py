"""The shipped Server study files: GPU ones keep MLPerf's latency bounds; CPU ones use bounds a
small CPU meets, loosened from MLPerf's and saying so (the machine class and MLPerf's bound)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner import config

STUDIES = Path(__file__).parents[2] / "studies"
#: MLPerf Inference v0.5 Server bounds (ms, percentile), as DESIGN.md lists them.
MLPERF = {"resnet50": (15.0, 99.0), "mobilenet": (10.0, 99.0)}
SERVER_FILES = [p for p in sorted(STUDIES.glob("*.toml")) if config.build(p).scenario == "server"]


def test_there_are_cpu_and_gpu_server_study_files() -> None:
    devices = {config.build(p).device.split(":")[0] for p in SERVER_FILES}
    assert devices == {"cpu", "cuda"}


@pytest.mark.parametrize("path", SERVER_FILES, ids=[p.stem for p in SERVER_FILES])
def test_server_study_bounds(path: Path) -> None:
    cfg = config.build(path)
    mlperf_ms, mlperf_pct = MLPERF[cfg.model]
    assert cfg.percentile == mlperf_pct
    if cfg.device.startswith("cuda"):
        assert cfg.latency_ms == mlperf_ms
        return
    head = path.read_text().split("[study]")[0]
    assert cfg.latency_ms > mlperf_ms
    assert "2 cores" in head and "no VNNI needed" in head
    assert f"MLPerf's bound is {mlperf_ms:g} ms" in head

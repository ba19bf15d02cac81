"""A warm trial worker (tuner.child.WarmWorker): one process measures consecutive
configurations and keeps what it loaded; isolation holds as with a child per trial: a crash,
an out-of-memory, an error or a hang fails only that measurement (with its own timeout) and the
next one gets a fresh process. Null backend, real LoadGen, real processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.config import RunConfig, ScenarioSpec
from tests.procs import alive
from tuner.child import WarmWorker


def null_run(cache_dir: Path, **extra: Any) -> RunConfig:
    options = {"latency_ms": 0.5, "per_sample_ms": 0.1, **extra}
    return RunConfig(model="tiny", backend="null", cache_dir=cache_dir, backend_options=options)


def spec(tmp_path: Path, name: str) -> ScenarioSpec:
    return ScenarioSpec(duration_s=0.2, out_dir=tmp_path / name)


def test_one_process_measures_consecutive_configurations(tmp_path: Path, cache_dir: Path) -> None:
    with WarmWorker() as worker:
        first = worker(null_run(cache_dir), spec(tmp_path, "a"), 60)
        pid = worker._process.pid if worker._process else None
        second = worker(null_run(cache_dir), spec(tmp_path, "b"), 60)
        assert worker._process is not None and worker._process.pid == pid
        assert first.result is not None and second.result is not None
        assert not first.result["backend_reused"] and second.result["backend_reused"]
        assert worker.started == 1
    assert pid is not None and not alive(pid)  # closed with the context


def test_after_a_crash_the_next_measurement_gets_a_fresh_process(
    tmp_path: Path, cache_dir: Path
) -> None:
    with WarmWorker() as worker:
        assert worker(null_run(cache_dir), spec(tmp_path, "a"), 60).result is not None
        crashed = worker(null_run(cache_dir, crash_at_batch=1), spec(tmp_path, "b"), 60)
        assert crashed.result is None and crashed.failure == "crash"
        assert "SIGABRT" in crashed.reason
        after = worker(null_run(cache_dir), spec(tmp_path, "c"), 60)
        assert after.result is not None and not after.result["backend_reused"]
        assert worker.started == 2


def test_out_of_memory_and_errors_fail_one_measurement_each(
    tmp_path: Path, cache_dir: Path
) -> None:
    with WarmWorker() as worker:
        oom = worker(null_run(cache_dir, oom_batch=0), spec(tmp_path, "a"), 60)
        assert oom.failure == "out of memory" and "simulated limit" in oom.reason
        error = worker(null_run(cache_dir, fail_after_batches=2), spec(tmp_path, "b"), 60)
        assert error.failure == "error" and "simulated failure" in error.reason
        ok = worker(null_run(cache_dir), spec(tmp_path, "c"), 60)
        assert ok.result is not None
        assert worker.started == 3  # a fresh process after each failure


def test_a_hang_times_out_and_leaves_no_process(tmp_path: Path, cache_dir: Path) -> None:
    with WarmWorker() as worker:
        assert worker(null_run(cache_dir), spec(tmp_path, "a"), 60).result is not None
        pid = worker._process.pid if worker._process else None
        hung = worker(null_run(cache_dir, hang_at_batch=1), spec(tmp_path, "b"), 3)
        assert hung.failure == "timeout" and hung.reason == "timeout after 3 s"
        assert pid is not None and not alive(pid)
        assert worker(null_run(cache_dir), spec(tmp_path, "c"), 60).result is not None


def test_a_worker_killed_between_measurements_is_replaced(tmp_path: Path, cache_dir: Path) -> None:
    import os
    import signal

    with WarmWorker() as worker:
        assert worker(null_run(cache_dir), spec(tmp_path, "a"), 60).result is not None
        assert worker._process is not None and worker._process.pid is not None
        os.kill(worker._process.pid, signal.SIGKILL)
        worker._process.join(10)
        again = worker(null_run(cache_dir), spec(tmp_path, "b"), 60)
        assert again.result is not None and worker.started == 2

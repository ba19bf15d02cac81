"""Several devices as one LoadGen system under test (harness.system), with the simulated
backend on virtual devices and the real LoadGen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.config import RunConfig, ScenarioSpec
from harness.dataset import SampleSet
from harness.errors import ConfigError
from harness.system import SystemSUT, measure_system

DEVICES = ["cuda:0", "cuda:1", "cuda:2"]


class FakeSUT:
    """Records what the system SUT routes to it; completes nothing by itself."""

    def __init__(self, batch_size: int = 4) -> None:
        self.batch_size = batch_size
        self.samples = SampleSet({"input": np.zeros((8, 1), np.float32)})
        self.error = None
        self.samples_done = 0
        self.ids: list[int] = []

    def issue(self, ids: list[int], indices: list[int]) -> None:
        assert len(ids) == len(indices)
        self.ids.extend(ids)


def system_of(*suts: FakeSUT, weights: list[float]) -> SystemSUT:
    return SystemSUT([s for s in suts], weights)  # type: ignore[misc]


def test_an_offline_query_is_split_in_batches_in_proportion_to_speed() -> None:
    suts = [FakeSUT(), FakeSUT(), FakeSUT()]
    system = system_of(*suts, weights=[1000.0, 2000.0, 1000.0])
    ids = list(range(4000))
    system.issue(ids, [i % 8 for i in ids])
    routed = [s.ids for s in suts]
    assert sorted(i for part in routed for i in part) == ids  # each sample exactly once
    assert [len(p) for p in routed] == system.routed == [1000, 2000, 1000]
    assert all(len(p) % 4 == 0 for p in routed)  # whole batches


def test_single_queries_go_to_the_least_loaded_device() -> None:
    suts = [FakeSUT(), FakeSUT(), FakeSUT()]
    system = system_of(*suts, weights=[1.0, 1.0, 1.0])
    for i in range(6):  # nothing completes: round robin by load
        system.issue([i], [0])
    assert [s.ids for s in suts] == [[0, 3], [1, 4], [2, 5]]
    suts[1].samples_done = 2  # device 1 finished its two: it is the least loaded
    system.issue([6], [0])
    system.issue([7], [0])
    assert suts[1].ids[-2:] == [6, 7]


def test_a_device_without_a_warmup_rate_still_gets_work() -> None:
    suts = [FakeSUT(), FakeSUT()]
    system = system_of(*suts, weights=[0.0, 500.0])
    system.issue(list(range(80)), [0] * 80)
    assert min(len(s.ids) for s in suts) > 0


def check_spread(result: dict[str, Any]) -> None:
    """An Offline system result's samples went to its devices in proportion to the warm-up
    rates it measured (its routing weights): the least-loaded routing of batch-size chunks
    leaves a device off its proportion by at most a chunk per device in each run, and as much
    again for batches whose completion was not yet counted when a run began. Counts against
    the measured weights: true however fast this machine is."""
    devices, runs = result["devices"], result["loadgen_runs"]
    issued = sum(r["sample_count"] for r in runs)
    rates = [d["warmup_samples_per_second"] for d in devices]
    assert all(rate > 0 for rate in rates), rates
    slack = 2 * result["batch_size"] * len(devices) * len(runs)
    for device, rate in zip(devices, rates, strict=True):
        assert device["samples"] > 0, device
        assert abs(device["samples"] - issued * rate / sum(rates)) <= slack, (device, rates)
        assert device["share"] == device["samples"] / issued


def run_config(cache_dir: Path, **extra: object) -> RunConfig:
    return RunConfig(
        model="tiny",
        backend="null",
        batch_size=4,
        streams=1,
        cache_dir=cache_dir,
        backend_options={"latency_ms": 1.0, "per_sample_ms": 0.25, **extra},
    )


def test_offline_on_three_devices_completes_every_sample_once_and_spreads_the_work(
    tmp_path: Path, cache_dir: Path
) -> None:
    run = run_config(cache_dir, device_name="Tesla T4")
    result = measure_system(run, ScenarioSpec(duration_s=0.5, out_dir=tmp_path), DEVICES)
    assert result.valid and result.simulated and result.scenario == "offline"
    issued = sum(r["sample_count"] for r in result.loadgen_runs)
    assert sum(d["samples"] for d in result.devices) == issued  # every sample exactly once
    assert [d["device"] for d in result.devices] == DEVICES
    assert [d["name"] for d in result.devices] == [f"simulated Tesla T4 ({d})" for d in DEVICES]
    check_spread(result.to_dict())
    assert sum(d["batches"] for d in result.devices) >= issued / 4  # batches of 4 at most
    assert result.samples_per_second is not None and result.samples_per_second > 0
    assert result.gpu is None  # simulated: no NVML
    assert (tmp_path / "offline-1" / "mlperf_log_summary.txt").exists()


def test_server_at_a_fixed_qps_routes_queries_to_every_device(
    tmp_path: Path, cache_dir: Path
) -> None:
    spec = ScenarioSpec(
        scenario="server",
        target_qps=600.0,
        duration_s=0.5,
        min_queries=300,
        latency_ms=50.0,
        out_dir=tmp_path,
    )
    result = measure_system(run_config(cache_dir), spec, DEVICES)
    assert result.qps is not None and result.qps > 0  # VALID or not: LoadGen's call
    (run,) = result.loadgen_runs
    assert sum(d["samples"] for d in result.devices) == run["sample_count"]
    assert all(d["samples"] > 0 for d in result.devices)
    assert result.latency_ms.get("p99") is not None


def test_server_max_qps_search_uses_the_system_sut(tmp_path: Path, cache_dir: Path) -> None:
    spec = ScenarioSpec(
        scenario="server",
        find_max_qps=True,
        duration_s=0.3,
        min_queries=200,
        latency_ms=40.0,
        qps_tolerance=0.2,
        max_search_runs=4,
        out_dir=tmp_path,
    )
    result = measure_system(run_config(cache_dir), spec, DEVICES[:2])
    assert result.loadgen_runs[0]["scenario"] == "Offline"  # the upper bound
    assert any(r["scenario"] == "Server" for r in result.loadgen_runs)
    assert result.valid == (result.score > 0)


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        (["cuda:0", "cuda:0"], "distinct devices"),
        ([], "distinct devices"),
        (["tpu:0"], "cpu, cuda or cuda:N"),
    ],
)
def test_bad_device_lists_are_config_errors(
    tmp_path: Path, cache_dir: Path, devices: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        measure_system(run_config(cache_dir), ScenarioSpec(out_dir=tmp_path), devices)

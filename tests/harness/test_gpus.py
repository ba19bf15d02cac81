"""GPU discovery and telemetry (harness.gpus): the parsing and decoding logic against a fake
NVML module; real NVML only under the `gpu` marker."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness import gpus
from harness.config import RunConfig, ScenarioSpec
from harness.gpus import GpuInfo, GpuSampler, decode_reasons, discover, visible_gpus
from harness.runner import gpu_sampler, measure


class NVMLError(Exception):
    pass


class FakeNvml:
    """The few pynvml functions harness.gpus calls, over a list of fake devices."""

    NVML_CLOCK_SM = 1

    def __init__(self, devices: list[dict[str, Any]], init_error: str = "") -> None:
        self.devices = devices
        self.init_error = init_error
        self.inits = 0
        self.shutdowns = 0
        self.reads = 0

    def nvmlInit(self) -> None:
        if self.init_error:
            raise NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return self.devices[index]

    def nvmlDeviceGetName(self, handle: dict[str, Any]) -> bytes:
        return str(handle["name"]).encode()  # bytes, as older nvidia-ml-py returns

    def nvmlDeviceGetUUID(self, handle: dict[str, Any]) -> str:
        return str(handle["uuid"])

    def nvmlDeviceGetMemoryInfo(self, handle: dict[str, Any]) -> SimpleNamespace:
        self.reads += 1
        used = handle["used_mib"][min(self.reads - 1, len(handle["used_mib"]) - 1)]
        return SimpleNamespace(total=handle["total_mib"] << 20, used=used << 20)

    def nvmlDeviceGetCudaComputeCapability(self, handle: dict[str, Any]) -> tuple[int, int]:
        return handle["cc"]

    def nvmlDeviceGetClockInfo(self, handle: dict[str, Any], kind: int) -> int:
        assert kind == self.NVML_CLOCK_SM
        if "clocks" not in handle:
            raise NVMLError("Not Supported")
        clocks = handle["clocks"]
        return int(clocks[min(self.reads - 1, len(clocks) - 1)])

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: dict[str, Any]) -> int:
        reasons = handle["reasons"]
        return int(reasons[min(self.reads - 1, len(reasons) - 1)])


def device(index: int, name: str = "Tesla T4", **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": name,
        "uuid": f"GPU-{index}abc-{index:04d}",
        "total_mib": 15360,
        "used_mib": [100],
        "cc": (7, 5),
        "clocks": [1590],
        "reasons": [0],
    }
    return {**values, **extra}


def gpu(index: int, name: str = "Tesla T4") -> GpuInfo:
    return GpuInfo(index, name, f"GPU-{index}abc-{index:04d}", 15360, "7.5")


FOUR = [gpu(0), gpu(1), gpu(2, "NVIDIA A100-SXM4-40GB"), gpu(3)]


@pytest.mark.parametrize(
    ("mask", "names"),
    [
        (0, []),
        (0x1, ["gpu_idle"]),
        (0x4 | 0x40, ["sw_power_cap", "hw_thermal_slowdown"]),
        (0x200 | 0x400, ["board_limit", "reliability"]),
        (0x1 | 0x10000, ["gpu_idle", "0x10000"]),
    ],
)
def test_clock_event_reasons_decode_to_names(mask: int, names: list[str]) -> None:
    assert decode_reasons(mask) == names


def test_the_reason_bits_match_nvidia_ml_py_where_it_is_installed() -> None:
    pynvml = pytest.importorskip("pynvml")
    for bit, name in gpus.CLOCK_EVENT_REASONS.items():
        camel = "".join(part.capitalize() for part in name.split("_"))
        new = getattr(pynvml, f"nvmlClocksEventReason{camel}", None)
        old = getattr(pynvml, f"nvmlClocksThrottleReason{camel}", None)
        assert bit in (new, old), name


@pytest.mark.parametrize(
    ("visible", "indices"),
    [
        (None, [0, 1, 2, 3]),
        ("", []),
        ("2,0", [2, 0]),
        ("1,7,3", [1]),  # CUDA stops at the first entry naming no GPU
        ("1,1,3", [1]),
        ("-1,0", []),
        ("GPU-3abc", [3]),  # a unique UUID prefix
        ("3abc-0003,0", [3, 0]),  # without the GPU- prefix
        ("GPU-", []),  # ambiguous prefix
        ("MIG-1234", []),
        (" 0 , 1 ", [0, 1]),
    ],
)
def test_cuda_visible_devices_selects_and_orders_gpus(
    visible: str | None, indices: list[int]
) -> None:
    assert [g.index for g in visible_gpus(FOUR, visible)] == indices


def test_discover_reads_every_gpu_through_nvml() -> None:
    nvml = FakeNvml([device(0), device(1, "NVIDIA H200", cc=(9, 0), total_mib=143771)])
    found = discover(nvml, environ={})
    assert found.reason == ""
    assert found.gpus == (
        gpu(0),
        GpuInfo(1, "NVIDIA H200", "GPU-1abc-0001", 143771, "9.0"),
    )
    assert nvml.inits == nvml.shutdowns == 1


def test_discover_respects_cuda_visible_devices() -> None:
    nvml = FakeNvml([device(0), device(1), device(2)])
    found = discover(nvml, environ={"CUDA_VISIBLE_DEVICES": "GPU-2abc-0002,0"})
    assert [g.index for g in found.gpus] == [2, 0]
    hidden = discover(nvml, environ={"CUDA_VISIBLE_DEVICES": ""})
    assert hidden.gpus == () and "hides every GPU" in hidden.reason


def test_no_driver_is_an_empty_list_with_a_reason() -> None:
    found = discover(FakeNvml([], init_error="NVML Shared Library Not Found"), environ={})
    assert found.gpus == ()
    assert found.reason == "NVML is not available: NVML Shared Library Not Found"
    assert discover(FakeNvml([]), environ={}).reason == "NVML found no GPU"


def test_no_nvidia_ml_py_is_an_empty_list_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Any:
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(gpus, "_import_nvml", missing)
    found = discover()
    assert found.gpus == () and "nvidia-ml-py is not installed" in found.reason
    assert gpus.list_gpus() == []


def test_cuda_devices_map_to_the_visible_gpus() -> None:
    assert [gpus.cuda_ordinal(d) for d in ("cuda", "cuda:3", "cpu", "cuda:x", "cudax")] == [
        0,
        3,
        None,
        None,
        None,
    ]
    visible = [FOUR[2], FOUR[0]]
    assert gpus.gpu_for_device("cuda:1", visible) == FOUR[0]
    assert gpus.gpu_for_device("cuda:2", visible) is None
    assert gpus.gpu_for_device("cpu", visible) is None


def test_sampler_summarises_memory_clocks_and_reasons() -> None:
    nvml = FakeNvml(
        [
            device(
                0,
                used_mib=[100, 900, 4000, 3000],
                clocks=[1590, 1200, 1410, 1590],
                reasons=[0x1, 0x0, 0x4, 0x0],
            ),
            device(1, used_mib=[50]),
        ]
    )
    sampler = GpuSampler([gpu(0), gpu(1)], interval_s=3600, nvml=nvml)
    with sampler:
        sampler.sample()
        sampler.sample()
    telemetry = sampler.telemetry()
    assert telemetry is not None
    first, second = telemetry["devices"]
    assert first["samples"] == 4  # on entry, two, on exit
    assert first["peak_memory_used_mib"] >= 3000
    assert first["clock_event_reasons"] in (["gpu_idle", "sw_power_cap"], ["gpu_idle"])
    assert first["sm_clock_mhz"]["min"] <= first["sm_clock_mhz"]["median"]
    assert telemetry["peak_memory_used_mib"] == max(
        first["peak_memory_used_mib"], second["peak_memory_used_mib"]
    )
    assert set(telemetry["clock_event_reasons"]) >= {"gpu_idle"}
    assert nvml.shutdowns == 1


def test_sampler_records_exact_values_per_read() -> None:
    """One device, one read per sample: the summary is exactly the fake's series."""
    nvml = FakeNvml(
        [device(0, used_mib=[100, 900, 4000], clocks=[1590, 1200, 1410], reasons=[1, 0, 4])]
    )
    sampler = GpuSampler([gpu(0)], interval_s=3600, nvml=nvml)
    with sampler:
        sampler.sample()
    telemetry = sampler.telemetry()
    assert telemetry is not None
    assert telemetry["peak_memory_used_mib"] == 4000
    assert telemetry["sm_clock_mhz"] == {"min": 1200.0, "median": 1410.0, "max": 1590.0}
    assert telemetry["clock_event_reasons"] == ["gpu_idle", "sw_power_cap"]


def test_sampler_thread_samples_on_its_interval_and_skips_unsupported_metrics() -> None:
    no_clocks = device(0)
    del no_clocks["clocks"]
    sampler = GpuSampler([gpu(0)], interval_s=0.01, nvml=FakeNvml([no_clocks]))
    with sampler:  # one sample on entry, then the thread's: wait for five of those
        deadline = time.monotonic() + 60
        while (sampler.telemetry() or {}).get("samples", 0) < 6:
            if time.monotonic() > deadline:
                break  # the count below says what the thread did
            time.sleep(0.01)
    telemetry = sampler.telemetry()
    assert telemetry is not None
    assert telemetry["samples"] >= 7  # entry, at least five by the thread, exit
    assert telemetry["sm_clock_mhz"] is None
    assert telemetry["peak_memory_used_mib"] == 100


def test_sampler_without_nvml_samples_nothing() -> None:
    sampler = GpuSampler([gpu(0)], nvml=FakeNvml([], init_error="Driver Not Loaded"))
    with sampler:
        pass
    assert sampler.telemetry() is None
    assert "Driver Not Loaded" in sampler.error
    empty = GpuSampler([])
    with empty:
        pass
    assert empty.telemetry() is None


def test_no_telemetry_on_cpu_or_simulated_devices() -> None:
    assert gpu_sampler(["cpu"], simulated=False).gpus == []
    assert gpu_sampler(["cuda:0"], simulated=True).gpus == []


def test_a_simulated_cuda_measurement_carries_no_gpu_telemetry(
    tmp_path: Path, cache_dir: Path
) -> None:
    run = RunConfig(model="tiny", backend="null", device="cuda:0", cache_dir=cache_dir)
    result = measure(run, ScenarioSpec(duration_s=0.2, out_dir=tmp_path))
    assert result.valid and result.simulated
    assert result.device == "simulated (cuda:0)"
    assert result.gpu is None
    assert result.to_dict()["gpu"] is None


@pytest.mark.gpu
def test_real_nvml_lists_and_samples_the_gpus() -> None:
    pytest.importorskip("pynvml", reason="needs nvidia-ml-py (pip install 'batch-tuner[gpu]')")
    found = discover()
    assert found.gpus, found.reason
    first = found.gpus[0]
    assert first.name and first.uuid.startswith(("GPU-", "MIG-"))
    assert first.memory_total_mib > 0 and "." in first.compute_capability
    # The background thread's period is an hour: it samples nothing itself, so the count is
    # exact (one sample on entry, three asked for, one on exit), however busy this machine is.
    with GpuSampler([first], interval_s=3600) as sampler:
        for _ in range(3):
            sampler.sample()
    telemetry = sampler.telemetry()
    assert telemetry is not None and telemetry["samples"] == 5, telemetry
    assert telemetry["peak_memory_used_mib"] is not None
    assert telemetry["sm_clock_mhz"] is not None and telemetry["sm_clock_mhz"]["max"] > 0
    assert all(not r.startswith("0x") for r in telemetry["clock_event_reasons"])

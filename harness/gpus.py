"""NVIDIA GPUs through NVML (`nvidia-ml-py`, imported lazily): which GPUs this process may use,
and a background sampler of their memory, SM clock and clock-event (throttle) reasons while a
measurement runs.

No NVML (no package, no driver, no GPU) is not an error: discovery finds no GPU and says why.
`CUDA_VISIBLE_DEVICES` (indices or UUIDs, as CUDA reads it) decides which NVML devices a
process sees and in what order, so `cuda:N` maps to the N-th of them.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from harness.device import cuda_ordinal

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"

#: Bits of nvmlDeviceGetCurrentClocksEventReasons (`nvmlClocksEventReason*`; the same bits as
#: the deprecated `nvmlClocksThrottleReason*`, which also define board_limit and reliability).
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
    0x200: "board_limit",
    0x400: "reliability",
}

DEFAULT_INTERVAL_S = 0.1
_MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML numbers it (`index` is nvidia-smi's)."""

    index: int
    name: str
    uuid: str
    memory_total_mib: int
    compute_capability: str

    @property
    def cuda_id(self) -> str:
        """What `CUDA_VISIBLE_DEVICES` should hold to select this GPU: the UUID, which does
        not depend on CUDA's device order, else the index."""
        return self.uuid or str(self.index)


@dataclass(frozen=True)
class Discovery:
    """The GPUs this process may use; `reason` says why there are none."""

    gpus: tuple[GpuInfo, ...]
    reason: str = ""


def discover(nvml: Any = None, environ: Mapping[str, str] | None = None) -> Discovery:
    """The NVML GPUs visible to this process (filtered and ordered by CUDA_VISIBLE_DEVICES)."""
    env = os.environ if environ is None else environ
    try:
        nvml = nvml or _import_nvml()
    except ImportError:
        return Discovery((), "nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        return Discovery((), f"NVML is not available: {_text(exc) or type(exc).__name__}")
    try:
        gpus = [_info(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
    except Exception as exc:
        return Discovery((), f"NVML failed to list the GPUs: {_text(exc) or type(exc).__name__}")
    finally:
        _shutdown(nvml)
    if not gpus:
        return Discovery((), "NVML found no GPU")
    visible = visible_gpus(gpus, env.get(VISIBLE_ENV))
    if not visible:
        return Discovery((), f"{VISIBLE_ENV}={env.get(VISIBLE_ENV)!r} hides every GPU")
    return Discovery(tuple(visible))


def list_gpus() -> list[GpuInfo]:
    """The GPUs this process may use; empty without NVML (see `discover` for why)."""
    return list(discover().gpus)


def visible_gpus(gpus: Sequence[GpuInfo], visible: str | None) -> list[GpuInfo]:
    """`gpus` as CUDA sees them under CUDA_VISIBLE_DEVICES=`visible` (None: unset).

    Entries are NVML indices or (unique prefixes of) UUIDs; like CUDA, the list ends at the
    first entry that names no GPU (or one already listed). MIG instances are not mapped.
    """
    if visible is None:
        return list(gpus)
    chosen: list[GpuInfo] = []
    for entry in (e.strip() for e in visible.split(",")):
        gpu = _match(gpus, entry)
        if gpu is None or gpu in chosen:
            break
        chosen.append(gpu)
    return chosen


def _match(gpus: Sequence[GpuInfo], entry: str) -> GpuInfo | None:
    if not entry:
        return None
    if entry.lstrip("-").isdigit():
        return next((g for g in gpus if g.index == int(entry)), None)
    wanted = entry if entry.startswith("GPU-") else f"GPU-{entry}"
    found = [g for g in gpus if g.uuid.startswith(wanted)]
    return found[0] if len(found) == 1 else None


def gpu_for_device(device: str, gpus: Sequence[GpuInfo]) -> GpuInfo | None:
    """The GPU behind `device` ('cuda:N': the N-th visible one) among the visible `gpus`."""
    ordinal = cuda_ordinal(device)
    if ordinal is None or ordinal >= len(gpus):
        return None
    return gpus[ordinal]


def sampler_for(devices: Sequence[str], interval_s: float = DEFAULT_INTERVAL_S) -> GpuSampler:
    """A sampler of the GPUs behind `devices` ('cuda:N'); one that samples nothing (and says
    why in `error`) where NVML is absent or a device is not a visible GPU."""
    found = discover()
    gpus = [gpu_for_device(d, found.gpus) for d in devices]
    sampler = GpuSampler([g for g in gpus if g is not None], interval_s)
    if found.reason:
        sampler.error = f"GPU telemetry unavailable: {found.reason}"
    elif None in gpus:
        sampler.error = f"GPU telemetry: no visible GPU behind {devices[gpus.index(None)]}"
    return sampler


def decode_reasons(mask: int) -> list[str]:
    """Names of the clock-event reason bits in `mask` (unknown bits in hex)."""
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    if unknown:
        names.append(hex(unknown))
    return names


@dataclass
class _DeviceSamples:
    gpu: GpuInfo
    memory_used_mib: list[float] = field(default_factory=list)
    sm_clock_mhz: list[int] = field(default_factory=list)
    reasons: int = 0
    samples: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "index": self.gpu.index,
            "name": self.gpu.name,
            "uuid": self.gpu.uuid,
            "samples": self.samples,
            "peak_memory_used_mib": max(self.memory_used_mib, default=None),
            "sm_clock_mhz": clock_summary(self.sm_clock_mhz),
            "clock_event_reasons": decode_reasons(self.reasons),
        }


def clock_summary(clocks: Sequence[int]) -> dict[str, float] | None:
    """min / median / max of the sampled clocks (MHz), None without samples."""
    if not clocks:
        return None
    return {
        "min": float(min(clocks)),
        "median": float(statistics.median(clocks)),
        "max": float(max(clocks)),
    }


class GpuSampler:
    """Samples the given GPUs every `interval_s` on a background thread, while in a `with`
    block; `telemetry()` summarises what it saw. A metric NVML does not support on a device is
    left out, never an error."""

    def __init__(
        self, gpus: Sequence[GpuInfo], interval_s: float = DEFAULT_INTERVAL_S, nvml: Any = None
    ) -> None:
        self.gpus = list(gpus)
        self.interval_s = interval_s
        self._nvml = nvml
        self._devices = [_DeviceSamples(g) for g in self.gpus]
        self._handles: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error = ""

    def __enter__(self) -> GpuSampler:
        if not self.gpus:
            return self
        try:
            self._nvml = self._nvml or _import_nvml()
            self._nvml.nvmlInit()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(g.index) for g in self.gpus]
        except Exception as exc:
            self.error = f"GPU telemetry unavailable: {_text(exc) or type(exc).__name__}"
            self._handles = []
            return self
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="gpu-telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.sample()
        if self._handles:
            _shutdown(self._nvml)
            self._handles = []

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """Read every device once."""
        nvml = self._nvml
        for device, handle in zip(self._devices, self._handles, strict=True):
            device.samples += 1
            with contextlib.suppress(Exception):  # NVMLError_NotSupported and the like
                device.memory_used_mib.append(nvml.nvmlDeviceGetMemoryInfo(handle).used / _MIB)
            with contextlib.suppress(Exception):
                clock = nvml.nvmlDeviceGetClockInfo(handle, getattr(nvml, "NVML_CLOCK_SM", 1))
                device.sm_clock_mhz.append(int(clock))
            with contextlib.suppress(Exception):
                device.reasons |= int(_current_reasons(nvml, handle))

    def telemetry(self) -> dict[str, Any] | None:
        """Peak memory used (MiB), SM clock min/median/max (MHz) and the union of clock-event
        reasons over all devices, and the same per device; None if nothing was sampled."""
        if not any(d.samples for d in self._devices):
            return None
        devices = [d.summary() for d in self._devices]
        peaks = [d["peak_memory_used_mib"] for d in devices if d["peak_memory_used_mib"]]
        reasons = sorted({r for d in devices for r in d["clock_event_reasons"]})
        return {
            "interval_s": self.interval_s,
            "samples": max(d.samples for d in self._devices),
            "peak_memory_used_mib": round(max(peaks), 1) if peaks else None,
            "sm_clock_mhz": clock_summary([c for d in self._devices for c in d.sm_clock_mhz]),
            "clock_event_reasons": reasons,
            "devices": devices,
        }


def _current_reasons(nvml: Any, handle: Any) -> int:
    """nvmlDeviceGetCurrentClocksEventReasons, or its deprecated Throttle name (older
    nvidia-ml-py)."""
    getter = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if getter is None:
        getter = nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return int(getter(handle))


def _info(nvml: Any, index: int) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    try:
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        capability = f"{major}.{minor}"
    except Exception:
        capability = ""
    return GpuInfo(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        memory_total_mib=int(nvml.nvmlDeviceGetMemoryInfo(handle).total // _MIB),
        compute_capability=capability,
    )


def _text(value: object) -> str:
    """NVML strings are bytes in older nvidia-ml-py, str in newer."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _shutdown(nvml: Any) -> None:
    with contextlib.suppress(Exception):
        nvml.nvmlShutdown()


def _import_nvml() -> Any:
    import pynvml  # nvidia-ml-py

    return pynvml

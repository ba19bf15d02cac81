"""The devices a measurement runs on: the one parser of device strings (`cpu`, `cuda`,
`cuda:N`) and the names of devices (a study belongs to one device model)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import NamedTuple

from harness.errors import ConfigError


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: The /proc/cpuinfo flags that decide which kernels a DL runtime can use on a CPU (int8 dot
#: products, bf16, AMX tiles, the vector widths); AMX flags are matched by prefix.
ML_CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "neon",
    "asimd",
    "asimddp",
    "sve",
)


def _cpuinfo_field(text: str, *names: str) -> str:
    """The value of the first line of /proc/cpuinfo text whose key is one of `names`."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in names:
            return value.strip()
    return ""


def _cpuinfo() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text(errors="replace") if cpuinfo.exists() else ""


def cpu_name() -> str:
    """The CPU model, e.g. 'AMD EPYC 9454 48-Core Processor (2 cores)'."""
    model = _cpuinfo_field(_cpuinfo(), "model name")
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"{model} ({cpu_count()} cores)"


def cpu_flags(cpuinfo: str | None = None) -> list[str] | None:
    """The CPU's flags among ML_CPU_FLAGS (AMX ones by prefix: amx_tile, amx_int8, ...),
    sorted, from /proc/cpuinfo text (this machine's when None); None where it lists no flags
    (not Linux, or an architecture that names them otherwise), so "unknown" is not "none"."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    line = _cpuinfo_field(text, "flags", "Features")  # x86 / ARM
    if not line:
        return None
    found = set(line.split())
    return sorted(f for f in found if f in ML_CPU_FLAGS or f.startswith("amx_"))


def cpu_info() -> dict[str, object]:
    """The CPU a measurement ran on, as benchmark files keep it: model and relevant flags."""
    return {"model": cpu_name(), "flags": cpu_flags()}


class Device(NamedTuple):
    """A parsed device string: `kind` is "cpu" or "cuda", `ordinal` the CUDA ordinal (0 on a
    CPU)."""

    kind: str
    ordinal: int


def read_device(device: str) -> Device | None:
    """'cpu' -> Device('cpu', 0); 'cuda' -> Device('cuda', 0); 'cuda:N' -> Device('cuda', N)
    (N in ASCII digits); None for any other string. The one grammar of device strings: each
    caller words its own refusal."""
    if device == "cpu":
        return Device("cpu", 0)
    kind, sep, number = device.partition(":")
    if kind == "cuda" and (not sep or (number.isascii() and number.isdigit())):
        return Device("cuda", int(number or 0))
    return None


def parse_device(device: str) -> Device:
    """`read_device`, or ConfigError naming the device and the forms it may take."""
    found = read_device(device)
    if found is None:
        raise ConfigError(f"device: {device!r} is not one of cpu, cuda, cuda:N")
    return found


def cuda_ordinal(device: str) -> int | None:
    """N of 'cuda' / 'cuda:N' (0 for 'cuda'); None for any other device."""
    found = read_device(device)
    return found.ordinal if found is not None and found.kind == "cuda" else None

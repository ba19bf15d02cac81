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


def cpu_name() -> str:
    """The CPU model, e.g. 'AMD EPYC 9454 48-Core Processor (2 cores)'."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"{model} ({cpu_count()} cores)"


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

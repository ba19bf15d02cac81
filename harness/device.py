"""Names of the devices a measurement runs on (a study belongs to one device model)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


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

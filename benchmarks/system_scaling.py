"""How a system of several devices scales: `harness.system.measure_system` on one simulated
device and on N (the null backend's modelled latency on virtual CUDA devices, real LoadGen,
the real system SUT routing batches to the devices), Offline, in turn: 1, N, 1, N ... so the
machine's drift hits both alike, and the ratio taken pair by pair. What it measures is the
harness's own cost of routing and completing across devices (the devices are sleeps): a ratio
near N says the system SUT adds nothing that serialises them.

    python benchmarks/system_scaling.py                 # 3 devices, 3 pairs
    python benchmarks/system_scaling.py --devices 4 --pairs 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from harness.cli_common import default_cache_dir
from harness.config import RunConfig, ScenarioSpec
from harness.device import cpu_flags, cpu_name
from harness.system import measure_system


def measure(devices: int, out: Path) -> float:
    """Offline samples/s of a system of `devices` simulated devices."""
    run = RunConfig(
        model="tiny",
        backend="null",
        batch_size=4,
        streams=1,
        cache_dir=default_cache_dir(),
        backend_options={"latency_ms": 1.0, "per_sample_ms": 0.25, "device_name": "Tesla T4"},
    )
    spec = ScenarioSpec(duration_s=1.0, out_dir=out)
    result = measure_system(run, spec, [f"cuda:{i}" for i in range(devices)])
    return float(result.samples_per_second or 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    flags = ",".join(cpu_flags() or ["unknown"])
    print(f"{cpu_name()}, flags {flags}; Python {platform.python_version()}", flush=True)
    ratios = []
    with tempfile.TemporaryDirectory() as folder:
        for pair in range(args.pairs):
            one = measure(1, Path(folder) / f"one-{pair}")
            many = measure(args.devices, Path(folder) / f"many-{pair}")
            ratios.append(many / one)
            print(
                f"pair {pair + 1}: 1 device {one:,.1f} samples/s, {args.devices} devices "
                f"{many:,.1f} samples/s: {many / one:.2f}x",
                flush=True,
            )
    print(f"median {statistics.median(ratios):.2f}x over {args.pairs} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

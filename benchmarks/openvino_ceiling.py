"""How far can any batch, stream and request setting take OpenVINO past its own throughput hint
on this machine? OpenVINO's `benchmark_app` (no LoadGen, no harness) on one model file:
`-hint throughput` against every hand-set `-hint none -nstreams S -nireq R` at batch B, in
rounds (the hint first and last in each, the settings in turn, reversed every other round), so
the machine's drift falls on all alike.

The best setting's median over the hint's median is the ceiling of what a settings tuner can
gain over that one flag on this model and CPU, whatever measures it: the tuner's ratio through
LoadGen (`benchmarks/cpu_peers.py`) cannot be expected above it.

    python benchmarks/openvino_ceiling.py --model ~/.cache/batch-tuner/variants/int8-<hash>.onnx
    python benchmarks/openvino_ceiling.py --model M.onnx --batches 1,4,16 --seconds 5 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.device import cpu_info  # noqa: E402
from harness.models import inspect_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, action="append", help="repeatable")
    parser.add_argument("--batches", default="1,2,4,8,16", help="default %(default)s")
    parser.add_argument("--streams", default="1,2", help="default %(default)s")
    parser.add_argument("--seconds", type=float, default=5.0, help="per run (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="default 2")
    parser.add_argument("--dim", action="append", default=[], help="NAME=SIZE, as the harness")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    machine = cpu_info()
    print(f"CPU: {machine['model']}; flags: {', '.join(machine['flags'] or [])}", flush=True)
    dims = dict(d.split("=", 1) for d in args.dim)
    batches = [int(b) for b in args.batches.split(",")]
    streams = [int(s) for s in args.streams.split(",")]
    docs = []
    for model in args.model:
        info = inspect_model(model, dims={k: int(v) for k, v in dims.items()})
        settings = {
            f"b{b} s{s} r{r}": (b, ["-hint", "none", "-nstreams", str(s), "-nireq", str(r)])
            for b in batches
            for s in streams
            for r in (s, 2 * s)
        }
        figures: dict[str, list[float]] = {"hint": [], **{k: [] for k in settings}}
        order = list(settings)
        for i in range(args.rounds):
            for name in ["hint", *(order if i % 2 == 0 else order[::-1]), "hint"]:
                batch, flags = (1, ["-hint", "throughput"]) if name == "hint" else settings[name]
                fps = run(model, info.inputs, batch, flags, args.seconds)
                figures[name].append(fps)
                print(f"{model.name} round {i + 1}: {name}: {fps:,.1f} samples/s", flush=True)
        medians = {name: statistics.median(v) for name, v in figures.items()}
        best = max(settings, key=lambda k: medians[k])
        ratio = medians[best] / medians["hint"]
        print(
            f"{model.name}: -hint throughput {medians['hint']:,.1f}; best setting {best} "
            f"{medians[best]:,.1f}: ceiling {ratio:.3f}x",
            flush=True,
        )
        docs.append(
            {
                "model": str(model),
                "figures": figures,
                "medians": medians,
                "best": best,
                "ceiling": round(ratio, 4),
            }
        )
    if args.json:
        doc = {"cpu": machine, "seconds": args.seconds, "rounds": args.rounds, "models": docs}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def run(model: Path, inputs: list, batch: int, flags: list[str], seconds: float) -> float:
    """Samples per second of one benchmark_app run: its iterations times the batch over its
    duration (its own FPS counts the batch only where it can tell the layout)."""
    shape = ",".join(f"{t.name}[{','.join(str(d) for d in t.batch_shape(batch))}]" for t in inputs)
    tool = Path(sys.executable).parent / "benchmark_app"
    command = [str(tool), "-m", str(model), "-d", "CPU", "-shape", shape, *flags]
    out = subprocess.run(
        [*command, "-t", f"{seconds:g}"], check=True, capture_output=True, text=True
    ).stdout
    count = re.search(r"Count:\s+(\d+) iterations", out)
    duration = re.search(r"Duration:\s+([\d.]+) ms", out)
    if count is None or duration is None:
        raise SystemExit(f"no count or duration in benchmark_app's output:\n{out[-2000:]}")
    return int(count.group(1)) * batch / (float(duration.group(1)) / 1000)


if __name__ == "__main__":
    sys.exit(main())

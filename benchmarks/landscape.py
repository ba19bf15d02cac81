"""Record a landscape: every configuration of a study's search space measured with the real
harness (each in a child process, like a tuner trial), repeats included so the noise is
recorded too. Repeats sweep the whole grid in turn, so slow drift spreads over all points.
The file is rewritten after every measurement and a rerun resumes it (also with a larger
`--repeats`, to add repeats; each resumption is noted under "resumed").

    python benchmarks/landscape.py --config studies/resnet50-offline-cpu.toml --repeats 3 \\
        --out benchmarks/landscapes/resnet50-offline-cpu.json

Every file records the CPU it was measured on (`cpu`: model and the flags that decide which
kernels run, avx512_vnni and the like; each resumption notes its own), since a landscape's
shape (is int8 faster?) belongs to the CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from harness.cli_common import add_input_flags, default_cache_dir
from harness.device import cpu_info, cpu_name
from tuner import config
from tuner.child import measure_in_child
from tuner.space import Params, resolve_space
from tuner.study import trial_configs

FORMAT = 1


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _strs(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def record(
    result: dict[str, Any] | None, failure: str | None, reason: str, seconds: float
) -> dict[str, Any]:
    """One repeat of one configuration, as the landscape file keeps it."""
    if result is None:
        return {"failure": failure, "reason": reason, "seconds": round(seconds, 2)}
    latency = result.get("latency_ms") or {}
    return {
        "score": result["score"],
        "valid": result["valid"],
        "p50_ms": latency.get("p50"),
        "p99_ms": latency.get("p99"),
        "warmup_batch_ms": result["warmup"]["batch_ms"],
        "warmup_samples_per_second": result["warmup"]["samples_per_second"],
        "agreement_top1": (result.get("agreement") or {}).get("top1"),
        "engine_build_s": result["engine_build_s"],
        "note": result["note"],
        "loadgen_runs": [
            {
                "scenario": r.get("scenario"),
                "target_qps": r.get("target_qps"),
                "valid": r.get("valid"),
                "samples_per_second": r.get("samples_per_second"),
                "scheduled_qps": r.get("scheduled_qps"),
                "p99_ms": (r.get("latency_ms") or {}).get("p99"),
            }
            for r in result["loadgen_runs"]
        ],
        "seconds": round(seconds, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="study file (studies/*.toml)")
    parser.add_argument("--out", type=Path, required=True, help="landscape JSON to write")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", help="override the study file's model")
    parser.add_argument("--batch-sizes", type=_ints)
    parser.add_argument("--streams", type=_ints)
    parser.add_argument("--precisions", type=_strs)
    parser.add_argument("--deque-timeouts-us", type=_ints)
    parser.add_argument("--latency-ms", type=float)
    parser.add_argument("--percentile", type=float)
    parser.add_argument("--min-queries", type=int)
    parser.add_argument("--duration-s", type=float)
    parser.add_argument("--samples", type=int, help="override the study file's QSL size")
    parser.add_argument("--accuracy-floor", type=float)
    add_input_flags(parser.add_argument_group("inputs"), defaults=False)
    args = parser.parse_args()
    tables = {  # repeatable NAME=... flags -> the tables they override (None: the file's)
        name: dict(getattr(args, name)) if getattr(args, name) else None
        for name in ("dims", "shapes", "input_ranges")
    }
    cfg = config.build(
        args.config,
        model=args.model,
        batch_sizes=args.batch_sizes,
        streams=args.streams,
        precisions=args.precisions,
        deque_timeout_us=args.deque_timeouts_us,
        latency_ms=args.latency_ms,
        percentile=args.percentile,
        min_queries=args.min_queries,
        duration_s=args.duration_s,
        samples=args.samples,
        accuracy_floor=args.accuracy_floor,
        accuracy_metric=args.accuracy_metric,
        accuracy_output=args.accuracy_output,
        **tables,
        cache_dir=default_cache_dir(),
        runs_dir=Path(os.environ.get("TMPDIR", "/tmp")) / "landscape-runs",
    )
    space = resolve_space(cfg)
    points = space.points()
    data: dict[str, Any]
    if args.out.exists():
        data = json.loads(args.out.read_text())
        if data["space"] != space.grid():
            print(f"{args.out} holds another space; remove it or change --out", file=sys.stderr)
            return 2
        if any(len(e["repeats"]) < args.repeats for e in data["points"]):
            data.setdefault("resumed", []).append(
                {
                    "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                    "cpu": cpu_info() if cfg.device == "cpu" else None,
                }
            )
    else:
        data = {
            "format": FORMAT,
            "model": cfg.model,
            "scenario": cfg.scenario,
            "backend": cfg.backend,
            "device": cpu_name() if cfg.device == "cpu" else cfg.device,
            "cpu": cpu_info() if cfg.device == "cpu" else None,
            "dims": dict(cfg.dims),
            "shapes": {k: list(v) for k, v in cfg.shapes.items()},
            "latency_ms": cfg.latency_ms if cfg.scenario == "server" else None,
            "percentile": cfg.percentile if cfg.scenario == "server" else None,
            "duration_s": cfg.duration_s,
            "min_queries": cfg.min_queries,
            "python": platform.python_version(),
            "recorded": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "space": space.grid(),
            "points": [{"params": p, "repeats": []} for p in points],
        }
    started = time.monotonic()
    total = len(points) * args.repeats
    for repeat in range(args.repeats):
        for index, entry in enumerate(data["points"]):
            if len(entry["repeats"]) > repeat:
                continue
            params = Params.from_mapping(entry["params"])
            run, spec = trial_configs(cfg, params, "landscape", repeat * len(points) + index)
            outcome = measure_in_child(run, spec, cfg.trial_timeout_s)
            entry["repeats"].append(
                record(outcome.result, outcome.failure, outcome.reason, outcome.seconds)
                # Which recording (0 = the first, 1 = the first resumption, ...): the machine
                # can drift between them, so a replay can keep a study within one.
                | {"session": len(data.get("resumed", []))}
            )
            data["versions"] = (outcome.result or {}).get("versions", data.get("versions"))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            tmp.replace(args.out)
            done = sum(len(e["repeats"]) for e in data["points"])
            last = entry["repeats"][-1]
            what = f"{last['score']:,.2f}" if "score" in last else f"FAILED ({last['failure']})"
            print(
                f"[{done}/{total}] repeat {repeat + 1}, {params.label()}: {what} "
                f"({time.monotonic() - started:.0f} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

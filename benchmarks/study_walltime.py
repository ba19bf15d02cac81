"""What a whole study costs: `python -m tuner optimize` (the README's default study unless
given other flags) run as a user runs it, each time on a fresh database, timed as a whole
process, with the warm worker (the default) and with `--isolate-trials` (a child process per
trial, as before warm workers) in turn: A B A B ..., so the machine's drift hits both alike,
and the ratio taken pair by pair.

Each run's row: wall seconds (process start to exit, the model's cache as the run found it),
the measuring share (`report --json`'s `measuring_share`: LoadGen seconds over the run's wall
time), the declared best and its confirmed median, and the speed-up over the baseline.

    python benchmarks/study_walltime.py --pairs 3                 # model cached (built once first)
    python benchmarks/study_walltime.py --pairs 1 --empty-cache   # each run on a new cache folder
    python benchmarks/study_walltime.py --pairs 2 -- --config studies/mobilenet-server-cpu.toml
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.device import cpu_flags, cpu_name

MODES = {"warm": [], "isolated": ["--isolate-trials"]}


def run_once(mode: str, extra: list[str], work: Path, cache: Path | None) -> dict[str, Any]:
    """One whole `optimize` on a fresh database; its wall time and `report --json`."""
    folder = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=work))
    storage = f"sqlite:///{folder / 'study.db'}"
    env = dict(os.environ)
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    argv = [sys.executable, "-m", "tuner", "optimize", "--storage", storage, "--study", "s"]
    argv += ["--runs-dir", str(folder / "runs"), *MODES[mode], *extra]
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{mode}: optimize exited {done.returncode}:\n{done.stderr[-2000:]}")
    report = folder / "report.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tuner",
            "report",
            "--storage",
            storage,
            "--study",
            "s",
            "--json",
            str(report),
            "--quiet",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    doc = json.loads(report.read_text())
    best = doc["best"] or {}
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "mode": mode,
        "wall_s": round(wall, 1),
        "measuring_share": doc["measuring_share"],
        "best": best.get("params"),
        "confirmed": best.get("value"),
        "confirm_scores": best.get("confirm_scores"),
        "speed_up": doc["speed_up"],
    }


def row(r: dict[str, Any]) -> str:
    p = r["best"] or {}
    best = f"{p.get('precision')} b{p.get('batch_size')} x{p.get('streams')}"
    share = r["measuring_share"]
    return (
        f"  {r['mode']:<8} {r['wall_s']:7.1f} s  measuring {share:5.0%}  best {best:<14} "
        f"confirmed {r['confirmed'] or 0:9,.1f}  speed-up {r['speed_up'] or 0:5.2f}x"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--empty-cache", action="store_true", help="a new cache folder per run")
    parser.add_argument("--modes", default="warm,isolated", help="which, in this order")
    parser.add_argument("extra", nargs="*", help="more optimize flags, after --")
    args = parser.parse_args()
    modes = args.modes.split(",")
    flags = ",".join(cpu_flags() or ["unknown"])
    print(
        f"{cpu_name()}, flags {flags}; Python {platform.python_version()}; "
        f"{'empty cache each run' if args.empty_cache else 'model cached'}; "
        f"optimize {' '.join(args.extra) or '(defaults)'}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="walltime-"))
    try:
        if not args.empty_cache:  # build the model and its variants once, untimed
            run_once(modes[0], args.extra, work, None)
        results: list[list[dict[str, Any]]] = []
        for pair in range(args.pairs):
            runs = []
            for mode in modes:
                cache = (
                    Path(tempfile.mkdtemp(prefix="cache-", dir=work)) if args.empty_cache else None
                )
                runs.append(run_once(mode, args.extra, work, cache))
                print(f"pair {pair + 1}:" if mode == modes[0] else "", row(runs[-1]), flush=True)
                if cache is not None:
                    shutil.rmtree(cache, ignore_errors=True)
            results.append(runs)
        print("medians:")
        for index, mode in enumerate(modes):
            walls = [pair[index]["wall_s"] for pair in results]
            shares = [pair[index]["measuring_share"] for pair in results]
            print(
                f"  {mode:<8} wall {statistics.median(walls):.1f} s "
                f"(min {min(walls):.1f}, max {max(walls):.1f}), measuring share "
                f"{statistics.median(shares):.0%}"
            )
        if len(modes) == 2:
            ratios = [pair[0]["wall_s"] / pair[1]["wall_s"] for pair in results]
            print(
                f"  wall {modes[0]}/{modes[1]} per pair: "
                + ", ".join(f"{r:.2f}" for r in ratios)
                + f" (median {statistics.median(ratios):.2f})"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

With `--modes pruned,unpruned` the pair is a study that prunes (the default) against the same
study with `--prune off`; `--trials` prints each run's trials with their LoadGen runs:

    python benchmarks/study_walltime.py --pairs 1 --modes pruned,unpruned --trials \
        -- --config studies/mobilenet-server-cpu.toml

Two studies' confirmed medians are measured minutes apart, and this VM drifts by more than 5%
in minutes, so they cannot say whether one study chose worse than the other. `--side-by-side R`
answers that: after each pair, the configuration each study declared is measured again as its
trials were (same settings, a child process each), in turn, R rounds (A B, B A, ...), and the
ratio of their medians is printed beside the confirmed one:

    python benchmarks/study_walltime.py --pairs 2 --cached --modes pruned,unpruned \
        --side-by-side 3 -- --config studies/mobilenet-server-cpu.toml
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

#: Mode -> its optimize flags: the warm worker (the default) against a child per trial, and
#: pruning (the default) against none.
MODES = {
    "warm": [],
    "isolated": ["--isolate-trials"],
    "pruned": [],
    "unpruned": ["--prune", "off"],
}


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
    trials = trial_runs(storage)
    stored = stored_config(storage)
    shutil.rmtree(folder, ignore_errors=True)
    measured = [t for t in trials if t["state"] == "COMPLETE" and t["runs"]]
    return {
        "mode": mode,
        "wall_s": round(wall, 1),
        "measuring_share": doc["measuring_share"],
        "best": best.get("params"),
        "confirmed": best.get("value"),
        "confirm_scores": best.get("confirm_scores"),
        "speed_up": doc["speed_up"],
        "speed_up_at_least": doc.get("speed_up_at_least"),
        "trials": trials,
        "config": stored,
        "pruned": sum(t["state"] == "PRUNED" for t in trials),
        # LoadGen runs per trial measured in full (not pruned, not a copy): all, and Server.
        "runs_per_trial": statistics.median([len(t["runs"]) for t in measured] or [0]),
        "server_runs_per_trial": statistics.median(
            [sum(k == "S" for k in t["runs"]) for t in measured] or [0]
        ),
    }


def stored_config(storage: str) -> dict[str, Any]:
    """The study's configuration as `optimize` stored it (what a joining worker reads)."""
    import optuna

    return dict(optuna.load_study(study_name="s", storage=storage).user_attrs["config"])


def side_by_side(runs: list[dict[str, Any]], rounds: int, work: Path) -> dict[str, Any]:
    """Each run's declared best measured again as its study measured trials, in turn (A B,
    then B A, ...), `rounds` times: scores per mode, their medians, and first over second."""
    from tuner.child import measure_in_child
    from tuner.config import from_stored
    from tuner.space import Params
    from tuner.study import trial_configs

    setups = []
    for r in runs:
        cfg = from_stored(r["config"], storage="sqlite://", runs_dir=work / "side-by-side")
        run, spec = trial_configs(cfg, Params.from_mapping(r["best"]), "s", 0)
        setups.append((r["mode"], run, spec, cfg.trial_timeout_s))
    scores: dict[str, list[float]] = {mode: [] for mode, *_ in setups}
    for i in range(rounds):
        for mode, run, spec, timeout in setups if i % 2 == 0 else setups[::-1]:
            outcome = measure_in_child(run, spec, timeout)
            result = outcome.result or {}
            score = float(result["score"]) if result.get("valid") else 0.0
            scores[mode].append(score)
            why = "" if result.get("valid") else f" ({outcome.reason or 'INVALID'}: counts as 0)"
            print(f"    side by side, round {i + 1}: {mode} {score:,.1f}{why}", flush=True)
    medians = {mode: statistics.median(values) for mode, values in scores.items()}
    first, second = (mode for mode, *_ in setups)
    ratio = medians[first] / medians[second] if medians[second] else float("nan")
    return {"scores": scores, "medians": medians, "ratio": ratio}


def trial_runs(storage: str) -> list[dict[str, Any]]:
    """Each trial of the study: state, parameters, value and its LoadGen runs in order (`O` an
    Offline run, `S` a Server run)."""
    import optuna

    study = optuna.load_study(study_name="s", storage=storage)
    out = []
    for t in study.get_trials(deepcopy=False):
        runs = t.user_attrs.get("loadgen_runs") or []
        out.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": dict(t.params),
                "value": t.value if t.values and len(t.values) == 1 else None,
                "runs": "".join(str(r.get("scenario", "?"))[:1] for r in runs),
                "copy": "duplicate_of" in t.user_attrs,
            }
        )
    return out


def row(r: dict[str, Any]) -> str:
    p = r["best"] or {}
    best = f"{p.get('precision')} b{p.get('batch_size')} x{p.get('streams')}"
    share = r["measuring_share"]
    if r["speed_up"] is not None:
        speed = f"{r['speed_up']:5.2f}x"
    elif r.get("speed_up_at_least") is not None:
        speed = f">= {r['speed_up_at_least']:.2f}x"
    else:
        speed = "n/a"
    text = (
        f"  {r['mode']:<8} {r['wall_s']:7.1f} s  measuring {share:5.0%}  best {best:<14} "
        f"confirmed {r['confirmed'] or 0:9,.1f}  speed-up {speed}"
    )
    if r["pruned"] or r["mode"] in ("pruned", "unpruned"):
        text += (
            f"  pruned {r['pruned']}/{len(r['trials'])}, LoadGen runs per trial measured in full "
            f"{r['runs_per_trial']:g} ({r['server_runs_per_trial']:g} Server)"
        )
    return text


def trial_lines(r: dict[str, Any]) -> list[str]:
    """One line per trial: its state, configuration, value and LoadGen runs."""
    lines = []
    for t in r["trials"]:
        p = t["params"]
        config = (
            f"{p.get('precision')} b{p.get('batch_size')} x{p.get('streams')}"
            f" d{p.get('deque_timeout_us', '-')}"
        )
        value = f"{t['value']:,.1f}" if isinstance(t["value"], (int, float)) else "-"
        copy = " (copy)" if t["copy"] else ""
        lines.append(
            f"      trial {t['number']:>2} {t['state']:<8} {config:<20} {value:>9}  "
            f"runs {t['runs'] or '-'}{copy}"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--empty-cache", action="store_true", help="a new cache folder per run")
    parser.add_argument("--modes", default="warm,isolated", help="which, in this order")
    parser.add_argument(
        "--cached",
        action="store_true",
        help="the model and its variants are cached already: no untimed first run",
    )
    parser.add_argument("--trials", action="store_true", help="print each run's trials")
    parser.add_argument(
        "--side-by-side",
        type=int,
        default=0,
        metavar="R",
        help="after each pair, measure both declared bests in turn, R rounds (two modes only)",
    )
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
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
        if not args.empty_cache and not args.cached:  # build the model's variants, untimed
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
                if args.trials:
                    print("\n".join(trial_lines(runs[-1])), flush=True)
                if cache is not None:
                    shutil.rmtree(cache, ignore_errors=True)
            if args.side_by_side and len(modes) == 2:
                side = side_by_side(runs, args.side_by_side, work)
                runs[0]["side_by_side"] = side
                m = side["medians"]
                confirmed = (runs[0]["confirmed"] or 0) / (runs[1]["confirmed"] or float("nan"))
                print(
                    f"  declared bests side by side: {modes[0]} {m[modes[0]]:,.1f}, "
                    f"{modes[1]} {m[modes[1]]:,.1f}: {side['ratio']:.2f} (confirmed medians, "
                    f"minutes apart: {confirmed:.2f})",
                    flush=True,
                )
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
        if args.json is not None:
            args.json.write_text(json.dumps({"cpu": cpu_name(), "flags": flags, "runs": results}))
        if len(modes) == 2:
            ratios = [pair[0]["wall_s"] / pair[1]["wall_s"] for pair in results]
            print(
                f"  wall {modes[0]}/{modes[1]} per pair: "
                + ", ".join(f"{r:.2f}" for r in ratios)
                + f" (median {statistics.median(ratios):.2f})"
            )
            sides = [
                pair[0]["side_by_side"]["ratio"] for pair in results if "side_by_side" in pair[0]
            ]
            if sides:
                print(
                    f"  declared best {modes[0]}/{modes[1]}, side by side, per pair: "
                    + ", ".join(f"{r:.2f}" for r in sides)
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

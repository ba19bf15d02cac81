"""Does a fresh run reproduce what a study exported? Re-measures the study's declared best
configuration N times (each in a fresh child process, like a trial) and compares the median
with the stored value (`tuner.results.robust_value`: the confirmed median where there is one).
Target: the median of 5 fresh runs within 5% of the stored value.

    python -m tuner optimize                       # the README's default study
    python benchmarks/reproduce.py --study resnet50-offline-onnxruntime-amd-epyc-2-cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from harness.cli_common import default_cache_dir
from tuner.child import measure_in_child
from tuner.config import DEFAULT_STORAGE, from_stored
from tuner.results import best_trial, robust_value
from tuner.space import Params
from tuner.study import load, trial_configs

TOLERANCE = 0.05


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default=DEFAULT_STORAGE)
    parser.add_argument("--study", required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    study = load(args.storage, args.study)
    trial = best_trial(study)
    if trial is None:
        print(f"study {args.study!r} has no feasible trial", file=sys.stderr)
        return 1
    cfg = from_stored(
        study.user_attrs["config"],
        storage=args.storage,
        name=args.study,
        cache_dir=args.cache_dir,
        runs_dir=args.runs_dir,
    )
    params = Params.from_mapping(trial.params)
    stored = robust_value(trial, study.user_attrs)
    print(f"study {args.study}: trial {trial.number} ({params.label()}), stored {stored:,.2f}")
    scores = []
    for i in range(1, args.runs + 1):
        run, spec = trial_configs(cfg, params, args.study, trial.number)
        spec = replace(spec, out_dir=args.runs_dir / args.study / f"reproduce-{i}")
        outcome = measure_in_child(run, spec, cfg.trial_timeout_s)
        result = outcome.result
        score = float(result["score"]) if result and result["valid"] else 0.0
        scores.append(score)
        print(
            f"  fresh run {i}/{args.runs}: {score:,.2f}"
            + ("" if result else f" ({outcome.reason})")
        )
    median = statistics.median(scores)
    ratio = median / stored if stored else 0.0
    verdict = "within" if abs(ratio - 1) <= TOLERANCE else "OUTSIDE"
    print(
        f"median of {args.runs} fresh runs {median:,.2f} = {ratio:.3f} x stored {stored:,.2f}: "
        f"{verdict} {TOLERANCE:.0%} (runs {min(scores):,.2f}-{max(scores):,.2f})"
    )
    return 0 if verdict == "within" else 1


if __name__ == "__main__":
    sys.exit(main())

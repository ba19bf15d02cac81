"""Does pruning change what a study declares best, and what does it save? Replayed on the
recorded landscapes.

The tuner's own pipeline (`tuner.pipeline.optimize`, the default sampler, budget and
confirmation) runs on each landscape of `benchmarks/landscapes/` twice per seed, with pruning
(the default) and with `prune` off, its trials answered by `tuner.replay.LandscapeReplay` (a
recorded repeat drawn at random; a replayed trial is pruned where the harness would have pruned
it, from the repeat's warm-up estimate, Offline run and first Server probe). Both studies of a
seed draw from the same recording session. Per landscape it prints, over the seeds, the true
value of the declared best as a share of the landscape's true best (the median of the
configuration's recorded repeats), the trials pruned, and the LoadGen seconds the studies'
measurements would have taken (each run's length from the landscape's duration and query
count), with and without pruning.

    python benchmarks/prune_replay.py                          # the Server landscapes, 20 seeds
    python benchmarks/prune_replay.py --landscape benchmarks/landscapes/x.json --seeds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `benchmarks` importable as a package
    sys.path.insert(0, str(ROOT))

import tuner.study  # noqa: E402
from benchmarks.tuner_efficiency import in_memory, study_config  # noqa: E402
from tuner.config import StudyConfig  # noqa: E402
from tuner.pipeline import optimize  # noqa: E402
from tuner.replay import LandscapeReplay  # noqa: E402
from tuner.results import best_trial  # noqa: E402

HERE = Path(__file__).resolve().parent


def run_landscape(path: Path, seeds: int, work: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    floor = StudyConfig().accuracy_floor
    _, best = LandscapeReplay(path).best(floor)
    rows: dict[str, dict[str, list[float]]] = {}
    for prune in (True, False):
        row: dict[str, list[float]] = {"declared": [], "loadgen_s": [], "pruned": []}
        for seed in range(seeds):
            cfg = study_config(path, data, "tpe", seed, StudyConfig().trials, True, work / "x.db")
            cfg = replace(cfg, name=f"{path.stem}-{seed}-{prune}", prune=prune)
            replay = LandscapeReplay(path, 1000 + seed)
            finished = optimize(cfg, lambda line: None, measure=replay)
            winner = best_trial(finished.study)
            row["declared"].append(replay.truth(winner.params, floor) / best if winner else 0.0)
            row["loadgen_s"].append(replay.loadgen_s)
            row["pruned"].append(float(replay.pruned))
        rows["pruned" if prune else "unpruned"] = row
    return {"landscape": path.name, "scenario": data["scenario"], "best": best, "rows": rows}


def line(name: str, row: dict[str, list[float]]) -> str:
    declared = row["declared"]
    return (
        f"  {name:<9} declared best {statistics.median(declared):6.1%} of the true best "
        f"(median; min {min(declared):.1%}), LoadGen {statistics.median(row['loadgen_s']):7.1f} s "
        f"a study (median), trials pruned {statistics.median(row['pruned']):g} (median)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--landscape",
        type=Path,
        action="append",
        help="a landscape file (repeatable; default: every Server landscape)",
    )
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    paths = args.landscape or [
        p
        for p in sorted((HERE / "landscapes").glob("*.json"))
        if json.loads(p.read_text()).get("scenario") == "server"
    ]
    tuner.study.open_storage = in_memory  # type: ignore[assignment]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for path in paths:
            found = run_landscape(path, args.seeds, Path(folder))
            results.append(found)
            print(f"{path.name} ({found['scenario']}, {args.seeds} seeds):", flush=True)
            for name, row in found["rows"].items():
                print(line(name, row), flush=True)
            ratio = statistics.median(found["rows"]["pruned"]["loadgen_s"]) / statistics.median(
                found["rows"]["unpruned"]["loadgen_s"]
            )
            print(f"  LoadGen seconds pruned/unpruned: {ratio:.2f}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How cheaply does each search strategy find the best configuration of a recorded landscape?

The tuner's own pipeline (`tuner.pipeline.optimize`: samplers, enqueued baseline, duplicate reuse,
confirmation, SQLite storage) runs on each landscape of `benchmarks/landscapes/`, its trials
answered by `tuner.replay.LandscapeReplay` (a recorded repeat drawn at random, so the recorded
noise is in it). For every strategy and seed it runs two studies:

- a long one (budget = the grid's size, no confirmation): the number of trials until the first
  one whose configuration is truly within 2% of the landscape's best ("trials to 98%"; the true
  value of a configuration is the median of its recorded repeats);
- one with the default budget and confirmation, as `python -m tuner optimize` runs: the true
  value of what it finally declares best, as a share of the true best.

Each study draws its measurements from one recording session of the landscape (`--noise
session`, the default; `--noise all`: from every repeat): a file resumed hours later holds the
machine's drift between sessions, which a study of a few minutes never sees.

For scale it also prints what an exhaustive grid would declare: every configuration measured
N times and the best median taken (N x grid measurements): on a flat landscape whose repeats
spread more than its top configurations differ, no strategy with a study's budget can do better.

Samplers are the project's own (`tuner.study.make_sampler`): TPE or random, wrapped so that no
configuration is proposed twice until the space is spent (`tuner.sampling`); grid = seeded,
engine-grouped enqueued points. The studies live in Optuna's in-memory storage (SQLite commits
every user attribute and would make this an hour's run); nothing else of the study code is
replaced.

Peers (`benchmarks/peers.py`, each on the same landscapes, the same seeds and the same
recording session per seed as the default's declared-best study), one measurement = one drawn
repeat:

- quick: Triton Model Analyzer's quick search, hill climbing over batch size and streams from
  the smallest configuration, once per precision (a separate model to MA);
- grid3: NVIDIA's autotune grid, every configuration measured 3 times, the best median declared;
- plain-tpe: Optuna's TPESampler alone, the default budget, the best single trial declared.

The grid-parity target is printed per landscape (PASS/FAIL): the default strategy's declared best
(its true value) at least as good as grid3's at the median and the 10th percentile of the
seeds, with at most a third of grid3's measurements (median over the seeds).

    python benchmarks/tuner_efficiency.py                      # every landscape, 20 seeds
    python benchmarks/tuner_efficiency.py --seeds 5 --landscape benchmarks/landscapes/x.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `benchmarks` importable as a package
    sys.path.insert(0, str(ROOT))

import tuner.study  # noqa: E402
from benchmarks import peers  # noqa: E402
from harness.models import BUILTIN_MODELS  # noqa: E402
from tuner.config import SAMPLERS, Space, StudyConfig  # noqa: E402
from tuner.pipeline import optimize  # noqa: E402
from tuner.replay import NOISE, LandscapeReplay, drawable, objective, params_of  # noqa: E402
from tuner.results import best_trial  # noqa: E402

HERE = Path(__file__).resolve().parent
#: Within this share of the true best counts as found.
NEAR = 0.98
DEFAULT = StudyConfig().sampler
EXHAUSTIVE_DRAWS = 400
#: The peers run beside the project's samplers (see the module docstring).
PEERS = ("quick", "grid3", "plain-tpe")
#: The exhaustive baseline of the grid-parity target, and its repeats per configuration.
GRID_PEER, GRID_REPEATS = "grid3", 3


def study_config(
    path: Path, data: dict[str, Any], sampler: str, seed: int, trials: int, confirm: bool, db: Path
) -> StudyConfig:
    space = data["space"]
    deque = space.get("deque_timeout_us")
    model = replay_model(data)
    # The dims and shapes it was recorded with, where the study inspects the landscape's own
    # exported model; the tiny stand-in for a file that is not here has none to bind.
    own = model == str(data["model"])
    return StudyConfig(
        name=f"{path.stem}-{sampler}-{seed}-{trials}",
        storage=f"sqlite:///{db}",
        trials=trials,
        sampler=sampler,
        seed=seed,
        confirm_runs=StudyConfig().confirm_runs if confirm else 0,
        model=model,
        dims=(data.get("dims") or {}) if own else {},
        shapes={k: tuple(v) for k, v in (data.get("shapes") or {}).items()} if own else {},
        backend="replay",
        backend_options={"landscape": str(path)},
        scenario=data["scenario"],
        latency_ms=data.get("latency_ms") or StudyConfig().latency_ms,
        percentile=data.get("percentile") or StudyConfig().percentile,
        space=Space(
            batch_sizes=tuple(space["batch_size"]),
            streams=tuple(space["streams"]),
            precisions=tuple(space["precision"]),
            deque_timeout_us=tuple(deque) if deque else None,
        ),
        runs_dir=db.parent / "runs",
    )


def replay_model(data: dict[str, Any]) -> str:
    """The model a replayed study names: the landscape's, or the built-in tiny model where the
    landscape's is a file that is not here (e.g. an exported BERT under the git-ignored
    benchmarks/models/): a replayed trial never loads it, only the study's metadata names it."""
    model = str(data["model"])
    return model if model in BUILTIN_MODELS or Path(model).is_file() else "tiny"


def trials_to_near(study: optuna.Study, replay: LandscapeReplay, floor: float, best: float) -> int:
    """1-based count of trials until one truly within NEAR of `best`; 0 when none was."""
    for count, trial in enumerate(sorted(study.get_trials(), key=lambda t: t.number), 1):
        params = trial.params or trial.system_attrs.get("fixed_params") or {}
        if params and replay.truth(params, floor) >= NEAR * best:
            return count
    return 0


def in_memory(url: str, **_: Any) -> optuna.storages.InMemoryStorage:
    """A fresh in-memory storage for each study, in place of `tuner.storage.open_storage`."""
    return optuna.storages.InMemoryStorage()


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def run_landscape(
    path: Path,
    strategies: list[str],
    seeds: int,
    budget: int,
    work: Path,
    confirm: tuple[int, int],
    noise: str,
) -> dict[str, Any]:
    data = json.loads(path.read_text())
    probe = LandscapeReplay(path, noise=noise)
    floor = StudyConfig().accuracy_floor
    best_key, best = probe.best(floor)
    grid = len(probe.repeats)
    near = sum(probe.truth(params_of(k), floor) >= NEAR * best for k in probe.repeats)
    print(
        f"\n{path.name}: {data['scenario']}, {grid} configurations, true best {best:,.2f} "
        f"({best_key[0]}, batch {best_key[1]}, {best_key[2]} stream(s)"
        f"{'' if best_key[3] is None else f', deque {best_key[3]} us'}); "
        f"{near} configuration(s) within {1 - NEAR:.0%} of it",
        flush=True,
    )
    bound = exhaustive_bound(probe, floor, best, noise)
    print(
        "  for scale, an exhaustive grid (every configuration measured N times, the best "
        f"median declared; {EXHAUSTIVE_DRAWS} draws): >= {NEAR:.0%} in "
        + ", ".join(_bound(n, share, grid) for n, share in bound),
        flush=True,
    )
    rows: dict[str, Any] = {}
    for sampler in strategies:
        if sampler in PEERS:
            rows[sampler] = run_peer(path, data, sampler, seeds, budget, noise, floor, best)
            print(_peer_line(sampler, rows[sampler], grid, seeds), flush=True)
            continue
        started = time.monotonic()
        reached: list[float] = []
        declared: list[float] = []
        measurements: list[int] = []
        measuring_s: list[float] = []
        builds: list[int] = []
        sessions: list[int | None] = []
        for seed in range(seeds):
            db = work / f"{path.stem}-{sampler}-{seed}.db"
            long_cfg = study_config(path, data, sampler, seed, grid, False, db)
            replay = LandscapeReplay(path, seed, noise)
            finished = optimize(long_cfg, lambda line: None, measure=replay)
            count = trials_to_near(finished.study, replay, floor, best)
            reached.append(count if count else math.inf)

            cfg = replace(
                long_cfg,
                name=f"{long_cfg.name}-short",
                trials=budget,
                confirm_runs=confirm[0],
                confirm_top=confirm[1],
            )
            replay = LandscapeReplay(path, 1000 + seed, noise)
            finished = optimize(cfg, lambda line: None, measure=replay)
            winner = best_trial(finished.study)
            declared.append(replay.truth(winner.params, floor) / best if winner else 0.0)
            measurements.append(replay.calls)
            measuring_s.append(replay.seconds)
            builds.append(len(replay.engines))
            sessions.append(replay.session)
        label = f"{sampler} (default)" if sampler == DEFAULT else sampler
        row = summarize(reached, declared, measurements, measuring_s, builds, started)
        row["sessions"] = sessions
        rows[sampler] = row
        print(_line(label, row, grid, seeds, budget), flush=True)
    verdict = grid_parity(rows, grid)
    if verdict:
        print(verdict["line"], flush=True)
    return {
        "grid": grid,
        "best": best,
        "best_config": best_key,
        "exhaustive": dict(bound),
        "strategies": rows,
        "grid_parity": verdict,
    }


def run_peer(
    path: Path,
    data: dict[str, Any],
    peer: str,
    seeds: int,
    budget: int,
    noise: str,
    floor: float,
    best: float,
) -> dict[str, Any]:
    """One peer over `seeds` seeds; seed s draws from LandscapeReplay(path, 1000 + s), the
    replay (and so the recording session) of the default's declared-best study of seed s."""
    started = time.monotonic()
    declared: list[float] = []
    reached: list[float] = []
    measurements: list[int] = []
    measuring_s: list[float] = []
    builds: list[int] = []
    for seed in range(seeds):
        replay = LandscapeReplay(path, 1000 + seed, noise)
        winner, order = PEER_RUNS[peer](replay, data["space"], floor, seed, budget)
        declared.append(replay.truth(winner, floor) / best if winner else 0.0)
        near = [i for i, p in enumerate(order, 1) if replay.truth(p, floor) >= NEAR * best]
        reached.append(near[0] if near else math.inf)
        measurements.append(replay.calls)
        measuring_s.append(replay.seconds)
        builds.append(len(replay.engines))
    return summarize(reached, declared, measurements, measuring_s, builds, started)


def summarize(
    reached: list[float],
    declared: list[float],
    measurements: list[int],
    measuring_s: list[float],
    builds: list[int],
    started: float,
) -> dict[str, Any]:
    """One strategy's row over its seeds."""
    return {
        "median_trials": statistics.median(reached),
        "p90_trials": nearest_rank(reached, 0.9),
        "reached": sum(math.isfinite(r) for r in reached),
        "declared_median": statistics.median(declared),
        "declared_p10": nearest_rank(declared, 0.1),
        "declared_min": min(declared),
        "declared_ok": sum(d >= NEAR for d in declared),
        "measurements": statistics.median(measurements),
        "measuring_s": statistics.median(measuring_s),
        "engines": statistics.median(builds),
        "seconds": round(time.monotonic() - started, 1),
        "trials_to_near": reached,
        "declared": declared,
    }


def space_dimensions(space: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    """The space as ordered dimensions, each value list in increasing order (precision as the
    landscape lists it, fp32 first): batch size first and streams second, as Model Analyzer
    orders max_batch_size and instance count."""
    dims = [
        ("batch_size", sorted(space["batch_size"])),
        ("streams", sorted(space["streams"])),
        ("precision", list(space["precision"])),
    ]
    if space.get("deque_timeout_us"):
        dims.append(("deque_timeout_us", sorted(space["deque_timeout_us"])))
    return dims


def _params(dims: list[tuple[str, list[Any]]], values: tuple[Any, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"deque_timeout_us": None}
    out.update({name: v for (name, _), v in zip(dims, values, strict=True)})
    return out


def _score(replay: LandscapeReplay, params: dict[str, Any], floor: float) -> float:
    repeat = replay.draw(params)
    return 0.0 if repeat is None else objective(repeat, floor)


def peer_quick(
    replay: LandscapeReplay, space: dict[str, Any], floor: float, seed: int, budget: int
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Model Analyzer's quick search. Its dimensions are max_batch_size and instance count
    (batch size and streams here); a precision (or a deque timeout, MA's
    max_queue_delay_microseconds, which quick search does not search either) is another model
    to MA, so each value gets its own search from its smallest configuration, and the best
    passing measurement of them all is declared. A failed run (no score) is MA's None
    measurement; an INVALID run or one under the accuracy floor fails the constraints."""
    dims = space_dimensions(space)
    searched, fixed = dims[:2], dims[2:]
    order: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any]] | None = None
    for others in itertools.product(*(values for _, values in fixed)):

        def params(c: peers.Coordinate, others: tuple[Any, ...] = others) -> dict[str, Any]:
            picked = tuple(values[i] for (_, values), i in zip(searched, c, strict=True))
            return _params(dims, picked + others)

        def measure(c: peers.Coordinate, params: Any = params) -> peers.Measurement:
            repeat = replay.draw(params(c))
            if repeat is None or "score" not in repeat:
                return None
            value = objective(repeat, floor)
            return (value, True) if value > 0 else (float(repeat["score"]), False)

        found = peers.quick_search([len(v) for _, v in searched], measure)
        order += [params(c) for c in found.measured]
        if found.best is not None:
            value = found.data[found.best][0]  # type: ignore[index]
            if best is None or value > best[0]:
                best = (value, params(found.best))
    return (best[1] if best else None), order


def peer_grid(
    replay: LandscapeReplay, space: dict[str, Any], floor: float, seed: int, budget: int
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Every recorded configuration measured GRID_REPEATS times, the best median declared."""
    points = [params_of(k) for k in replay.repeats]
    winner, _ = peers.exhaustive_grid(
        points, lambda p: _score(replay, p, floor), repeats=GRID_REPEATS
    )
    return winner, [p for p in points for _ in range(GRID_REPEATS)]


def peer_plain_tpe(
    replay: LandscapeReplay, space: dict[str, Any], floor: float, seed: int, budget: int
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Optuna's TPESampler(seed=seed), defaults otherwise, `budget` trials asked and told (a
    repeated configuration is measured again), the best trial declared."""
    dims = space_dimensions(space)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed)
    )
    order = []
    for _ in range(budget):
        trial = study.ask()
        params = _params(
            dims, tuple(trial.suggest_categorical(name, values) for name, values in dims)
        )
        order.append(params)
        study.tell(trial, _score(replay, params, floor))
    return _params(dims, tuple(study.best_trial.params[n] for n, _ in dims)), order


PEER_RUNS = {"quick": peer_quick, GRID_PEER: peer_grid, "plain-tpe": peer_plain_tpe}


def grid_parity(rows: dict[str, Any], grid: int) -> dict[str, Any] | None:
    """The grid-parity target: the default's declared best (true value) >= the exhaustive
    grid's at the median and the 10th percentile of the seeds, at <= 1/3 of the grid's
    measurements."""
    if DEFAULT not in rows or GRID_PEER not in rows:
        return None
    mine, grid3 = rows[DEFAULT]["declared"], rows[GRID_PEER]["declared"]
    median, p10 = statistics.median(mine), nearest_rank(mine, 0.1)
    g_median, g_p10 = statistics.median(grid3), nearest_rank(grid3, 0.1)
    spent, cap = rows[DEFAULT]["measurements"], rows[GRID_PEER]["measurements"] / 3
    checks = {
        "median": median >= g_median,
        "p10": p10 >= g_p10,
        "measurements": spent <= cap,
    }
    ok = all(checks.values())
    line = (
        f"  target 4a ({DEFAULT} vs {GRID_PEER}, true value of the declared best / the true "
        f"best): median {median:.1%} vs {g_median:.1%} "
        f"[{'ok' if checks['median'] else 'short'}], 10th percentile {p10:.1%} vs "
        f"{g_p10:.1%} [{'ok' if checks['p10'] else 'short'}], measurements {spent:g} vs "
        f"<= {cap:g} (a third of {rows[GRID_PEER]['measurements']:g}) "
        f"[{'ok' if checks['measurements'] else 'over'}]: {'PASS' if ok else 'FAIL'}"
    )
    return {
        "pass": ok,
        "checks": checks,
        "default": {"median": median, "p10": p10, "measurements": spent},
        GRID_PEER: {"median": g_median, "p10": g_p10, "measurements": 3 * cap},
        "line": line,
    }


def exhaustive_bound(
    replay: LandscapeReplay,
    floor: float,
    best: float,
    noise: str,
    counts: tuple[int, ...] = (1, 3, 5, 9),
) -> list[tuple[int | str, float]]:
    """How often measuring every configuration N times and declaring the best median lands
    within NEAR of the true best (draws as the replay makes them, each exhaustive study in
    one recording session with noise "session"): what noise leaves to any strategy at
    N x grid measurements, against the default's budget of trials and confirmation. The last
    entry ("all") is the limit: the share of sessions whose own medians point at a
    configuration truly within NEAR (the best any study drawing from one session can do)."""
    truths = [replay.truth(params_of(key), floor) for key in replay.repeats]
    # Every configuration's drawable scores, per session (None: every repeat).
    by_session = {
        session: [
            [objective(r, floor) for r in drawable(found, session)]
            for found in replay.repeats.values()
        ]
        for session in [*replay.sessions, None]
    }
    shares: list[tuple[int | str, float]] = []
    for n in counts:
        rng = random.Random(n)
        hits = 0
        for _ in range(EXHAUSTIVE_DRAWS):
            scores = by_session[rng.choice(replay.sessions) if noise == "session" else None]
            medians = [statistics.median(rng.choice(s) for _ in range(n)) for s in scores]
            declared = max(range(len(truths)), key=lambda i: medians[i])
            hits += truths[declared] >= NEAR * best
        shares.append((n, hits / EXHAUSTIVE_DRAWS))
    # N -> infinity: each session's own medians (every one of its repeats) decide.
    pools = replay.sessions if noise == "session" else [None]
    oracle = [
        truths[max(range(len(truths)), key=lambda i: statistics.median(by_session[s][i]))]
        >= NEAR * best
        for s in pools
    ]
    shares.append(("all", sum(oracle) / len(oracle)))
    return shares


def _bound(n: int | str, share: float, grid: int) -> str:
    if isinstance(n, int):
        return f"{share:.0%} at N={n} ({n * grid} measurements)"
    return f"{share:.0%} with every recorded repeat of the session (its medians decide)"


def _trials(value: float, grid: int) -> str:
    if not math.isfinite(value):
        return f">{grid} (not reached)"
    return f"{value:g} ({value / grid:.0%})"


def _peer_line(name: str, row: dict[str, Any], grid: int, seeds: int) -> str:
    return (
        f"  {name:<15} first measurement truly within {NEAR:.0%}: median "
        f"{_trials(row['median_trials'], grid)}, reached in {row['reached']}/{seeds} | "
        f"declared best: median {row['declared_median']:.1%}, 10th percentile "
        f"{row['declared_p10']:.1%}, worst {row['declared_min']:.1%}, >= {NEAR:.0%} in "
        f"{row['declared_ok']}/{seeds}; {row['measurements']:g} measurements "
        f"({row['measuring_s']:.0f} s of recorded runs), {row['engines']:g} engines | "
        f"{row['seconds']:.0f} s"
    )


def _line(name: str, row: dict[str, Any], grid: int, seeds: int, budget: int) -> str:
    return (
        f"  {name:<15} trials to {NEAR:.0%}: median {_trials(row['median_trials'], grid)}, "
        f"p90 {_trials(row['p90_trials'], grid)}, reached in {row['reached']}/{seeds} | "
        f"declared best after {budget} trials + confirmation: median "
        f"{row['declared_median']:.1%}, worst {row['declared_min']:.1%}, >= {NEAR:.0%} in "
        f"{row['declared_ok']}/{seeds}; {row['measurements']:g} measurements "
        f"({row['measuring_s']:.0f} s of recorded runs), "
        f"{row['engines']:g} engines | {row['seconds']:.0f} s"
        + _by_session(row["declared"], row["sessions"])
    )


def _by_session(declared: list[float], sessions: list[int | None]) -> str:
    """Declared >= NEAR per recording session the studies drew from, where there are several."""
    kinds = sorted({s for s in sessions if s is not None})
    if len(kinds) < 2:
        return ""
    parts = []
    for kind in kinds:
        mine = [d for d, s in zip(declared, sessions, strict=True) if s == kind]
        parts.append(f"session {kind}: {sum(d >= NEAR for d in mine)}/{len(mine)}")
    return f"\n{'':18}declared >= {NEAR:.0%} by session: " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--landscape",
        type=Path,
        action="append",
        help="landscape JSON (repeatable; default: every file in benchmarks/landscapes)",
    )
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument(
        "--strategies",
        default=",".join((*SAMPLERS, *PEERS)),
        help=f"comma-separated, of the project's samplers {', '.join(SAMPLERS)} (the default "
        f"strategy is {DEFAULT}) and the peers {', '.join(PEERS)} (default: all)",
    )
    parser.add_argument("--budget", type=int, default=StudyConfig().trials)
    parser.add_argument("--confirm-runs", type=int, default=StudyConfig().confirm_runs)
    parser.add_argument("--confirm-top", type=int, default=StudyConfig().confirm_top)
    parser.add_argument(
        "--noise",
        choices=NOISE,
        default="session",
        help="draw each study's measurements from one recording session of the landscape "
        "(session, the default: a study takes minutes, sessions lie hours apart and the "
        "machine drifts between them) or from every repeat (all)",
    )
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for name in strategies:
        if name not in SAMPLERS and name not in PEERS:
            valid = ", ".join((*SAMPLERS, *PEERS))
            parser.error(f"--strategies: unknown {name!r} (valid: {valid})")
    paths = args.landscape or sorted((HERE / "landscapes").glob("*.json"))
    started = time.monotonic()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tuner.study.open_storage = in_memory  # type: ignore[assignment]
    logging.getLogger("tuner").setLevel(logging.WARNING)
    print(
        f"{args.seeds} seeds per strategy; the default strategy is {DEFAULT}; budget "
        f"{args.budget} trials, confirmation {args.confirm_runs} more runs of the top "
        f"{args.confirm_top}; target for the default: median <= max(10% of the grid, 6) "
        f"trials, p90 <= max(20%, 10), declared >= {NEAR:.0%} of the true best in >= 19/20 seeds"
        f"; noise drawn from "
        + ("one recording session per study" if args.noise == "session" else "every repeat")
    )
    results = {}
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as t:
        for path in paths:
            results[path.name] = run_landscape(
                path,
                strategies,
                args.seeds,
                args.budget,
                Path(t),
                (args.confirm_runs, args.confirm_top),
                args.noise,
            )
    verdicts = {name: r["target_4a"] for name, r in results.items() if r["target_4a"]}
    if verdicts:
        print(f"\ntarget 4a ({DEFAULT} against {GRID_PEER}), per landscape:")
        for name, v in verdicts.items():
            print(f"  {name}: {'PASS' if v['pass'] else 'FAIL'}")
    print(f"total {time.monotonic() - started:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chaos: a study on a private PostgreSQL, three workers (one `optimize`, two `worker`s) on the
null backend, while a seeded loop SIGKILLs, or SIGSTOPs then SIGCONTs, a random worker or
trial child every few seconds and restarts the workers it killed. Then a final resume (the
same `optimize` again) and the checks that no work is lost:

- every trial counted against the budget: COMPLETE + PRUNED + FAIL (not retried) == the
  budget, and each of them COMPLETE or PRUNED (trials lost: the budget less those);
- every enqueued configuration (the baseline) COMPLETE exactly once;
- no trial RUNNING or WAITING after the final resume;
- no process started here left on the machine (each carries a tag in its environment);
- the confirmed best exists and is a COMPLETE trial.

    python benchmarks/chaos.py                      # about 5 minutes on 2 cores
    python benchmarks/chaos.py --budget 60 --every 2 --seed 7

With `--queue` the same faults hit the service: three studies submitted to the queue (their
files in an artifact store folder), three `worker --once` processes serving it, killed ones
restarted; then a final `worker --once` without faults, and the same checks per study, plus:
every study done (confirmed and summarised by a worker) and every trial's LoadGen logs in the
store.

    python benchmarks/chaos.py --queue --budget 90  # 3 studies of 30 trials

Needs PostgreSQL's binaries (initdb, pg_ctl; run as the `postgres` user when root) and the
postgres extra (psycopg). Exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pg import PostgresServer, find_bin_dir  # noqa: E402
from tests.procs import cmdline, descendants  # noqa: E402

TAG_ENV = "TUNER_CHAOS_TAG"
STUDY = "chaos"


@dataclass
class Slot:
    """One of the three workers: its command, and the process running it now."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    done: bool = False
    log: list[Path] = field(default_factory=list)


@dataclass
class Tally:
    kills: int = 0
    kills_of_workers: int = 0
    kills_of_children: int = 0
    stops: int = 0
    restarts: int = 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bin_dir = find_bin_dir()
    if bin_dir is None:
        print("chaos: PostgreSQL is not installed (no initdb/pg_ctl)", file=sys.stderr)
        return 2
    run_dir = Path(args.out) if args.out else Path(f"/tmp/chaos-{uuid.uuid4().hex[:8]}")
    run_dir.mkdir(parents=True, exist_ok=True)
    server = PostgresServer(bin_dir)
    server.start()
    try:
        run = queue_chaos if args.queue else chaos
        return run(args, server.create_database("chaos"), run_dir)
    finally:
        server.stop()


def chaos(args: argparse.Namespace, storage: str, run_dir: Path) -> int:
    tag = uuid.uuid4().hex
    env = {**os.environ, "TUNER_STORAGE": storage, TAG_ENV: tag}
    env.pop("PYTHONWARNINGS", None)
    common = [
        *("--cache-dir", str(run_dir / "cache"), "--runs-dir", str(run_dir / "runs")),
        *("--heartbeat-s", str(args.heartbeat_s)),
    ]
    optimize = [
        sys.executable,
        *("-m", "tuner", "optimize", "--study", STUDY, "--model", "tiny", "--backend", "null"),
        # 13 batch sizes x 8 stream counts x 3 precisions = 312 configurations: more than the
        # budget, so every trial measures (a repeat would be answered from the earlier trial).
        *("--backend-option", "latency_ms=1", "--max-batch", "4096"),
        *("--max-streams", "8", "--precisions", "fp32,fp16,int8"),
        *("--trials", str(args.budget), "--duration-s", str(args.duration_s)),
        *("--confirm-runs", "2", "--seed", str(args.seed), *common),
    ]
    worker = [sys.executable, "-m", "tuner", "worker", "--study", STUDY, *common]
    slots = [
        Slot("optimize", optimize),
        *(Slot(f"worker {i}", [*worker, "--worker-name", f"worker {i}"]) for i in (1, 2)),
    ]
    rng = random.Random(args.seed)
    tally = Tally()
    started = time.monotonic()
    print(
        f"chaos: budget {args.budget}, 3 workers, a fault every ~{args.every:g} s "
        f"(seed {args.seed}); logs in {run_dir}",
        flush=True,
    )
    _start(slots[0], env, run_dir)
    _wait_for_study(storage, slots[0])  # before the workers join it, and before any fault
    for slot in slots[1:]:
        _start(slot, env, run_dir)
    chaos_s = _faults(args, slots, env, run_dir, rng, tally, started)
    for slot in slots:  # only after giving up
        if slot.proc is not None:
            slot.proc.kill()
            slot.proc.wait()

    print("chaos: final resume (the same optimize command, no faults)", flush=True)
    final_log = run_dir / "final-resume.log"
    with open(final_log, "wb") as out:
        final = subprocess.run(optimize, env=env, stdout=out, stderr=subprocess.STDOUT)
    time.sleep(1.0)  # let the last children be reaped
    return report(args, storage, tag, tally, chaos_s, final.returncode, final_log)


def _faults(
    args: argparse.Namespace,
    slots: list[Slot],
    env: dict[str, str],
    run_dir: Path,
    rng: random.Random,
    tally: Tally,
    started: float,
) -> float:
    """Fault the slots at random until each has exited 0 (one killed is restarted; another
    exit ends it) or `--max-seconds` pass; the seconds it took."""
    next_fault = time.monotonic() + rng.uniform(0.5, 1.5) * args.every
    while not all(s.done for s in slots):
        if time.monotonic() - started > args.max_seconds:
            print(f"chaos: still running after {args.max_seconds} s; giving up", flush=True)
            break
        for slot in slots:
            if slot.proc is not None and slot.proc.poll() is not None:
                code = slot.proc.returncode
                slot.proc = None
                if code == 0:
                    slot.done = True
                elif code in (-signal.SIGKILL, 128 + signal.SIGKILL):
                    tally.restarts += 1
                    _start(slot, env, run_dir)
                else:
                    print(f"chaos: {slot.name} exited {code}; see {slot.log[-1]}", flush=True)
                    slot.done = True
        if time.monotonic() >= next_fault:
            _fault(slots, rng, tally)
            next_fault = time.monotonic() + rng.uniform(0.5, 1.5) * args.every
        time.sleep(0.05)
    return time.monotonic() - started


def _wait_for_study(storage: str, slot: Slot) -> None:
    import optuna

    from tuner.storage import open_storage

    while True:
        if slot.proc is not None and slot.proc.poll() is not None:
            raise SystemExit(f"chaos: {slot.name} exited {slot.proc.returncode}: {slot.log[-1]}")
        try:
            names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(storage))]
        except Exception:  # the schema is being created
            names = []
        if STUDY in names:
            return
        time.sleep(0.2)


def _start(slot: Slot, env: dict[str, str], run_dir: Path) -> None:
    slot.starts += 1
    log = run_dir / f"{slot.name.replace(' ', '-')}-{slot.starts}.log"
    slot.log.append(log)
    with open(log, "wb") as out:
        slot.proc = subprocess.Popen(slot.argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _fault(slots: list[Slot], rng: random.Random, tally: Tally) -> None:
    """SIGKILL (two times in three) or SIGSTOP, a pause, SIGCONT: a worker or, where it has
    one, its trial child (even odds)."""
    alive = [s for s in slots if s.proc is not None and s.proc.poll() is None]
    if not alive:
        return
    slot = rng.choice(alive)
    assert slot.proc is not None
    children = [p for p in descendants(slot.proc.pid) if "spawn_main" in cmdline(p)]
    child = rng.random() < 0.5 and bool(children)
    pid = rng.choice(children) if child else slot.proc.pid
    what = f"{slot.name}'s trial child" if child else slot.name
    try:
        if rng.random() < 2 / 3:
            os.kill(pid, signal.SIGKILL)
            tally.kills += 1
            if child:
                tally.kills_of_children += 1
            else:
                tally.kills_of_workers += 1
            print(f"chaos: SIGKILL {what} (pid {pid})", flush=True)
        else:
            pause = rng.uniform(0.5, 3.0)
            os.kill(pid, signal.SIGSTOP)
            time.sleep(pause)
            os.kill(pid, signal.SIGCONT)
            tally.stops += 1
            print(f"chaos: SIGSTOP {what} (pid {pid}) for {pause:.1f} s", flush=True)
    except ProcessLookupError:
        pass


def report(
    args: argparse.Namespace,
    storage: str,
    tag: str,
    tally: Tally,
    chaos_s: float,
    final_code: int,
    final_log: Path,
) -> int:
    import optuna
    from optuna.trial import TrialState

    from tuner.loop import budget_used
    from tuner.storage import open_storage

    study = optuna.load_study(study_name=STUDY, storage=open_storage(storage, create=False))
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]  # measured, stopped at a bound
    failed = [t for t in trials if t.state == TrialState.FAIL]
    counted_fail = [t for t in failed if t.number not in retried]
    unfinished = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    enqueued = [t for t in trials if "fixed_params" in t.system_attrs]
    configs = {_key(t.system_attrs["fixed_params"]) for t in enqueued}
    complete_keys = [_key(t.params) for t in complete]
    enqueued_once = {k: complete_keys.count(k) for k in configs}
    lost = args.budget - len(complete) - len(pruned)
    orphans = _tagged(tag)
    best = study.user_attrs.get("confirmed_best")
    best_ok = best is not None and any(t.number == best for t in complete)
    failures: dict[str, int] = {}
    for t in failed:
        key = str(t.user_attrs.get("failure", "?"))
        failures[key] = failures.get(key, 0) + 1

    checks = {
        "COMPLETE + PRUNED + FAIL (counted) == budget": len(complete)
        + len(pruned)
        + len(counted_fail)
        == args.budget
        and budget_used(study) == args.budget,
        "every enqueued configuration COMPLETE exactly once": bool(configs)
        and all(n == 1 for n in enqueued_once.values()),
        "no trial RUNNING or WAITING after the final resume": not unfinished,
        "no process of the tuner left": not orphans,
        "the confirmed best is a COMPLETE trial": best_ok,
        "the final resume exited 0": final_code == 0,
    }
    print()
    print(f"chaos ran {chaos_s:.0f} s; budget {args.budget}, seed {args.seed}")
    print(
        f"kills survived: {tally.kills} ({tally.kills_of_workers} workers, "
        f"{tally.kills_of_children} trial children); SIGSTOP/SIGCONT: {tally.stops}; "
        f"workers restarted: {tally.restarts}"
    )
    print(
        f"trials: {len(trials)} in all, {len(complete)} COMPLETE, {len(pruned)} PRUNED, "
        f"{len(failed)} FAIL "
        f"({len(failed) - len(counted_fail)} retried; by failure: {failures or 'none'})"
    )
    print(f"trials lost: {lost}")
    print(f"orphans left: {len(orphans)}" + (f" ({', '.join(orphans)})" if orphans else ""))
    print(f"confirmed best: trial {best}" if best is not None else "confirmed best: none")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    if final_code != 0:
        print(f"final resume: exit {final_code}; see {final_log}")
    return 0 if all(checks.values()) and tally.kills >= args.min_kills else 1


QUEUED = ("queue-a", "queue-b", "queue-c")


def queue_chaos(args: argparse.Namespace, storage: str, run_dir: Path) -> int:
    """The faults on the service: 3 studies in the queue, 3 `worker --once` processes."""
    tag = uuid.uuid4().hex
    store = run_dir / "artifacts"
    env = {**os.environ, "TUNER_STORAGE": storage, "TUNER_ARTIFACTS": str(store), TAG_ENV: tag}
    env.pop("PYTHONWARNINGS", None)
    common = [
        *("--cache-dir", str(run_dir / "cache"), "--runs-dir", str(run_dir / "runs")),
        *("--heartbeat-s", str(args.heartbeat_s)),
    ]
    budget = max(1, args.budget // len(QUEUED))
    for i, name in enumerate(QUEUED):
        submit = [
            sys.executable,
            *("-m", "tuner", "submit", "--study", name, "--model", "tiny", "--backend", "null"),
            *("--backend-option", "latency_ms=1", "--max-batch", "4096"),
            *("--max-streams", "8", "--precisions", "fp32,fp16,int8"),
            *("--trials", str(budget), "--duration-s", str(args.duration_s)),
            *("--confirm-runs", "2", "--seed", str(args.seed + i)),
            *("--cache-dir", str(run_dir / "cache")),
        ]
        done = subprocess.run(submit, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"chaos: submit {name} failed: {done.stderr.strip()}", file=sys.stderr)
            return 2
    worker = [sys.executable, "-m", "tuner", "worker", "--once", *common]
    slots = [Slot(f"worker {i}", [*worker, "--worker-name", f"worker {i}"]) for i in (1, 2, 3)]
    rng = random.Random(args.seed)
    tally = Tally()
    started = time.monotonic()
    print(
        f"chaos: queue of {len(QUEUED)} studies x {budget} trials, 3 workers, a fault every "
        f"~{args.every:g} s (seed {args.seed}); logs in {run_dir}",
        flush=True,
    )
    for slot in slots:
        _start(slot, env, run_dir)
    chaos_s = _faults(args, slots, env, run_dir, rng, tally, started)
    for slot in slots:
        if slot.proc is not None:
            slot.proc.kill()
            slot.proc.wait()
    print("chaos: final `worker --once` (no faults)", flush=True)
    final_log = run_dir / "final-worker.log"
    with open(final_log, "wb") as out:
        final = subprocess.run(worker, env=env, stdout=out, stderr=subprocess.STDOUT)
    time.sleep(1.0)
    return queue_report(args, storage, store, tag, tally, chaos_s, final.returncode, budget)


def queue_report(
    args: argparse.Namespace,
    storage: str,
    store: Path,
    tag: str,
    tally: Tally,
    chaos_s: float,
    final_code: int,
    budget: int,
) -> int:
    import optuna
    from optuna.artifacts import get_all_artifact_meta
    from optuna.trial import TrialState

    from tuner.loop import budget_used
    from tuner.queue import FINISHED_AT, state_of
    from tuner.storage import open_storage

    checks: dict[str, bool] = {}
    lost_all = 0
    print()
    print(f"chaos ran {chaos_s:.0f} s; {len(QUEUED)} studies x {budget}, seed {args.seed}")
    print(
        f"kills survived: {tally.kills} ({tally.kills_of_workers} workers, "
        f"{tally.kills_of_children} trial children); SIGSTOP/SIGCONT: {tally.stops}; "
        f"workers restarted: {tally.restarts}"
    )
    for name in QUEUED:
        study = optuna.load_study(study_name=name, storage=open_storage(storage, create=False))
        trials = study.get_trials(deepcopy=False)
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        pruned = [t for t in trials if t.state == TrialState.PRUNED]
        counted_fail = [
            t for t in trials if t.state == TrialState.FAIL and t.number not in retried
        ]
        unfinished = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        enqueued = [t for t in trials if "fixed_params" in t.system_attrs]
        configs = {_key(t.system_attrs["fixed_params"]) for t in enqueued}
        keys = [_key(t.params) for t in complete]
        best = study.user_attrs.get("confirmed_best")
        without_logs = [
            t.number
            for t in complete
            if not any(
                m.filename.endswith("mlperf_log_summary.txt")
                for m in get_all_artifact_meta(t, storage=study._storage)
            )
        ]
        lost = budget - len(complete) - len(pruned)
        lost_all += lost
        print(
            f"{name}: {state_of(study)}; {len(trials)} trials, {len(complete)} COMPLETE, "
            f"{len(pruned)} PRUNED, lost {lost}; confirmed best {best}; complete trials "
            f"without logs in the store: {len(without_logs)}"
        )
        checks[f"{name}: COMPLETE + PRUNED + FAIL (counted) == budget"] = (
            len(complete) + len(pruned) + len(counted_fail) == budget
            and budget_used(study) == budget
        )
        checks[f"{name}: every enqueued configuration COMPLETE exactly once"] = bool(
            configs
        ) and all(keys.count(k) == 1 for k in configs)
        checks[f"{name}: no trial RUNNING or WAITING"] = not unfinished
        checks[f"{name}: done, confirmed best a COMPLETE trial"] = FINISHED_AT in (
            study.user_attrs
        ) and any(t.number == best for t in complete)
        checks[f"{name}: every COMPLETE trial's logs in the store"] = not without_logs
    orphans = _tagged(tag)
    checks["no process of the tuner left"] = not orphans
    checks["the final worker exited 0"] = final_code == 0
    print(f"trials lost: {lost_all}")
    print(f"orphans left: {len(orphans)}" + (f" ({', '.join(orphans)})" if orphans else ""))
    print(f"artifact store: {sum(1 for _ in store.iterdir())} blobs in {store}")
    for what, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    return 0 if all(checks.values()) and tally.kills >= args.min_kills else 1


def _key(params: object) -> str:
    import json

    return json.dumps(params, sort_keys=True)


def _tagged(tag: str) -> list[str]:
    """`pid command` of every live process carrying `tag` in its environment."""
    found = []
    needle = f"{TAG_ENV}={tag}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle not in environ.read_bytes().split(b"\0"):
                continue
            stat = (environ.parent / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        found.append(f"{environ.parent.name} {cmdline(int(environ.parent.name))[:60]}")
    return found


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Kill and pause a 3-worker study at random (seeded) and check that no "
        "trial is lost, the budget is exact and no process is left behind.",
    )
    p.add_argument("--budget", type=int, default=200, help="trials of the study (default 200)")
    p.add_argument(
        "--every", type=float, default=2.0, help="mean seconds between faults (default 2)"
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the faults and the study")
    p.add_argument(
        "--duration-s", type=float, default=1.0, help="LoadGen min duration per run (default 1)"
    )
    p.add_argument(
        "--heartbeat-s", type=int, default=2, help="trial heartbeat (default 2; grace 3x)"
    )
    p.add_argument(
        "--min-kills", type=int, default=50, help="kills the run must survive (default 50)"
    )
    p.add_argument(
        "--max-seconds", type=float, default=900, help="give up after this long (default 900)"
    )
    p.add_argument("--out", help="folder for logs, cache and runs (default a new /tmp folder)")
    p.add_argument(
        "--queue",
        action="store_true",
        help="submit 3 studies (the budget split among them) to the queue and serve it with "
        "3 `worker --once` processes instead",
    )
    return p


if __name__ == "__main__":
    raise SystemExit(main())

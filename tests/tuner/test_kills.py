"""Kills, for real: no process of the tuner outlives its parent, SIGKILL included; a
trial whose worker is gone is failed and retried at once by the next `optimize`; a trial child
killed from outside is measured again; `optimize` waits for a trial RUNNING elsewhere instead
of calling the budget spent; a timeout ends the child's whole process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from optuna.trial import TrialState

from tests.procs import cmdline, descendants
from tests.tuner.test_distributed import (
    assert_exact,
    finish,
    measuring,
    optimize_args,
    processes,
    start,
    the_study,
    trials_of,
    wait_for,
)
from tuner.child import KILLED, call_in_child
from tuner.lifetime import Owner, popen_dies_with_parent, process_start, this_process
from tuner.loop import OWNER, WORKER_DIED, budget_used

__all__ = ["processes"]  # the fixture, imported for the tests below


def gone(pids: list[int], timeout: float = 20) -> list[int]:
    """Those of `pids` still alive after `timeout` s (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in pids if process_start(p) is not None]
        if not alive:
            break
        time.sleep(0.1)
    return alive


# ------------------------------------------------------------------------------- owners


def test_an_owner_is_alive_only_while_that_very_process_runs() -> None:
    me = this_process("optimize")
    assert me.alive() is True and me.local
    assert Owner.from_dict(me.to_dict()) == me
    assert "optimize (pid" in me.describe()

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_start(proc.pid)
    assert started is not None
    dead = Owner(me.host, me.boot, proc.pid, started, "worker 1")
    proc.wait()
    assert dead.alive() is False
    reused = Owner(me.host, me.boot, os.getpid(), me.start + 1)  # same pid, another process
    assert reused.alive() is False
    elsewhere = Owner(socket.gethostname() + "-other", me.boot, os.getpid(), me.start)
    assert elsewhere.alive() is None  # only its heartbeat can tell
    assert Owner.from_dict({"pid": "x"}) is None and Owner.from_dict(None) is None


# ------------------------------------------------------------------- parent-death signal


def test_a_process_started_by_the_tuner_dies_with_its_parent_even_by_sigkill(
    tmp_path: Path,
) -> None:
    """A middle process starts a grandchild the tuner's way (popen_dies_with_parent); SIGKILL
    of the middle process ends the grandchild."""
    pidfile = tmp_path / "grandchild.pid"
    middle_code = (
        "import subprocess, sys, time\n"
        "from tuner.lifetime import popen_dies_with_parent\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],"
        " preexec_fn=popen_dies_with_parent())\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    middle = subprocess.Popen([sys.executable, "-c", middle_code], cwd=Path.cwd())
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline, "the grandchild never started"
            time.sleep(0.05)
        grandchild = int(pidfile.read_text())
        assert process_start(grandchild) is not None
        middle.kill()
        middle.wait()
        assert gone([grandchild]) == []
    finally:
        middle.kill()
        middle.wait()
    assert popen_dies_with_parent() is not None


def _start_grandchild_and_hang(pidfile: str) -> dict[str, object]:
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    Path(pidfile).write_text(str(grandchild.pid))
    time.sleep(300)
    return {}


def test_a_timeout_ends_the_childs_whole_process_group(tmp_path: Path) -> None:
    """A backend that starts processes of its own: the trial's timeout ends them too."""
    pidfile = tmp_path / "grandchild.pid"
    outcome = call_in_child(_start_grandchild_and_hang, (str(pidfile),), timeout_s=30)
    assert outcome.failure == "timeout"
    grandchild = int(pidfile.read_text())
    assert gone([grandchild]) == []


def _die_by_sigkill() -> dict[str, object]:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def _crash() -> dict[str, object]:
    os.abort()
    return {}


def test_a_child_killed_from_outside_is_killed_not_crashed() -> None:
    killed = call_in_child(_die_by_sigkill, (), timeout_s=60)
    assert (killed.failure, killed.reason) == (KILLED, "crashed: killed by SIGKILL")
    crashed = call_in_child(_crash, (), timeout_s=60)
    assert (crashed.failure, crashed.reason) == ("crash", "crashed: killed by SIGABRT")


# ----------------------------------------------------------------- kill -9 of `optimize`


def test_kill_9_of_optimize_leaves_no_process_and_the_rerun_retries_its_trial_at_once(
    tmp_path: Path, cache_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    argv = optimize_args(storage, tmp_path, cache_dir, trials=3, duration_s=2)
    proc = start(argv, tmp_path)
    processes.append(proc)
    (victim,) = wait_for(measuring(storage), "a trial measuring", [proc])  # type: ignore[misc]
    below = descendants(proc.pid)
    assert any("multiprocessing" in cmdline(p) for p in below), [cmdline(p) for p in below]
    proc.send_signal(signal.SIGKILL)  # this process only: its group is not signalled
    proc.wait()
    assert gone(below) == [], [cmdline(p) for p in below]  # the trial child and the tracker
    assert trials_of(storage)[victim.number].state == TrialState.RUNNING

    argv.remove("--quiet")
    rerun = start(argv, tmp_path)  # at once: no heartbeat has gone stale yet
    processes.append(rerun)
    code, _, err = finish(rerun)
    assert code == 0, err
    assert f"trial {victim.number}: optimize (pid {proc.pid}" in err
    assert f"failed as '{WORKER_DIED}', its configuration runs again" in err
    trials = assert_exact(storage, 3)
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs["failure"] == WORKER_DIED
    (retry,) = [t for t in trials if victim.number in t.system_attrs.get("retry_history", ())]
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE
    assert OWNER in retry.user_attrs and "failure" not in retry.user_attrs
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3


def test_a_trial_child_killed_from_outside_is_measured_again(
    tmp_path: Path, cache_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    argv = optimize_args(storage, tmp_path, cache_dir, trials=2, duration_s=2)
    argv.remove("--quiet")
    proc = start(argv, tmp_path)
    processes.append(proc)
    (victim,) = wait_for(measuring(storage), "a trial measuring", [proc])  # type: ignore[misc]
    (child,) = [p for p in descendants(proc.pid) if "spawn_main" in cmdline(p)]
    os.kill(child, signal.SIGKILL)
    code, _, err = finish(proc)
    assert code == 0, err
    assert "crashed: killed by SIGKILL (its configuration runs again)" in err
    trials = assert_exact(storage, 2)
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["failure"] == KILLED
    (retry,) = [t for t in trials if victim.number in t.system_attrs.get("retry_history", ())]
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE


def test_optimize_waits_for_a_trial_running_elsewhere_before_calling_the_budget_spent(
    tmp_path: Path, cache_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """Budget 1, taken by a first `optimize`; a second one started meanwhile says whose trial
    it waits for and ends only once that trial is COMPLETE."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    argv = optimize_args(storage, tmp_path, cache_dir, trials=1, duration_s=4)
    first = start(argv, tmp_path)
    processes.append(first)
    (victim,) = wait_for(measuring(storage), "a trial measuring", [first])  # type: ignore[misc]
    argv.remove("--quiet")
    second = start(argv, tmp_path)
    processes.append(second)
    code, out, err = finish(second)
    assert code == 0, err
    assert f"waiting for trial {victim.number}: optimize (pid {first.pid} on" in err
    assert first.poll() is not None or trials_of(storage)[victim.number].state == (
        TrialState.COMPLETE
    )
    assert finish(first)[0] == 0
    (trial,) = assert_exact(storage, 1)
    assert trial.state == TrialState.COMPLETE
    assert "1 complete" in out


def test_kill_9_of_optimize_with_workers_ends_every_worker_and_trial_child(
    tmp_path: Path, cache_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    argv = [*optimize_args(storage, tmp_path, cache_dir, trials=4, duration_s=3), "--workers", "2"]
    proc = start(argv, tmp_path)
    processes.append(proc)
    wait_for(measuring(storage, count=2), "2 trials measuring", [proc])
    below = descendants(proc.pid)
    workers = [p for p in below if " worker " in cmdline(p)]
    assert len(workers) == 2, [cmdline(p) for p in below]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert gone(below) == [], [cmdline(p) for p in below]

    rerun = start(argv, tmp_path)
    processes.append(rerun)
    code, _, err = finish(rerun)
    assert code == 0, err
    trials = assert_exact(storage, 4)
    died = [t for t in trials if t.user_attrs.get("failure") == WORKER_DIED]
    assert len(died) == 2
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4


def _appears(pattern: str, folder: Path) -> Callable[[], list[Path]]:
    return lambda: sorted(folder.glob(pattern))


def test_kill_9_during_a_server_search_retries_the_trial_and_its_search(
    tmp_path: Path, cache_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    server = ["--scenario", "server", "--latency-ms", "20", "--min-queries", "300"]
    argv = [*optimize_args(storage, tmp_path, cache_dir, trials=2, duration_s=1), *server]
    proc = start(argv, tmp_path)
    processes.append(proc)
    wait_for(_appears("*/trial-*/server-*", tmp_path / "runs"), "a Server run", [proc])
    below = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert gone(below) == []

    rerun = start(argv, tmp_path)
    processes.append(rerun)
    code, _, err = finish(rerun)
    assert code == 0, err
    trials = trials_of(storage)  # (a Server baseline carries a deque timeout: not BASELINE)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert budget_used(the_study(storage)) == 2
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    (killed,) = [t for t in trials if t.user_attrs.get("failure") == WORKER_DIED]
    (retry,) = [t for t in trials if killed.number in t.system_attrs.get("retry_history", ())]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert any(r["scenario"] == "Server" for r in retry.user_attrs["loadgen_runs"])


def test_kill_9_during_confirmation_leaves_no_process_and_the_rerun_finishes_it(
    tmp_path: Path, cache_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    argv = optimize_args(storage, tmp_path, cache_dir, trials=2, duration_s=2)
    argv[argv.index("--confirm-runs") + 1] = "2"
    proc = start(argv, tmp_path)
    processes.append(proc)
    wait_for(_appears("*/confirm-*", tmp_path / "runs"), "a confirmation run", [proc])
    below = descendants(proc.pid)
    assert any("spawn_main" in cmdline(p) for p in below)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert gone(below) == []

    rerun = start(argv, tmp_path)
    processes.append(rerun)
    code, out, err = finish(rerun)
    assert code == 0, err
    trials = assert_exact(storage, 2)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    study = the_study(storage)
    best = study.user_attrs["confirmed_best"]
    (winner,) = [t for t in trials if t.number == best]
    assert len(study.user_attrs[f"confirm:{winner.number}"]) == 3  # own value, 2 repeats
    assert "confirmed: median of 3 runs" in out and "not confirmed" not in out


def test_a_trial_answered_from_an_earlier_one_keeps_its_own_owner(
    tmp_path: Path, cache_dir: Path
) -> None:
    """A repeat copies the earlier trial's measurement, not its owner (a process long gone,
    which would have the repeat failed as 'worker died' while it is being answered)."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    argv = optimize_args(storage, tmp_path, cache_dir, trials=2, duration_s=0.3)
    space = ["--batch-sizes", "1", "--streams", "1,2", "--precisions", "fp32"]
    first = subprocess.run([sys.executable, "-m", "tuner", *argv, *space], cwd=tmp_path)
    assert first.returncode == 0
    argv[argv.index("--trials") + 1] = "4"  # the space holds 2: trials 2 and 3 are copies
    second = start([*argv, *space], tmp_path)
    assert finish(second)[0] == 0
    trials = trials_of(storage)
    owners = [Owner.from_dict(t.user_attrs[OWNER]) for t in trials]
    assert [t.user_attrs.get("duplicate_of") is not None for t in trials] == [0, 0, 1, 1]
    assert {o.pid for o in owners[2:] if o} == {second.pid}
    assert second.pid not in {o.pid for o in owners[:2] if o}

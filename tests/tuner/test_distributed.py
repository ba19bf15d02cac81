"""Several workers on one study, for real: `optimize --workers N`, separate `worker` processes
and concurrent `optimize` runs on PostgreSQL and SQLite; a worker killed with SIGKILL in the
middle of a trial; Ctrl-C as a real SIGINT. The budget must come out exact every time.

The PostgreSQL tests use the session's private server (`postgres_server` in tests/conftest.py;
skipped where PostgreSQL is not installed), each on a database of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from harness.errors import TunerError
from tests.tuner.cli_checks import NULL_OPTIMIZE
from tuner.cli import main
from tuner.config import from_stored
from tuner.loop import budget_used
from tuner.storage import GRACE_FACTOR, open_storage
from tuner.study import prepare

BASELINE = {"batch_size": 1, "streams": 1, "precision": "fp32"}


# ----------------------------------------------------------------------------------- helpers


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty study database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture
def postgres(postgres_server) -> str:  # type: ignore[no-untyped-def]
    """A fresh, empty PostgreSQL database."""
    return postgres_server.create_database()


def optimize_args(
    storage: str, tmp_path: Path, cache_dir: Path, trials: int, duration_s: float = 0.3
) -> list[str]:
    """`optimize` on the simulated backend: 4 batch sizes x 2 streams x 3 precisions; no
    confirmation runs after the budget (they are tests/tuner/test_confirm.py's business)."""
    return [
        *NULL_OPTIMIZE,
        "--trials",
        str(trials),
        "--confirm-runs",
        "0",
        "--duration-s",
        str(duration_s),
        "--storage",
        storage,
        "--cache-dir",
        str(cache_dir),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--quiet",
    ]


def worker_args(storage: str, name: str, tmp_path: Path, cache_dir: Path) -> list[str]:
    return [
        "worker",
        "--study",
        name,
        "--storage",
        storage,
        "--cache-dir",
        str(cache_dir),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--quiet",
    ]


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("TUNER_STORAGE", "PYTHONWARNINGS")}


def start(argv: list[str], cwd: Path) -> subprocess.Popen[str]:
    """`python -m tuner ARGV` in the background, in a session of its own (so that a test can
    signal its whole process group, and no Ctrl-C meant for pytest reaches it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tuner", *argv],
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # A shell that starts the test run in the background ignores SIGINT, and children
        # inherit that; the tuner must see Ctrl-C as a terminal user's tuner would.
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; any still alive at the end are killed, group and all."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def the_study(storage: str) -> optuna.Study:
    """The one study in `storage` (opened the way the tuner opens it: a test polling a database
    that workers are creating must not race them to create Optuna's tables)."""
    store = open_storage(storage, create=False)
    (summary,) = optuna.get_all_study_summaries(store)
    return optuna.load_study(study_name=summary.study_name, storage=store)


def trials_of(storage: str) -> list[FrozenTrial]:
    return the_study(storage).get_trials()


def raise_budget(storage: str, trials: int, tmp_path: Path, cache_dir: Path) -> str:
    """Store a larger budget on the study, through `prepare` (as `optimize` would) but without
    running a trial; the study's name."""
    study = the_study(storage)
    cfg = from_stored(
        study.user_attrs["config"],
        storage=storage,
        name=study.study_name,
        cache_dir=cache_dir,
        runs_dir=tmp_path / "runs",
    )
    prepare(dataclasses.replace(cfg, trials=trials))
    assert the_study(storage).user_attrs["config"]["trials"] == trials
    return study.study_name


def wait_for(
    condition: Callable[[], object],
    what: str,
    procs: list[subprocess.Popen[str]],
    timeout: float = 90,
) -> object:
    """Poll `condition` until it is true; fail early if one of `procs` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout} s")


def measuring(storage: str, count: int = 1) -> Callable[[], list[FrozenTrial]]:
    """A condition: `count` RUNNING trials that chose all their parameters and have a
    heartbeat (so a worker really is in the middle of measuring them)."""

    def check() -> list[FrozenTrial]:
        try:
            study = the_study(storage)
        except (TunerError, ValueError):  # no database or no study yet
            return []
        engine = sqlalchemy.create_engine(storage, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sqlalchemy.text("select trial_id from trial_heartbeats"))
                beating = {row[0] for row in rows}
        finally:
            engine.dispose()
        running = study.get_trials(states=(TrialState.RUNNING,))
        found = [
            t for t in running if t.params.keys() == BASELINE.keys() and t._trial_id in beating
        ]
        return found if len(found) >= count else []

    return check


def assert_exact(storage: str, budget: int) -> list[FrozenTrial]:
    """The study spent exactly its budget: no trial left RUNNING or WAITING, unique numbers,
    the enqueued baseline measured once (or, if it was killed, its retry)."""
    trials = trials_of(storage)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert budget_used(the_study(storage)) == budget
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    enqueued = [
        t
        for t in trials
        if t.system_attrs.get("fixed_params") == BASELINE and t.number not in retried
    ]  # a killed baseline's retry is enqueued with the same parameters: it stands in for it
    assert len(enqueued) == 1, [t.number for t in enqueued]
    assert enqueued[0].state == TrialState.COMPLETE and enqueued[0].params == BASELINE
    return trials


# -------------------------------------------------------------- 1. several workers, one budget


def test_optimize_with_three_workers_on_postgres_spends_the_budget_exactly(
    postgres: str, tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*optimize_args(postgres, tmp_path, cache_dir, trials=9), "--workers", "3"]
    assert main(argv) == 0
    trials = assert_exact(postgres, 9)
    assert len(trials) == 9
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert "9 trials, 9 complete, 0 failed" in capsys.readouterr().out


def test_three_worker_processes_started_at_once_spend_the_budget_exactly(
    storage: str, tmp_path: Path, cache_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    assert main(optimize_args(storage, tmp_path, cache_dir, trials=1)) == 0
    name = raise_budget(storage, 9, tmp_path, cache_dir)
    workers = [
        start(
            [*worker_args(storage, name, tmp_path, cache_dir), "--worker-name", f"w{i}"], tmp_path
        )
        for i in range(3)
    ]
    processes.extend(workers)
    for proc in workers:
        code, _, err = finish(proc)
        assert code == 0, err
    trials = assert_exact(storage, 9)
    assert len(trials) == 9
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_two_optimize_runs_started_at_once_on_a_fresh_database(
    storage: str, tmp_path: Path, cache_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """Both create the database and the study and enqueue the baseline at the same moment."""
    argv = optimize_args(storage, tmp_path, cache_dir, trials=5)
    runs = [start(argv, tmp_path) for _ in range(2)]
    processes.extend(runs)
    for proc in runs:
        code, _, err = finish(proc)
        assert code == 0, err
        assert err == ""
    trials = assert_exact(storage, 5)
    assert len(trials) == 5
    assert all(t.state == TrialState.COMPLETE for t in trials)


# ------------------------------------------------------------- 2. a worker killed mid-trial


def test_a_worker_killed_mid_trial_is_failed_and_its_trial_retried_once(
    storage: str, tmp_path: Path, cache_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    heartbeat = ["--heartbeat-s", "1"]
    argv = [*optimize_args(storage, tmp_path, cache_dir, trials=1, duration_s=1.5), *heartbeat]
    assert main(argv) == 0  # trial 0 (the baseline) COMPLETE
    name = raise_budget(storage, 3, tmp_path, cache_dir)
    worker = start([*worker_args(storage, name, tmp_path, cache_dir), *heartbeat], tmp_path)
    processes.append(worker)
    (victim,) = wait_for(measuring(storage), "a trial measuring", [worker])  # type: ignore[misc]
    complete_before = {t.number for t in trials_of(storage) if t.state == TrialState.COMPLETE}
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and its trial's child
    worker.wait()
    killed_at = time.monotonic()
    assert trials_of(storage)[victim.number].state == TrialState.RUNNING
    # Its heartbeat must be older than the grace period before anyone may call it dead.
    time.sleep(max(0.0, GRACE_FACTOR * 1 + 1.5 - (time.monotonic() - killed_at)))

    # The same command again (budget 3): it fails the stale trial and retries it once.
    argv[argv.index("--trials") + 1] = "3"
    assert main(argv) == 0
    trials = trials_of(storage)
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if victim.number in t.system_attrs.get("retry_history", ())]
    assert len(retries) == 1
    (retry,) = retries
    assert retry.number > victim.number
    assert retry.params == victim.params == killed.params
    assert retry.system_attrs["failed_trial"] == victim.number
    assert retry.state == TrialState.COMPLETE
    complete_after = {t.number for t in trials if t.state == TrialState.COMPLETE}
    assert complete_before <= complete_after
    assert_exact(storage, 3)
    assert len(complete_after) == 3  # the killed trial does not count; its retry does
    assert len(trials) == 4


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def test_optimize_with_workers_reports_a_worker_killed_by_a_signal(
    tmp_path: Path, cache_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """One of `optimize --workers 2`'s workers dies of SIGKILL (the OOM killer, say): the other
    fails its stale trial and retries it, the budget comes out exact, and `optimize` does not
    claim success."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    argv = [
        *optimize_args(storage, tmp_path, cache_dir, trials=4, duration_s=1.5),
        *["--workers", "2", "--heartbeat-s", "1"],
    ]
    proc = start(argv, tmp_path)
    processes.append(proc)
    running = wait_for(measuring(storage, count=2), "2 trials measuring", [proc])
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    victim = workers[0]
    for pid in [victim, *children(victim)]:  # the worker and its trial's child
        os.kill(pid, signal.SIGKILL)
    code, out, err = finish(proc)
    assert code == 128 + signal.SIGKILL, (code, err)
    assert out.startswith("study tiny-offline-null-simulated-cpu"), out
    trials = assert_exact(storage, 4)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1, [(t.number, t.user_attrs, t.system_attrs) for t in failed]
    (killed,) = failed
    assert killed.number in {t.number for t in running}  # type: ignore[union-attr]
    (retry,) = [t for t in trials if killed.number in t.system_attrs.get("retry_history", ())]
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE
    assert len(trials) == 5


# ------------------------------------------------------------------- 3. Ctrl-C, a real SIGINT


@pytest.mark.parametrize(
    ("workers", "kind"), [(1, "sqlite"), (2, "sqlite"), (2, "postgres")], ids=str
)
def test_sigint_stops_optimize_with_130_and_the_study_resumes(
    workers: int,
    kind: str,
    tmp_path: Path,
    cache_dir: Path,
    processes: list[subprocess.Popen[str]],
    request: pytest.FixtureRequest,
) -> None:
    if kind == "sqlite":
        storage = f"sqlite:///{tmp_path / 'study.db'}"
    else:
        storage = request.getfixturevalue("postgres_server").create_database()
    budget = workers + 1  # the interrupted trial(s) count; the re-run measures one more
    argv = [
        *optimize_args(storage, tmp_path, cache_dir, trials=budget, duration_s=1.5),
        "--workers",
        str(workers),
    ]
    proc = start(argv, tmp_path)
    processes.append(proc)
    wait_for(measuring(storage, count=workers), f"{workers} trial(s) measuring", [proc])
    os.kill(proc.pid, signal.SIGINT)  # this process only; it stops its workers itself
    code, out, err = finish(proc, timeout=60)
    assert code == 130, err
    assert out.startswith("study tiny-offline-null-simulated-cpu"), out  # the summary
    assert "Traceback" not in err, err
    trials = trials_of(storage)
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    interrupted = [t for t in trials if t.user_attrs.get("failure") == "interrupted"]
    assert len(interrupted) == workers
    assert all(t.state == TrialState.FAIL for t in interrupted)

    # The database is intact: `studies` lists it ...
    listed = subprocess.run(
        [sys.executable, "-m", "tuner", "studies", "--storage", storage],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert "tiny-offline-null-simulated-cpu" in listed.stdout
    # ... and the same command runs the rest of the budget (an interrupted trial counts).
    again = start(argv, tmp_path)
    processes.append(again)
    code, out, err = finish(again)
    assert code == 0, err
    after = trials_of(storage)
    assert budget_used(the_study(storage)) == budget
    assert len(after) == budget
    assert not [t.number for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert {t.number for t in interrupted} <= {
        t.number for t in after if t.state == TrialState.FAIL
    }


def test_ctrl_c_as_a_trial_is_asked_leaves_no_running_trial(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGINT delivered just after Optuna stored the new trial, before `ask` returned
    (the window an early Ctrl-C of `optimize --workers 2` hits in about one run in six)."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    real_ask = optuna.Study.ask

    def ask(self: optuna.Study, *args: object, **kwargs: object) -> optuna.Trial:
        trial = real_ask(self, *args, **kwargs)  # type: ignore[arg-type]
        if self.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):  # not the first
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs here
        return trial

    monkeypatch.setattr(optuna.Study, "ask", ask)
    argv = optimize_args(storage, tmp_path, cache_dir, trials=3)
    try:
        assert main(argv) == 130
    except KeyboardInterrupt:  # must not end the pytest session
        pytest.fail("KeyboardInterrupt escaped main()")
    monkeypatch.undo()
    trials = trials_of(storage)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    assert main(argv) == 0
    assert budget_used(the_study(storage)) == 3

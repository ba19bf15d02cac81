"""Storage and disk faults under a real study: an SQLite database locked
by another process past the busy timeout, PostgreSQL restarted mid-study, a full disk under
one trial's LoadGen logs, an export killed or out of space. Real processes, signals, SQLite,
PostgreSQL and tmpfs; the tuner runs on the simulated null backend."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from harness.errors import TunerError
from tests.tmpfs import fill, tmpfs
from tests.tuner.cli_checks import NULL_OPTIMIZE, one_error_line, run
from tuner import storage as storage_module

ROOT = Path(__file__).resolve().parents[2]
STUDY = "faults"


def _optimize(url: str, tmp_path: Path, trials: int, *extra: str) -> list[str]:
    return [
        *NULL_OPTIMIZE,
        "--study",
        STUDY,
        "--trials",
        str(trials),
        "--confirm-runs",
        "0",
        "--duration-s",
        "0.2",
        "--storage",
        url,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--quiet",
        *extra,
    ]


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)


# ------------------------------------------------------------------ SQLite locked too long

_HOLD = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    conn.execute("ROLLBACK")
    """
)


@pytest.fixture
def exclusive_lock() -> Iterator[object]:
    """A function that makes another process hold `BEGIN EXCLUSIVE` on a database file."""
    holders: list[subprocess.Popen[str]] = []

    def hold(path: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        holders.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        return proc

    yield hold
    for proc in holders:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=30)


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("command", ["report", "optimize"])
def test_sqlite_locked_past_the_busy_timeout_is_one_line_and_loses_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    exclusive_lock: object,
    command: str,
) -> None:
    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    assert run(_optimize(url, tmp_path, 2)) == 0
    before = [(t.number, t.state, t.params) for t in _trials(url)]
    assert [s for _, s, _ in before] == [TrialState.COMPLETE] * 2
    capsys.readouterr()

    monkeypatch.setattr(storage_module, "SQLITE_LOCK_TIMEOUT_S", 1)
    holder = exclusive_lock(db)  # type: ignore[operator]
    if command == "report":
        argv = ["report", "--storage", url, "--study", STUDY, "--out", str(tmp_path / "rep")]
    else:
        argv = _optimize(url, tmp_path, 4)
    code = run(argv)
    err = capsys.readouterr().err
    assert code != 0
    line = one_error_line(err)
    assert f"storage: {db} is locked by another process (waited 1 s)" in line, line
    _release(holder)

    assert [(t.number, t.state, t.params) for t in _trials(url)] == before  # nothing lost
    assert run(_optimize(url, tmp_path, 4)) == 0  # and the study goes on
    assert [t.state for t in _trials(url)] == [TrialState.COMPLETE] * 4


def test_a_lock_taken_mid_study_ends_it_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process takes an exclusive lock once the first trial is stored and holds it
    past the busy timeout: `optimize` stops with one line; what it stored stays."""
    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    monkeypatch.setattr(storage_module, "SQLITE_LOCK_TIMEOUT_S", 1)
    grabber = subprocess.Popen(
        [sys.executable, "-c", _GRAB_AFTER_FIRST_TRIAL, str(db)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        code = run(_optimize(url, tmp_path, 6))
    finally:
        grabber.kill()
        grabber.wait(timeout=30)
    assert grabber.stdout is not None
    locked = "locked" in grabber.stdout.read()
    err = capsys.readouterr().err
    if not locked:
        pytest.skip("the study finished before the other process could lock it")
    assert code != 0
    line = one_error_line(err)
    assert f"storage: {db} is locked by another process (waited 1 s)" in line, line
    trials = _trials(url)
    assert trials[0].state == TrialState.COMPLETE
    assert run(_optimize(url, tmp_path, 6)) == 0
    assert sum(t.state == TrialState.COMPLETE for t in _trials(url)) == 6


_GRAB_AFTER_FIRST_TRIAL = textwrap.dedent(
    """
    import sqlite3, sys, time
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0.1)
            done = conn.execute("select count(*) from trials where state = 'COMPLETE'")
            if done.fetchone()[0] >= 1:
                conn.execute("BEGIN EXCLUSIVE")
                print("locked", flush=True)
                time.sleep(30)  # far past the busy timeout; killed by the test
                break
            conn.close()
        except sqlite3.Error:
            pass
        time.sleep(0.01)
    """
)


def test_locked_error_names_the_file_and_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_module, "SQLITE_LOCK_TIMEOUT_S", 7)
    error = storage_module.locked_error(Path("/data/study.db"))
    assert isinstance(error, TunerError)
    assert str(error).startswith("storage: /data/study.db is locked by another process")
    assert "(waited 7 s)" in str(error)
    locked = sqlite3.OperationalError("database is locked")
    assert storage_module.is_locked(locked)
    assert not storage_module.is_locked(sqlite3.OperationalError("no such table: trials"))


# ------------------------------------------------------------ a full disk under one trial


def test_a_full_disk_fails_that_trial_with_the_reason_and_the_study_goes_on(
    tmp_path: Path,
) -> None:
    """Trial 0's LoadGen log folder is a real, full tmpfs; the other trials write elsewhere."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = tmp_path / "runs" / STUDY / "trial-0000"
    with tmpfs(first, 64):
        fill(first)
        code = run(_optimize(url, tmp_path, 4))
    trials = _trials(url)
    assert code == 0
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    reason = str(trials[0].user_attrs.get("fail_reason"))
    assert "LoadGen could not write its logs to" in reason and str(first) in reason, reason
    assert "No space left on device" in reason and "\n" not in reason


# ------------------------------------------------------------------ PostgreSQL restarted

_RESTART_WINDOW_S = 120


@pytest.mark.slow
def test_postgres_restarted_mid_study_loses_nothing(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`optimize` runs in its own process; the server is restarted (`pg_ctl restart -m fast`,
    which ends every session) while a trial is measured, twice. The study finishes its budget.

    Only restarts between statements are survived: one that kills a statement in flight
    still ends the command (pool_pre_ping replaces idle connections only)."""
    url = postgres_server.create_database()
    trials = 8
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuner",
            *_optimize(url, tmp_path, trials, "--duration-s", "1"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    restarts = 0
    try:
        deadline = time.monotonic() + _RESTART_WINDOW_S
        seen = -1
        while restarts < 2 and proc.poll() is None and time.monotonic() < deadline:
            running = _measuring_trial(url)
            if running is not None and running > seen:
                seen = running
                time.sleep(0.3)  # into its 1 s LoadGen run, while the worker waits on it
                _restart(postgres_server)
                restarts += 1
            time.sleep(0.05)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert restarts == 2, f"the study ended before the server could be restarted twice: {err}"
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    states = [t.state for t in _trials(url)]
    assert states == [TrialState.COMPLETE] * trials, states


def _restart(server) -> None:  # type: ignore[no-untyped-def]
    """`pg_ctl restart -m fast` (every session ends), same data folder, port and options;
    with -l, or the new server would keep pg_ctl's output pipes open."""
    data, log = str(server.data), str(server.log)
    server._run("pg_ctl", "-D", data, "-l", log, "-m", "fast", "-w", "restart")


def _measuring_trial(url: str) -> int | None:
    """The number of the RUNNING trial whose configuration is stored (it is being measured),
    read with a connection of our own."""
    import sqlalchemy

    query = sqlalchemy.text(
        "select max(t.number) from trials t where t.state = 'RUNNING' and "
        "(select count(*) from trial_params p where p.trial_id = t.trial_id) >= 3"
    )
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            row = conn.execute(query).fetchone()
    except sqlalchemy.exc.SQLAlchemyError:
        return None  # the study's tables are not there yet, or the server is restarting
    finally:
        engine.dispose()
    return None if row is None or row[0] is None else int(row[0])


# ---------------------------------------------------------------------- exports


def _study_with_a_trial(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert run(_optimize(url, tmp_path, 1)) == 0
    return url


def test_export_on_a_full_disk_keeps_the_old_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _study_with_a_trial(tmp_path)
    with tmpfs(tmp_path / "out", 64) as out:
        target = out / "user.conf"
        target.write_text("the old export\n")
        fill(out)
        capsys.readouterr()
        code = run(
            [
                "export",
                "--storage",
                url,
                "--study",
                STUDY,
                "--format",
                "json",
                "--out",
                str(target),
            ]
        )
        err = capsys.readouterr().err
        assert code != 0
        line = one_error_line(err)
        assert f"cannot write {target}: No space left on device" in line, line
        assert target.read_text() == "the old export\n"
        assert sorted(p.name for p in out.iterdir()) == ["filler", "user.conf"]


_EXPORT_KILLED = textwrap.dedent(
    """
    import os, signal, sys
    real_replace = os.replace
    def replace(src, dst):  # a real SIGKILL of this process just before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    from tuner.cli import main
    main(sys.argv[1:])
    """
)


def test_an_export_killed_before_its_rename_leaves_the_old_file_whole(tmp_path: Path) -> None:
    url = _study_with_a_trial(tmp_path)
    target = tmp_path / "best.json"
    target.write_text("the old export\n")
    argv = ["export", "--storage", url, "--study", STUDY, "--format", "json", "--out", str(target)]
    proc = subprocess.run(
        [sys.executable, "-c", _EXPORT_KILLED, *argv], cwd=ROOT, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == "the old export\n"
    assert run(argv) == 0  # the next export replaces it whole
    assert '"batch_size"' in target.read_text()


def test_trtexec_export_refuses_a_line_break_from_the_study(tmp_path: Path) -> None:
    """A device name with a line break in the database would put a command after a comment."""
    from tests.tuner.test_export import _add, _study
    from tuner.export import export

    study = _study(tmp_path, "offline", device="Tesla T4\nrm -rf ~")
    _add(study, 8, 2, "fp16", 500.0)
    with pytest.raises(TunerError, match="control character") as info:
        export(study, "trtexec", tmp_path / "build.sh")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "build.sh").exists()

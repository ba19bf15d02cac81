"""optuna-dashboard reading the SQLite file of a running study must not break the study."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
from optuna.trial import TrialState


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dashboard_polling_a_running_sqlite_study(tmp_path: Path, cache_dir: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    # Pruning off: the test counts 8 trials measured in full.
    optimize = [
        sys.executable, "-m", "tuner", "optimize", "--model", "tiny", "--backend", "null",
        "--batch-sizes", "1,2,4,8", "--streams", "1,2", "--trials", "8", "--workers", "2",
        "--duration-s", "1.5", "--storage", storage, "--cache-dir", str(cache_dir),
        "--runs-dir", str(tmp_path / "runs"), "--quiet", "--prune", "off",
    ]  # fmt: skip
    tuner = subprocess.Popen(optimize, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    # The study exists once the first trial runs; then the dashboard reads it all along.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "shared.db").exists():
        time.sleep(0.2)
    port = _free_port()
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "tuner", "dashboard", "--storage", storage, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    answers = 0
    try:
        while tuner.poll() is None and time.monotonic() < deadline + 120:
            try:
                url = f"http://127.0.0.1:{port}/api/studies"
                with urllib.request.urlopen(url, timeout=5) as reply:
                    studies = json.loads(reply.read())
                answers += bool(studies.get("study_summaries"))
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        _out, err = tuner.communicate(timeout=120)
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
        if tuner.poll() is None:
            tuner.kill()
    assert tuner.returncode == 0, err
    assert answers > 0  # the dashboard really read the study while it ran
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    assert len(trials) == 8
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert "database is locked" not in err

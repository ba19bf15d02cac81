"""`optimize --workers N`: N local `python -m tuner worker` processes on one study.

The storage URL reaches them through the environment (never a command line, which `ps`
shows with its password). Ctrl-C reaches them too: a terminal signals the whole process
group, and a SIGINT sent to this process alone is forwarded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

STORAGE_ENV = "TUNER_STORAGE"


def run_workers(
    count: int,
    storage: str,
    study: str,
    cache_dir: Path,
    runs_dir: Path,
    heartbeat_s: int,
    quiet: bool,
) -> int:
    """Start `count` workers, wait for all of them; 130 if interrupted, else the worst code."""
    env = {**os.environ, STORAGE_ENV: storage}
    argv = [
        sys.executable,
        "-m",
        "tuner",
        "worker",
        "--study",
        study,
        "--cache-dir",
        str(cache_dir),
        "--runs-dir",
        str(runs_dir),
        "--heartbeat-s",
        str(heartbeat_s),
    ]
    if quiet:
        argv.append("--quiet")
    procs = [
        subprocess.Popen([*argv, "--worker-name", f"worker {i + 1}"], env=env)
        for i in range(count)
    ]
    interrupted = False
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        interrupted = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        codes = [p.wait() for p in procs]
    if interrupted or 130 in codes:
        return 130
    failed = [code for code in codes if code != 0]
    if not failed:
        return 0
    # Popen says -N for a worker killed by signal N (max() would call that success); the
    # shell's 128 + N instead.
    return max(128 - code if code < 0 else code for code in failed)

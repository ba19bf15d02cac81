"""Process lifetimes: every process the tuner starts ends with its parent (SIGKILL included),
and a trial records which process owns it, so that a trial whose owner is gone can be told
apart from one still being measured.

Linux ends a child when its parent dies through the parent-death signal (`prctl
PR_SET_PDEATHSIG`); elsewhere the owner check below still finds the dead, but a child outlives
its parent. A trial's owner is named by host, boot, pid and the process's start time (a pid
alone is reused); on this host `/proc` says whether that very process still exists.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from harness.pids import pid_exists

_PR_SET_PDEATHSIG = 1


@cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved once (before any fork: `preexec_fn` must not load libraries)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when its parent ends; if the parent
    (`parent_pid`) has already ended, end now. Call it first thing in a child process.

    The signal follows the parent *thread* that started this process: the tuner starts its
    children from the main thread only."""
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


def popen_dies_with_parent() -> Callable[[], None]:
    """`preexec_fn` for subprocess.Popen: the started process gets SIGKILL when this one ends.
    Only a prctl call between fork and exec (libc resolved beforehand), which is safe."""
    parent = os.getpid()
    _prctl()  # resolve now, in the parent

    def arm() -> None:
        die_with_parent(parent)

    return arm


def lead_own_group() -> None:
    """Make this process the leader of a new process group, so that `kill_group` ends it and
    every process it starts (a backend's own helpers) at once."""
    with contextlib.suppress(OSError):  # already a group or session leader
        os.setpgid(0, 0)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the process group led by `pid`, or to `pid` alone when it leads none
    (it may have died before it made its group). A process already gone is not an error."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    try:
        if group == pid:
            os.killpg(group, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --- trial owners ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """The process measuring a trial: `name` says which worker ('optimize', 'worker 2')."""

    host: str
    boot: str
    pid: int
    start: int
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Owner | None:
        """The owner stored on a trial, or None for anything else (a trial made before owners
        were recorded, or by another tool)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                host=str(data["host"]),
                boot=str(data.get("boot", "")),
                pid=int(data["pid"]),
                start=int(data["start"]),
                name=str(data.get("name", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def local(self) -> bool:
        """Whether the owner ran on this host (same name, same boot)."""
        return self.host == socket.gethostname() and self.boot == boot_id()

    def alive(self) -> bool | None:
        """True or False for an owner on this host; None for one elsewhere (only its
        heartbeat tells)."""
        if not self.local:
            return None
        return process_start(self.pid) == self.start

    def same_process(self, other: Owner | None) -> bool:
        """Whether `other` is this very process (host, boot, pid and its start time)."""
        return other is not None and (self.host, self.boot, self.pid, self.start) == (
            other.host,
            other.boot,
            other.pid,
            other.start,
        )

    def describe(self) -> str:
        """`worker 2 (pid 4711 on host-a)`."""
        who = self.name or "a tuner process"
        return f"{who} (pid {self.pid} on {self.host})"


def this_process(name: str = "") -> Owner:
    start = process_start(os.getpid())
    return Owner(socket.gethostname(), boot_id(), os.getpid(), start or 0, name)


@cache
def boot_id() -> str:
    """This boot's id: a host name is not enough once the machine has rebooted (pids repeat)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None when there is
    no such process. Without /proc: 0 for a process that exists (start unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return 0 if pid_exists(pid) else None
    # Field 2 (the command) is in parentheses and may hold spaces: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has ended; only its parent has not reaped it yet
        return None
    return int(fields[19])  # field 22 of the whole line: starttime

"""Run one measurement in a child process with a timeout, so a native crash, an out-of-memory
or a hung device becomes a failed trial with a reason instead of taking the study down.

The child sends its result back as JSON (never a pickle) over a pipe. It dies with its parent
(a parent-death signal: a killed worker leaves no trial measuring on), leads its own process
group (a timeout ends it and whatever it started) and ignores Ctrl-C (the parent's business).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from harness.config import RunConfig, ScenarioSpec
from tuner.lifetime import die_with_parent, kill_group, lead_own_group

#: The failure of a configuration the model cannot take (harness VariantUnavailable): an
#: infeasible trial, not a failed one.
INFEASIBLE = "infeasible"
#: The failure of a child ended by a signal from outside (SIGKILL: an operator, the kernel's
#: out-of-memory killer; SIGTERM): says nothing sure about the configuration, so it is retried.
KILLED = "killed"
#: Seconds a child gets to exit after it has sent its result, or after SIGTERM.
_GRACE_S = 10.0


@dataclass(frozen=True)
class ChildOutcome:
    """`result` (Result.to_dict()) on success; otherwise `failure` ('error', 'out of memory',
    'timeout', 'crash', 'killed', 'interrupted', 'infeasible') and a one-line `reason`."""

    result: dict[str, Any] | None
    failure: str | None = None
    reason: str = ""
    seconds: float = 0.0


def measure_in_child(run: RunConfig, spec: ScenarioSpec, timeout_s: float) -> ChildOutcome:
    """`harness.measure(run, spec)` in a spawned process, killed after `timeout_s`."""
    return call_in_child(_measure, (run, spec), timeout_s)


def call_in_child(
    target: Callable[..., dict[str, Any]],
    args: tuple[Any, ...],
    timeout_s: float | None,
    quiet: bool = True,
) -> ChildOutcome:
    """`target(*args)` (a module-level function returning JSON-safe data) in a spawned process,
    killed after `timeout_s` (None: no limit)."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child,
        args=(target, args, quiet, sender, os.getpid()),
        name="trial",
        daemon=True,
    )
    started = time.monotonic()
    process.start()
    sender.close()
    try:
        ready = receiver.poll(timeout_s)
        payload = receiver.recv_bytes() if ready else None
    except EOFError:  # the child died without a word
        payload = None
        ready = True
    except KeyboardInterrupt:
        _stop(process)
        return ChildOutcome(None, "interrupted", "interrupted", time.monotonic() - started)
    finally:
        receiver.close()
    seconds = time.monotonic() - started
    if payload is None:
        if not ready:
            _stop(process)
            return ChildOutcome(None, "timeout", f"timeout after {timeout_s:g} s", seconds)
        process.join(_GRACE_S)
        code = process.exitcode
        failure = KILLED if code in (-signal.SIGKILL, -signal.SIGTERM) else "crash"
        return ChildOutcome(None, failure, _exit_reason(code), seconds)
    process.join(_GRACE_S)
    if process.is_alive():
        _stop(process)
    message = json.loads(payload.decode())
    if message["ok"]:
        return ChildOutcome(message["result"], seconds=seconds)
    return ChildOutcome(None, message["failure"], message["reason"], seconds)


def _measure(run: RunConfig, spec: ScenarioSpec) -> dict[str, Any]:
    from harness.runner import measure

    return measure(run, spec).to_dict()


def _child(
    target: Callable[..., dict[str, Any]],
    args: tuple[Any, ...],
    quiet: bool,
    sender: Connection,
    parent: int,
) -> None:
    """The child's body: run, send JSON, exit. Ctrl-C is the parent's business."""
    die_with_parent(parent)
    lead_own_group()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from harness.cli_common import setup_logging
    from harness.errors import OutOfMemory, TunerError, VariantUnavailable

    setup_logging(debug=False, quiet=quiet)
    try:
        message: dict[str, Any] = {"ok": True, "result": target(*args)}
    except OutOfMemory as exc:
        message = {"ok": False, "failure": "out of memory", "reason": str(exc)}
    except VariantUnavailable as exc:
        message = {"ok": False, "failure": INFEASIBLE, "reason": str(exc)}
    except TunerError as exc:
        message = {"ok": False, "failure": "error", "reason": str(exc)}
    except Exception as exc:
        message = {"ok": False, "failure": "error", "reason": f"{type(exc).__name__}: {exc}"}
    sender.send_bytes(json.dumps(message, default=str, allow_nan=True).encode())
    sender.close()


def _stop(process: multiprocessing.process.BaseProcess) -> None:
    """SIGTERM to the child's whole process group, SIGKILL after the grace period."""
    if process.pid is None:
        return
    kill_group(process.pid, signal.SIGTERM)
    process.join(_GRACE_S)
    if process.is_alive():
        kill_group(process.pid, signal.SIGKILL)
        process.join()


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "crashed: the child did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"crashed: killed by {name}"
    return f"crashed: exit code {code} without a result"

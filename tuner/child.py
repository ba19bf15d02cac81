"""Measure in a child process with a timeout, so a native crash, an out-of-memory or a hung
device becomes a failed trial with a reason instead of taking the study down: `WarmWorker`
keeps one such process across measurements (what `optimize` uses), `measure_in_child` starts
one per measurement (`--isolate-trials`), `call_in_child` runs any function so.

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

#: The failure of a configuration the model cannot take, whatever its batch or streams: its
#: precision's file cannot be made (harness VariantUnavailable), or its runtime cannot read
#: the file (harness ModelUnreadable, `ChildOutcome.infeasible_on`). An infeasible trial, not
#: a failed one.
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
    #: An infeasible configuration's runtime where only it fails (it cannot read the file);
    #: None where every runtime would (the precision's file cannot be made).
    infeasible_on: str | None = None


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
        outcome = _answer(process, receiver, timeout_s, started)
    finally:
        receiver.close()
    if process.exitcode is None:
        process.join(_GRACE_S)
        if process.is_alive():
            _stop(process)
    return outcome


def _answer(
    process: multiprocessing.process.BaseProcess,
    receiver: Connection,
    timeout_s: float | None,
    started: float,
) -> ChildOutcome:
    """The child's answer to one request, or why there is none: a timeout or Ctrl-C (the
    child is stopped), or the child's death (crash, or killed from outside)."""
    try:
        ready = receiver.poll(timeout_s)
        payload = receiver.recv_bytes() if ready else None
    except (EOFError, OSError):  # the child died without a word (a socket pair: reset)
        payload = None
        ready = True
    except KeyboardInterrupt:
        _stop(process)
        return ChildOutcome(None, "interrupted", "interrupted", time.monotonic() - started)
    seconds = time.monotonic() - started
    if payload is None:
        if not ready:
            _stop(process)
            return ChildOutcome(None, "timeout", f"timeout after {timeout_s:g} s", seconds)
        process.join(_GRACE_S)
        code = process.exitcode
        failure = KILLED if code in (-signal.SIGKILL, -signal.SIGTERM) else "crash"
        return ChildOutcome(None, failure, _exit_reason(code), seconds)
    message = json.loads(payload.decode())
    if message["ok"]:
        return ChildOutcome(message["result"], seconds=seconds)
    return ChildOutcome(
        None, message["failure"], message["reason"], seconds, message.get("infeasible_on")
    )


class WarmWorker:
    """A measuring process kept across trials: `harness.measure` with a `harness.warm.Warm`,
    so consecutive configurations that can share a loaded model (same variant, precision,
    device; another batch size or stream count where the backend allows) do not load it again,
    and each variant's agreement with fp32 is measured once. Called like `measure_in_child`.

    Isolation holds as with a child per trial: each measurement has its own timeout; after any
    failure (crash, out of memory, timeout, error) the process is ended and the next
    measurement starts a fresh one. It dies with this process and leads its own process group.
    """

    def __init__(self, quiet: bool = True) -> None:
        self.quiet = quiet
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        #: Processes started so far (1 + the fresh ones after failures).
        self.started = 0

    def __call__(self, run: RunConfig, spec: ScenarioSpec, timeout_s: float) -> ChildOutcome:
        started = time.monotonic()
        if self._process is not None and not self._process.is_alive():
            self.close()  # ended between requests (killed from outside): start afresh
        for attempt in (1, 2):
            if self._process is None:
                self._start()
            assert self._process is not None and self._conn is not None
            try:
                self._conn.send((run, spec))
                break
            except OSError:  # it died just now: once more with a fresh process
                self.close()
                if attempt == 2:
                    raise
        assert self._process is not None and self._conn is not None
        outcome = _answer(self._process, self._conn, timeout_s, started)
        if outcome.result is None:
            self.close()  # whatever failed, the next measurement gets a fresh process
        return outcome

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe(duplex=True)
        process = context.Process(
            target=_serve,
            args=(child_end, self.quiet, os.getpid()),
            name="trial-worker",
            daemon=True,
        )
        process.start()
        child_end.close()
        self._process, self._conn = process, parent_end
        self.started += 1

    def close(self) -> None:
        """End the process: it exits when its pipe closes; stopped if it does not."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is not None and process.pid is not None:
            process.join(_GRACE_S)
            if process.is_alive():
                _stop(process)

    def __enter__(self) -> WarmWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    _become_child(parent, quiet)
    sender.send_bytes(_run(target, args))
    sender.close()


def _serve(conn: Connection, quiet: bool, parent: int) -> None:
    """A warm worker's body: measure each (run, spec) received, answer in JSON, until the
    pipe closes."""
    _become_child(parent, quiet)
    from harness.warm import Warm

    warm = Warm()
    try:
        while True:
            try:
                run, spec = conn.recv()
            except (EOFError, OSError):
                return
            conn.send_bytes(_run(_measure_warm, (run, spec, warm)))
    finally:
        warm.close()


def _measure_warm(run: RunConfig, spec: ScenarioSpec, warm: Any) -> dict[str, Any]:
    from harness.runner import measure

    return measure(run, spec, warm).to_dict()


def _become_child(parent: int, quiet: bool) -> None:
    die_with_parent(parent)
    lead_own_group()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from harness.cli_common import setup_logging

    setup_logging(debug=False, quiet=quiet)


def _run(target: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> bytes:
    """`target(*args)` as the JSON message the parent reads: its result, or the failure."""
    from harness.errors import ModelUnreadable, OutOfMemory, TunerError, VariantUnavailable

    try:
        message: dict[str, Any] = {"ok": True, "result": target(*args)}
    except OutOfMemory as exc:
        message = {"ok": False, "failure": "out of memory", "reason": str(exc)}
    except VariantUnavailable as exc:
        message = {"ok": False, "failure": INFEASIBLE, "reason": str(exc)}
    except ModelUnreadable as exc:
        message = {"ok": False, "failure": INFEASIBLE, "reason": str(exc)}
        message["infeasible_on"] = exc.runtime
    except TunerError as exc:
        message = {"ok": False, "failure": "error", "reason": str(exc)}
    except Exception as exc:
        message = {"ok": False, "failure": "error", "reason": f"{type(exc).__name__}: {exc}"}
    return json.dumps(message, default=str, allow_nan=True).encode()


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

"""One LoadGen test: settings in, LoadGen's own log files out, parsed into a `LoadgenRun`."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

from harness.errors import BackendError, ScenarioError
from harness.loadgen_log import LoadgenRun, read_run
from harness.sut import LoadgenSut

log = logging.getLogger("harness")

_MIN_FREE_BYTES = 4096
"""Free space (one block) below which a folder counts as full for LoadGen's logs."""


def test_settings(scenario: str, **fields: Any) -> Any:
    """A `mlperf_loadgen.TestSettings` in PerformanceOnly mode with these fields set."""
    import mlperf_loadgen as lg

    settings = lg.TestSettings()
    settings.scenario = {"offline": lg.TestScenario.Offline, "server": lg.TestScenario.Server}[
        scenario
    ]
    settings.mode = lg.TestMode.PerformanceOnly
    for key, value in fields.items():
        setattr(settings, key, value)
    return settings


def run_test(sut: LoadgenSut, settings: Any, out_dir: Path) -> LoadgenRun:
    """Run one LoadGen test against `sut` and read its result from `out_dir`.

    A backend failure during the run is re-raised (as the BackendError it was, or wrapped)
    after LoadGen has finished, so the run never hangs on a lost completion.
    """
    import mlperf_loadgen as lg

    _prepare_log_dir(out_dir)
    count = sut.samples.count
    lg_sut = lg.ConstructFastSUT(sut.issue, sut.flush)
    qsl = lg.ConstructQSL(count, count, _noop, _noop)
    try:
        log_settings = lg.LogSettings()
        log_settings.log_output.outdir = str(out_dir)
        log_settings.log_output.copy_summary_to_stdout = False
        log_settings.enable_trace = False
        lg.StartTestWithLogSettings(lg_sut, qsl, settings, log_settings)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroyFastSUT(lg_sut)
    if sut.error is not None:
        error = sut.error
        if isinstance(error, BackendError):
            raise error
        raise BackendError(f"the backend failed during the LoadGen run: {error!r}") from error
    _check_space(out_dir)  # LoadGen says nothing when its writes fail
    try:
        return read_run(out_dir)
    except ScenarioError:
        raise
    except Exception as exc:  # a log LoadGen wrote but we cannot read
        raise ScenarioError(f"cannot read LoadGen's log in {out_dir}: {exc}") from exc


def _prepare_log_dir(out_dir: Path) -> None:
    """Create `out_dir` without stale logs and prove a block can be written there: LoadGen
    aborts the process when it cannot open its log files, and writes nothing, silently, when
    the disk is full. ScenarioError naming the folder and the reason otherwise."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)  # LoadGen does not create it
        for stale in out_dir.glob("mlperf_log_*"):
            stale.unlink()
        probe = out_dir / f".write-probe-{os.getpid()}"
        try:
            with open(probe, "wb") as f:  # a full disk refuses the write (or the flush)
                f.write(b"\0" * _MIN_FREE_BYTES)
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise _log_error(out_dir, exc.strerror or str(exc)) from None


def _check_space(out_dir: Path) -> None:
    """ScenarioError when the disk under `out_dir` filled up during the run: LoadGen's log
    writes then failed without a word and its logs are cut short."""
    try:
        stat = os.statvfs(out_dir)
    except OSError as exc:
        raise _log_error(out_dir, exc.strerror or str(exc)) from None
    if stat.f_bavail * stat.f_frsize < _MIN_FREE_BYTES:
        raise _log_error(out_dir, os.strerror(errno.ENOSPC))


def _log_error(out_dir: Path, reason: str) -> ScenarioError:
    return ScenarioError(f"LoadGen could not write its logs to {out_dir}: {reason}")


def _noop(indices: list[int]) -> None:
    """QSL load/unload: every sample is already in RAM."""

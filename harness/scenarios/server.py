"""Server: Poisson arrivals at a target QPS; VALID when LoadGen says so (duration, query count,
latency percentile under the bound, early stopping). `find_max_qps` searches the largest VALID
target between 0 and an upper bound (the Offline throughput), to a relative tolerance."""

from __future__ import annotations

import logging
from pathlib import Path

from harness.config import ScenarioSpec
from harness.loadgen_log import LoadgenRun
from harness.scenarios._loadgen import run_test, test_settings
from harness.scenarios.outcome import Outcome
from harness.sut import BatchingSUT

log = logging.getLogger("harness")

#: The first probe, as a share of the upper bound; then halving down until a VALID run.
FIRST_PROBE = 0.85
STEP_DOWN = 0.6
#: Give up (no VALID QPS) below this share of the upper bound.
FLOOR = 0.01


def run_at(sut: BatchingSUT, spec: ScenarioSpec, qps: float, out_dir: Path) -> LoadgenRun:
    """One Server run at `qps`."""
    settings = test_settings(
        "server",
        server_target_qps=float(qps),
        server_target_latency_ns=int(spec.latency_ms * 1e6),
        server_target_latency_percentile=spec.percentile / 100.0,
        min_duration_ms=int(spec.min_duration_s * 1000),
        min_query_count=spec.server_min_queries,
        # Queries that fall due together reach the SUT in one issue call (latency still counts
        # from each query's scheduled time), as NVIDIA's MLPerf harness does.
        server_coalesce_queries=True,
    )
    result = run_test(sut, settings, out_dir)
    p = result.percentile_ms(spec.percentile)
    log.info(
        "server %10.1f QPS: %-7s p%g %s ms",
        qps,
        "VALID" if result.valid else "INVALID",
        spec.percentile,
        f"{p:.2f}" if p is not None else "?",
    )
    return result


def run(sut: BatchingSUT, spec: ScenarioSpec, out_dir: Path) -> Outcome:
    """One Server run at `spec.target_qps`; the score is LoadGen's scheduled QPS."""
    assert spec.target_qps is not None
    result = run_at(sut, spec, spec.target_qps, out_dir / "server")
    score = result.scheduled_qps or spec.target_qps
    return Outcome(valid=result.valid, score=score, primary=result, runs=(result,))


def find_max_qps(
    sut: BatchingSUT,
    spec: ScenarioSpec,
    upper_qps: float,
    out_dir: Path,
    first_guess: float | None = None,
) -> Outcome:
    """The largest target QPS LoadGen reports VALID, within `spec.qps_tolerance`.

    `upper_qps` (the Offline throughput) brackets the answer from above. Probes step down
    geometrically until one is VALID, then bisect the VALID/INVALID bracket.
    """
    low, low_run = 0.0, None
    high = upper_qps
    qps = first_guess if first_guess and 0 < first_guess < upper_qps else FIRST_PROBE * high
    runs: list[LoadgenRun] = []
    while len(runs) < spec.max_search_runs:
        result = run_at(sut, spec, qps, out_dir / f"server-{len(runs) + 1:02d}")
        runs.append(result)
        if result.valid:
            low, low_run = qps, result
        else:
            high = qps
        if low > 0 and high - low <= spec.qps_tolerance * low:
            break
        if low > 0:
            qps = (low + high) / 2
        else:
            qps = high * STEP_DOWN
            too_long = not spec.compliance and spec.server_min_queries / qps > spec.max_run_s
            if qps < FLOOR * upper_qps or too_long:
                break
    if low_run is None:
        return Outcome(
            valid=False,
            score=0.0,
            primary=runs[-1] if runs else None,
            runs=tuple(runs),
            note=f"no VALID target QPS found down to {high:.1f}",
        )
    note = "" if high - low <= spec.qps_tolerance * low else "search stopped at the run limit"
    # MLPerf reports a Server result as LoadGen's "Scheduled samples per second".
    score = low_run.scheduled_qps or low
    return Outcome(valid=True, score=score, primary=low_run, runs=tuple(runs), note=note)

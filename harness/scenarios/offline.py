"""Offline: one LoadGen query holding `1.1 x min_duration x offline_expected_qps` samples; the
score is LoadGen's samples per second."""

from __future__ import annotations

import logging
from pathlib import Path

from harness.config import COMPLIANCE_OFFLINE_SAMPLES, ScenarioSpec
from harness.scenarios._loadgen import run_test, test_settings
from harness.scenarios.outcome import Outcome
from harness.sut import LoadgenSut

log = logging.getLogger("harness")

#: Expected QPS over the warm-up estimate: too low an expected QPS ends the run before its
#: minimum duration (INVALID); too high only lengthens it.
HEADROOM = 1.3


def run(sut: LoadgenSut, spec: ScenarioSpec, estimate_sps: float, out_dir: Path) -> Outcome:
    """Measure Offline throughput. A query too small to meet the minimum duration is re-sized
    from the rate the run measured and rerun (at most twice)."""
    expected = spec.expected_qps or HEADROOM * estimate_sps
    runs = []
    for attempt in (1, 2, 3):
        settings = test_settings(
            "offline",
            min_duration_ms=int(spec.min_duration_s * 1000),
            min_query_count=COMPLIANCE_OFFLINE_SAMPLES if spec.compliance else 1,
            offline_expected_qps=float(expected),
        )
        result = run_test(sut, settings, out_dir / f"offline-{attempt}")
        runs.append(result)
        log.info(
            "offline run %d: %.1f samples/s, %s (expected_qps %.1f)",
            attempt,
            result.samples_per_second or 0.0,
            "VALID" if result.valid else "INVALID",
            expected,
        )
        sps = result.samples_per_second or 0.0
        if result.min_duration_met is not False or spec.expected_qps or sps <= 0:
            break
        expected = HEADROOM * sps
    return Outcome(
        valid=result.valid,
        score=result.samples_per_second or 0.0,
        primary=result,
        runs=tuple(runs),
    )

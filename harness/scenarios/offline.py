"""Offline: one LoadGen query holding `1.1 x min_duration x offline_expected_qps` samples
(LoadGen's own sizing), rounded up to whole rounds of batches (`batch_size x streams` samples
each); the score is LoadGen's samples per second.

Why the rounding: a run ends when its last sample completes. A query that leaves the last batch
part full still pays that batch's whole time (a static engine pads it), and one that leaves
fewer batches than streams for the last round idles the other streams meanwhile. In a run of a
few seconds that costs a large batch up to a few percent of its score, so short tuning runs
would favour small batches for nothing but the end of the run. Whole rounds keep every stream
busy with full batches to the end (they still finish apart by their own jitter)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from harness.config import COMPLIANCE_OFFLINE_SAMPLES, ScenarioSpec
from harness.scenarios._loadgen import run_test, test_settings
from harness.scenarios.outcome import Outcome
from harness.sut import LoadgenSut

log = logging.getLogger("harness")

#: Expected QPS over the warm-up estimate: too low an expected QPS ends the run before its
#: minimum duration (INVALID); too high only lengthens it.
HEADROOM = 1.3
#: LoadGen's Offline query: this many times min_duration x offline_expected_qps samples.
QUERY_SLACK = 1.1


def query_samples(spec: ScenarioSpec, expected_qps: float, batch_slots: int) -> int:
    """The samples of the Offline query: LoadGen's own count (at least MLPerf's 24,576 under
    `--compliance`), rounded up to a multiple of `batch_slots` (batch size x streams)."""
    wanted = int(QUERY_SLACK * spec.min_duration_s * expected_qps)  # LoadGen truncates too
    if spec.compliance:
        wanted = max(wanted, COMPLIANCE_OFFLINE_SAMPLES)
    slots = max(1, batch_slots)
    return max(slots, slots * math.ceil(wanted / slots))


def run(sut: LoadgenSut, spec: ScenarioSpec, estimate_sps: float, out_dir: Path) -> Outcome:
    """Measure Offline throughput. A query too small to meet the minimum duration is re-sized
    from the rate the run measured and rerun (at most twice)."""
    expected = spec.expected_qps or HEADROOM * estimate_sps
    runs = []
    for attempt in (1, 2, 3):
        settings = test_settings(
            "offline",
            min_duration_ms=int(spec.min_duration_s * 1000),
            # Offline's min_query_count is its minimum sample count: the query's size.
            min_query_count=query_samples(spec, expected, sut.batch_slots),
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

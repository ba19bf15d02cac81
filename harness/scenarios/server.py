"""Server: Poisson arrivals at a target QPS; VALID when LoadGen says so (duration, query count,
latency percentile under the bound, early stopping). `find_max_qps` searches the largest target
VALID `spec.answer_runs` times (default twice) between its lowest load (`lowest_qps`) and an
upper bound (the Offline throughput), to a relative tolerance; a bound missed at the lowest
load ends it at once, out of reach."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

from harness.config import ScenarioSpec
from harness.loadgen_log import LoadgenRun
from harness.scenarios._loadgen import run_test, test_settings
from harness.scenarios.outcome import Outcome
from harness.sut import LoadgenSut

log = logging.getLogger("harness")

#: The first probe without a guess, as a share of the upper bound.
FIRST_PROBE = 0.85
#: Each step away from the first probe is GROWTH x the previous one, starting at the tolerance
#: (confirming a guess); without a guess, at GROWTH**BLIND_STEPS x the tolerance.
GROWTH = 2.0
BLIND_STEPS = 3
#: The lowest target, as a share of the upper bound (`lowest_qps`): at 1% of the Offline
#: throughput about one query in a hundred finds the SUT busy, so the queue is essentially
#: empty and a p99 over the bound there is the service time's own, not a wait's.
FLOOR = 0.01

#: Given a run's target QPS and what LoadGen measured, a better guess at the answer (None:
#: no better guess; 0.0: no target meets the bound, however low), e.g. the queueing model
#: refitted to the run.
Refine = Callable[[float, LoadgenRun], float | None]


def run_at(sut: LoadgenSut, spec: ScenarioSpec, qps: float, out_dir: Path) -> LoadgenRun:
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


def run(sut: LoadgenSut, spec: ScenarioSpec, out_dir: Path) -> Outcome:
    """One Server run at `spec.target_qps`; the score is LoadGen's scheduled QPS."""
    assert spec.target_qps is not None
    result = run_at(sut, spec, spec.target_qps, out_dir / "server")
    score = result.scheduled_qps or spec.target_qps
    return Outcome(valid=result.valid, score=score, primary=result, runs=(result,))


def lowest_qps(spec: ScenarioSpec, upper_qps: float) -> float:
    """The search's lowest load: the lowest target `find_max_qps` runs, the higher of two floors.
    FLOOR x `upper_qps`, where the queue is essentially empty (a run lower down would measure
    the same service times), and, unless `spec.compliance`, the target whose run of
    `spec.server_min_queries` lasts `spec.max_run_s` (any lower one would take longer). Steps
    down stop there, not below; a run at or under it that misses the bound while no target
    has passed ends the search: no target it may try can meet the bound."""
    lowest = FLOOR * upper_qps
    if not spec.compliance:
        lowest = max(lowest, spec.server_min_queries / spec.max_run_s)
    return lowest


def find_max_qps(
    sut: LoadgenSut,
    spec: ScenarioSpec,
    upper_qps: float,
    out_dir: Path,
    first_guess: float | None = None,
    refine: Refine | None = None,
) -> Outcome:
    """The largest target QPS LoadGen reports VALID `spec.answer_runs` times (default twice),
    within `spec.qps_tolerance` of the smallest INVALID one (or of `upper_qps`).

    `upper_qps` (the Offline throughput) brackets the answer from above and is never probed.
    The first probe is `first_guess` (e.g. `harness.queueing.predict_max_qps`) or FIRST_PROBE x
    the bound, capped a tolerance below the bound and raised to the lowest load. From there
    probes step away, up while VALID and down while INVALID, by steps growing from the
    tolerance; once a VALID and an INVALID run bracket the answer, they bisect it. The answer
    is then run again until it has passed `spec.answer_runs` times: near the edge one run
    passes or fails by chance, and a target that fails a further run is INVALID (the search
    goes on below it). With the default two, a good guess costs three runs: VALID at the
    guess, INVALID one tolerance above, VALID again at the guess.

    Steps down end at the lowest load (`lowest_qps`). A run there (or under it) that misses
    the bound while nothing has passed ends the search at once, INVALID, with a note naming
    the percentile it measured and its QPS: the bound is out of reach for this configuration.

    `refine`, called after each run while the answer is bracketed on one side only, may
    return a better guess (the queueing model refitted to the run's measured latency): the
    next probe goes there when it lies beyond the tolerance on the side the run points to
    (above a VALID run, below an INVALID one); a guess within one tolerance of a VALID run
    sends the next probe one tolerance above it, to bracket the answer at once; a guess of 0.0
    after an INVALID run sends it to the lowest load.
    """
    tol = spec.qps_tolerance
    lowest = lowest_qps(spec, upper_qps)
    search = _Bracket(upper_qps, tol, first_guess, spec.answer_runs, lowest)
    qps = search.first
    runs: list[LoadgenRun] = []
    missed_lowest = False
    while len(runs) < spec.max_search_runs:
        result = run_at(sut, spec, qps, out_dir / f"server-{len(runs) + 1:02d}")
        runs.append(result)
        search.record(qps, result.valid, result)
        if search.converged():
            break
        # The slack absorbs rounding: a probe clamped to the lowest load counts as at it.
        missed_lowest = search.low == 0 and qps <= lowest * (1 + 1e-9)
        if missed_lowest:
            break
        hint = refine(qps, result) if refine is not None and search.one_sided() else None
        qps = search.next_probe(hint)
    low_run = search.low_run
    if low_run is None:
        note = (
            out_of_reach(spec, qps, runs[-1])
            if missed_lowest
            else f"no VALID target QPS found down to {search.high:.1f}"
        )
        primary = runs[-1] if runs else None
        return Outcome(valid=False, score=0.0, primary=primary, runs=tuple(runs), note=note)
    note = "" if search.converged() else "search stopped at the run limit"
    # MLPerf reports a Server result as LoadGen's "Scheduled samples per second".
    score = low_run.scheduled_qps or search.low
    return Outcome(valid=True, score=score, primary=low_run, runs=tuple(runs), note=note)


def out_of_reach(spec: ScenarioSpec, qps: float, run: LoadgenRun) -> str:
    """The note of a search whose lowest-load run missed the bound: what it measured there."""
    pct = f"p{spec.percentile:g}"
    measured = run.percentile_ms(spec.percentile)
    figure = f"{pct} {measured:.2f} ms" if measured is not None else f"{pct} not logged"
    return (
        f"bound out of reach: no VALID target QPS; even at the search's lowest load, "
        f"{qps:.1f} QPS, {figure} misses the {spec.latency_ms:g} ms bound"
    )


class _Bracket:
    """The search's state: the VALID runs by target, the smallest INVALID target or the bound
    (`high`), and how many steps it has taken away from the first probe. `low`, the answer so
    far, is the largest target below `high` whose every run was VALID; `lowest`, the lowest
    target a step down may reach (`lowest_qps`)."""

    def __init__(
        self,
        upper: float,
        tolerance: float,
        guess: float | None,
        answer_runs: int,
        lowest: float,
    ) -> None:
        self.upper, self.tolerance, self.answer_runs = upper, tolerance, answer_runs
        self.lowest = lowest
        self.high = upper
        self.passed: dict[float, list[LoadgenRun]] = {}
        if guess is not None and guess > 0:
            first, self.steps = guess, 0
        else:
            first, self.steps = FIRST_PROBE * upper, BLIND_STEPS
        # Not under the lowest load, nor within a tolerance of the bound (which wins).
        self.first = min(max(first, lowest), upper / (1 + tolerance))

    @property
    def low(self) -> float:
        return max(self.passed, default=0.0)

    @property
    def low_run(self) -> LoadgenRun | None:
        """The answer's VALID run of lowest scheduled QPS (the conservative one)."""
        runs = self.passed.get(self.low)
        return min(runs, key=lambda r: r.scheduled_qps or 0.0) if runs else None

    def record(self, qps: float, valid: bool, run: LoadgenRun) -> None:
        if valid and qps < self.high:
            self.passed.setdefault(qps, []).append(run)
        elif not valid:
            self.high = min(self.high, qps)
            self.passed = {q: r for q, r in self.passed.items() if q < qps}

    def bracketed(self) -> bool:
        # The slack absorbs rounding: a step of exactly the tolerance converges.
        low, high = self.low, self.high
        return low > 0 and high - low <= self.tolerance * low * (1 + 1e-9)

    def converged(self) -> bool:
        return self.bracketed() and len(self.passed[self.low]) >= self.answer_runs

    def one_sided(self) -> bool:
        """Only VALID or only INVALID targets so far (below the bound)."""
        return (self.low > 0) != (self.high < self.upper)

    def next_probe(self, hint: float | None = None) -> float:
        """The answer again once bracketed; else up from a VALID guess, down from an INVALID
        one (to `hint` where it lies beyond a tolerance step; never under `lowest`, where a
        hint of 0 goes), or the bracket's midpoint."""
        low, high, tol = self.low, self.high, self.tolerance
        if self.bracketed():
            return low
        step = 1 + tol * GROWTH**self.steps
        if low > 0 and high < self.upper:
            return _midpoint(low, high)
        self.steps += 1
        if low > 0:  # nothing INVALID yet: blind steps never pass the bound's midpoint
            if hint:  # the refitted model may go up to a step under the bound
                return min(max(hint, low * (1 + tol)), high / (1 + tol))
            return min(low * step, _midpoint(low, high))
        if hint is not None:  # 0: the refitted model finds no target, so the lowest load
            return max(min(hint, high / (1 + tol)), self.lowest)
        return max(high / step, self.lowest)


def _midpoint(low: float, high: float) -> float:
    """Geometric while the bracket spans over 2x, arithmetic once it is narrower."""
    return math.sqrt(low * high) if high > 2 * low else (low + high) / 2

"""Server: Poisson arrivals at a target QPS; VALID when LoadGen says so (duration, query count,
latency percentile under the bound, early stopping). `find_max_qps` searches between its lowest
load (`lowest_qps`) and an upper bound (the Offline throughput) in one of two ways:

- by the late count, where LoadGen's early stopping lets a run's queries miss the bound (at
  least MIN_LATE of them: p90 from 200 queries, p99 from 2,010, compliance runs): the count
  of queries over the bound rises smoothly with the load, so the search aims at the target
  whose count is LATE_AIM of the allowed one and reports a VALID run in LATE_BAND of it (as a
  line through the runs agrees): a margin below the edge, in two or three runs;
- by bracketing, otherwise (p99 with 600 queries lets no query run late: one run's verdict is
  all a run says): the largest target VALID `spec.answer_runs` times (default twice), to a
  relative tolerance.

A bound missed at the lowest load ends either at once, out of reach."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.config import ScenarioSpec
from harness.loadgen_log import LoadgenRun
from harness.queueing import allowed_late
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

#: The late-count search: it aims at the target whose run has LATE_AIM x the late queries
#: early stopping allows and accepts a VALID run within LATE_BAND of them. At p90 with 600
#: queries (43 allowed) runs at one target vary by a few late queries and the count grows
#: ~10% per 1% of load; a run over 80% of the allowance passes again only ~85-90% of the
#: time, one around 65% nearly always (benchmarks/RESULTS.md, "Server edge").
LATE_AIM = 0.75
LATE_BAND = (0.65, 0.85)
#: The fewest late queries early stopping must allow for the late-count search; below it a
#: run's count says too little and the search brackets instead.
MIN_LATE = 10
#: d ln(late + 1) / d ln(QPS): the prior slope, with one run and no model to say otherwise,
#: and the range a fitted slope is clamped to. Measured near the edge at p90 with 600 queries:
#: 7-13 (a flat, noisy 3 for batch 4); a fit through noisy runs a percent apart can say 50,
#: and its steps would crawl.
ELASTICITY = 10.0
ELASTICITY_RANGE = (3.0, 20.0)
#: The late-count search moves at most this factor from its last probe.
MAX_STEP = 1.25
#: The spread of loads (relative) under which the slope of the runs near the aim is noise;
#: also how far under a failed target the next probe stays at least.
MIN_SPREAD = 0.01

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
        "server %10.1f QPS: %-7s p%g %s ms%s",
        qps,
        "VALID" if result.valid else "INVALID",
        spec.percentile,
        f"{p:.2f}" if p is not None else "?",
        f" ({result.why_invalid(spec.percentile)})" if not result.valid else "",
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
    by_late_count: bool = True,
) -> Outcome:
    """The largest target QPS that meets the bound: by the late count where early stopping
    allows at least MIN_LATE late queries per run (`late_count_search`; `by_late_count` False:
    never), else the largest target LoadGen reports VALID `spec.answer_runs` times (default
    twice), within `spec.qps_tolerance` of the smallest INVALID one (or of `upper_qps`).

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
    if by_late_count and late_allowance(spec) >= MIN_LATE:
        return late_count_search(sut, spec, upper_qps, out_dir, first_guess, refine)
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
            out_of_reach(spec, qps, runs[-1], runs)
            if missed_lowest
            else f"no VALID target QPS found down to {search.high:.1f}" + _rejected(runs)
        )
        primary = runs[-1] if runs else None
        return Outcome(valid=False, score=0.0, primary=primary, runs=tuple(runs), note=note)
    note = "" if search.converged() else "search stopped at the run limit"
    # MLPerf reports a Server result as LoadGen's "Scheduled samples per second".
    score = low_run.scheduled_qps or search.low
    return Outcome(valid=True, score=score, primary=low_run, runs=tuple(runs), note=note)


def late_allowance(spec: ScenarioSpec) -> int:
    """How many queries of a run of `spec.server_min_queries` may miss the bound and the run
    still pass LoadGen's early stopping (`harness.queueing.allowed_late`)."""
    return allowed_late(spec.server_min_queries, spec.percentile)


def late_count_search(
    sut: LoadgenSut,
    spec: ScenarioSpec,
    upper_qps: float,
    out_dir: Path,
    first_guess: float | None = None,
    refine: Refine | None = None,
) -> Outcome:
    """`find_max_qps` by the late count: the target whose run has LATE_AIM x the late queries
    early stopping allows (`late_allowance`), reported from a VALID run whose count lies in
    LATE_BAND of the allowance, as does the count a line through two or more runs puts there
    (its scheduled QPS, as always). One run's count is one noisy sample; the line pools them.

    The first probe is `first_guess` (or FIRST_PROBE x `upper_qps`), within the lowest load and
    a tolerance under the bound. Each next probe solves ln(late + 1) = ln(aim + 1) on the line
    (`_LateAim._line`): through the centroid of the runs near the aim at their fitted slope,
    else through the two runs that bracket it, else from the run nearest the other side at the
    slope to its neighbour or, with none, the slope `refine`'s first guess implies (the
    refitted model's max QPS is where about the whole allowance runs late) or ELASTICITY. An
    INVALID run counts as at least one over the allowance, a VALID run over a failed target is
    left out of the line, and no probe goes within MIN_SPREAD of a target that failed, or over
    it. Where the line points at or over a failed target (`_LateAim.held`: the count jumps
    rather than grows, and the line would creep down MIN_SPREAD a run), or would probe again
    beside a VALID run under the band, the search bisects instead, between the highest VALID
    target under the band and the lowest past the aim (failed, or VALID over the band), and
    answers `_LateAim.best` once they lie within MIN_SPREAD of their midpoint. Steps go at
    most MAX_STEP from a point whose count is within 2x of the aim's, GROWTH from further away.

    A VALID run under the band a tolerance under the bound, or over it at the lowest load,
    is the answer too (the search can go no further); an INVALID run at the lowest load with
    nothing VALID ends the search out of reach, as `find_max_qps` does. At the run limit the
    answer is the safest VALID run (`_LateAim.best`), with a note.
    """
    lowest = lowest_qps(spec, upper_qps)
    cap = upper_qps / (1 + spec.qps_tolerance)
    aim = _LateAim(late_allowance(spec), spec.percentile)
    qps = min(max(first_guess or FIRST_PROBE * upper_qps, lowest), cap)
    runs: list[LoadgenRun] = []
    while len(runs) < spec.max_search_runs:
        result = run_at(sut, spec, qps, out_dir / f"server-{len(runs) + 1:02d}")
        runs.append(result)
        share = aim.record(qps, result)
        late = result.overlatency_query_count
        log.info("server: %s late queries, %.0f%% of those allowed", late, 100 * share)
        low, high = LATE_BAND
        at_cap, at_floor = qps >= cap * (1 - 1e-9), qps <= lowest * (1 + 1e-9)
        in_band = low <= share <= high and aim.settled(qps)
        if result.valid and (in_band or (share < low and at_cap) or (share > high and at_floor)):
            return Outcome(True, result.scheduled_qps or qps, result, tuple(runs))
        if at_floor and not any(r.valid for r in runs):
            note = out_of_reach(spec, qps, result)
            return Outcome(False, 0.0, result, tuple(runs), note=note)
        hint = refine(qps, result) if refine is not None and len(runs) == 1 else None
        qps = min(max(aim.next_probe(hint), lowest), cap)
        lo, hi = aim.bracket()
        repeat = aim.repeats_under_band(qps)
        if lo is not None and hi is not None and hi / lo <= (1 + MIN_SPREAD) ** 2:
            # Closed: a VALID run under the band within MIN_SPREAD of one past the aim. Where
            # the line points elsewhere it is noise (seen on a real CPU: 82.0 and 83.3 QPS
            # probed under a VALID 85.3 closed by a failed 86.7, then 85.3 answered).
            answer = aim.best()
            assert answer is not None  # the run at `lo`
            return Outcome(True, answer.scheduled_qps or qps, answer, tuple(runs))
        if aim.held or repeat:
            # The line points at or over a failed target, or asks again where a run came in
            # under the band: the count jumps rather than grows here, and a line through it
            # would creep down MIN_SPREAD a run (seen on a real CPU: eight runs 1% apart, each
            # INVALID). Bracket the edge instead, down to MIN_SPREAD.
            if lo is not None and hi is not None:
                qps = math.sqrt(lo * hi)
            elif repeat:  # nothing to bisect, and the line asks for a run it has
                answer = aim.best()
                if answer is not None:
                    return Outcome(True, answer.scheduled_qps or qps, answer, tuple(runs))
    best = aim.best()
    if best is None:
        lowest_run = min(r.target_qps or qps for r in runs)
        note = f"no VALID target QPS found down to {lowest_run:.1f}" + _rejected(runs)
        return Outcome(False, 0.0, runs[-1], tuple(runs), note=note)
    note = "search stopped at the run limit"
    return Outcome(True, best.scheduled_qps or best.target_qps or 0.0, best, tuple(runs), note)


class _LateAim:
    """The late-count search's runs as points (ln QPS, ln(late + 1)), late counts scaled to a
    run of `allowed`'s length; the line through them near the aim; where the next probe goes."""

    def __init__(self, allowed: int, percentile: float) -> None:
        self.allowed, self.percentile = allowed, percentile
        self.goal = math.log(LATE_AIM * allowed + 1)
        self.points: list[tuple[float, float, LoadgenRun]] = []
        #: The refitted model's max QPS after the first run (where about the whole allowance
        #: runs late): the slope's prior while the runs cannot say it.
        self.hint: float | None = None
        #: Whether the last `next_probe` was held under a failed target: the line pointed at
        #: or over it, so the runs contradict the line (a count that jumps, not grows).
        self.held = False

    def record(self, qps: float, run: LoadgenRun) -> float:
        """Add a run; its late count as a share of what early stopping allows it."""
        allowed = allowed_late(run.query_count or 0, self.percentile)
        allowed = allowed if allowed >= 1 else self.allowed
        share = (run.overlatency_query_count or 0) / allowed
        if not run.valid:
            share = max(share, (allowed + 1) / allowed)
        self.points.append((math.log(qps), math.log(share * self.allowed + 1), run))
        return share

    def settled(self, qps: float) -> bool:
        """Whether the line through two or more runs puts `qps`'s late count in the band: one
        run's count is one noisy sample, a line through several pools them."""
        if len(self.points) < 2:
            return False
        x0, y0, slope = self._line()
        share = (math.exp(y0 + slope * (math.log(qps) - x0)) - 1) / self.allowed
        return LATE_BAND[0] <= share <= LATE_BAND[1]

    def next_probe(self, hint: float | None) -> float:
        """Where the line meets the aim, at most a step from the point it starts from (MAX_STEP
        where that point's late count is within 2x of the aim's, GROWTH further away) and
        MIN_SPREAD under the lowest target that failed."""
        if hint and hint > 0 and self.hint is None:
            self.hint = hint
        x0, y0, slope = self._line()
        step = math.log(GROWTH if abs(y0 - self.goal) >= math.log(2) else MAX_STEP)
        x = x0 + min(max((self.goal - y0) / slope, -step), step)
        # Never again at or over a target that failed: MIN_SPREAD under the lowest one.
        cap = self._failed() - math.log(1 + MIN_SPREAD)
        self.held = x >= cap
        return math.exp(min(x, cap))

    def _failed(self) -> float:
        """The lowest target that failed (ln QPS); infinite where none did."""
        return min((p[0] for p in self.points if not p[2].valid), default=math.inf)

    def repeats_under_band(self, qps: float) -> bool:
        """Whether a VALID run under the band already stands within half of MIN_SPREAD of
        `qps`: another run there would tell the line nothing new. Where a failed target holds
        the probe under it (a late count that jumps rather than grows, or noise: seen on a
        real CPU, four VALID runs in a row under one failed target to the run limit)."""
        x, floor = math.log(qps), math.log(LATE_BAND[0] * self.allowed + 1)
        near = math.log(1 + MIN_SPREAD) / 2
        return any(p[2].valid and p[1] < floor and abs(p[0] - x) <= near for p in self.points)

    def bracket(self) -> tuple[float | None, float | None]:
        """The edge's bracket: the highest target of `_answerable` and the lowest past the aim
        (`_past`)."""
        under, past = self._answerable(), self._past()
        lo = math.exp(max(p[0] for p in under)) if under else None
        return lo, math.exp(past) if math.isfinite(past) else None

    def _past(self) -> float:
        """The lowest target (ln QPS) past the aim: failed, or VALID with a count over the
        band; infinite where none is. A VALID run over the band is no floor to bisect up from
        (seen on a real CPU: 40 of 43 late at 93.5 QPS, 23 at 89.4; bisecting from 93.5 spent
        two runs above it)."""
        ceiling = math.log(LATE_BAND[1] * self.allowed + 1)
        past = [p[0] for p in self.points if not p[2].valid or p[1] > ceiling]
        return min(past, default=math.inf)

    def _answerable(self) -> list[tuple[float, float, LoadgenRun]]:
        """The VALID runs under every target past the aim (so none over the band)."""
        past = self._past()
        return [p for p in self.points if p[2].valid and p[0] < past]

    def _line(self) -> tuple[float, float, float]:
        """A point (x, y) and a slope. With runs on both sides of the aim whose late counts are
        within 2x of the aim's: their centroid and least-squares slope (the prior's where their
        loads lie within MIN_SPREAD). Else, with runs on both sides of the aim: the two
        nearest it on either side, from the one nearer the aim. Else from the run nearest the
        other side (the highest load under the aim, the lowest over it), at the slope to its
        neighbour where both counted late queries, or the prior's. Slopes are clamped to
        ELASTICITY_RANGE."""
        goal = self.goal
        # A VALID run over a target that failed contradicts it (it ran before the machine
        # slowed, or by luck) and would pull the line over the failure: left out.
        failed = self._failed()
        points = [p for p in self.points if not (p[2].valid and p[0] > failed)]
        near = [p for p in points if abs(p[1] - goal) <= math.log(2)]
        below = [p for p in points if p[1] <= goal]
        above = [p for p in points if p[1] > goal]
        if any(p[1] <= goal for p in near) and any(p[1] > goal for p in near):
            xs, ys = [p[0] for p in near], [p[1] for p in near]
            x0, y0 = sum(xs) / len(xs), sum(ys) / len(ys)
            if max(xs) - min(xs) >= math.log(1 + MIN_SPREAD):
                sxy = sum((x - x0) * (y - y0) for x, y in zip(xs, ys, strict=True))
                slope = sxy / sum((x - x0) ** 2 for x in xs)
            else:
                slope = self._prior(x0, y0)
        elif below and above and max(p[0] for p in below) < min(p[0] for p in above):
            (xb, yb, _), (xa, ya, _) = (
                max(below, key=lambda p: p[0]),
                min(above, key=lambda p: p[0]),
            )
            slope = (ya - yb) / (xa - xb)
            x0, y0 = (xb, yb) if goal - yb <= ya - goal else (xa, ya)
        else:
            if below and above:  # noise: the count fell with the load
                x0, y0, _ = min(points, key=lambda p: abs(p[1] - goal))
            elif below:
                x0, y0, _ = max(below, key=lambda p: p[0])
            else:
                x0, y0, _ = min(above, key=lambda p: p[0])
            others = [p for p in points if p[0] != x0 and p[1] > 0]
            if y0 > 0 and others:
                x1, y1, _ = min(others, key=lambda p: abs(p[0] - x0))
                slope = (y1 - y0) / (x1 - x0)
            else:
                slope = self._prior(x0, y0)
        if not slope > 0:
            slope = self._prior(x0, y0)
        return x0, y0, min(max(slope, ELASTICITY_RANGE[0]), ELASTICITY_RANGE[1])

    def _prior(self, x0: float, y0: float) -> float:
        """The slope from (x0, y0) to the refitted model's max QPS with the whole allowance
        late, where that rises; else ELASTICITY."""
        if self.hint and not math.isclose(math.log(self.hint), x0):
            slope = (math.log(self.allowed + 1) - y0) / (math.log(self.hint) - x0)
            if slope > 0:
                return slope
        return ELASTICITY

    def best(self) -> LoadgenRun | None:
        """The answer of a search that ran out of runs or closed its bracket, the safest VALID
        run: the highest under every target past the aim (`_answerable`); else the highest
        VALID run under every failed target; else the highest VALID run."""
        failed = self._failed()
        valid = [p for p in self.points if p[2].valid]
        safest = self._answerable() or [p for p in valid if p[0] < failed] or valid
        return max(safest, key=lambda p: p[0])[2] if safest else None


def out_of_reach(
    spec: ScenarioSpec, qps: float, run: LoadgenRun, runs: Sequence[LoadgenRun] = ()
) -> str:
    """The note of a search whose lowest-load run was INVALID: what it measured there, and
    why LoadGen judged it so where the percentile itself met the bound (early stopping, too
    few queries, too short); and, where the search had VALID runs (`runs`), why none of them
    is the answer."""
    pct = f"p{spec.percentile:g}"
    measured = run.percentile_ms(spec.percentile)
    start = (
        f"bound out of reach: no VALID target QPS; even at the search's lowest load, {qps:.1f} QPS"
    )
    if measured is not None and measured <= spec.latency_ms:
        note = f"{start}, the run was INVALID: {run.why_invalid(spec.percentile)}"
    else:
        figure = f"{pct} {measured:.2f} ms" if measured is not None else f"{pct} not logged"
        note = f"{start}, {figure} misses the {spec.latency_ms:g} ms bound"
    return note + _rejected(runs, "and the lowest load failed")


def _rejected(runs: Sequence[LoadgenRun], why: str = "") -> str:
    """Where a search that answers nothing had VALID runs: which, and why none is the answer
    (`; its VALID runs (at 32.6, 33.2 QPS) were not taken: ...`); "" where it had none."""
    passed = sorted({round(r.target_qps or 0.0, 1) for r in runs if r.valid})
    if not passed:
        return ""
    because = "the answer must lie under every target that failed"
    return (
        f"; its VALID runs (at {', '.join(f'{q:g}' for q in passed)} QPS) were not taken: "
        f"{because}{', ' + why if why else ''}"
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

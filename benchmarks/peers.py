"""The peers the benchmarks compare the tuner with, as their projects document and code them:
pure search logic, the measuring left to a callable, so that `tuner_efficiency.py` replays them
on recorded landscapes and `server_search.py` drives them with real LoadGen runs.

Configuration search (one measurement = one trial's run):

- `quick_search`: Triton Model Analyzer's quick search ("a hill climbing algorithm ... greater
  than 95% of the maximum objective value ... while needing to search less than 10% of the
  configuration space", `docs/config_search.md`), ported from
  `model_analyzer/config/generate/quick_run_config_generator.py` and `neighborhood.py`
  (triton-inference-server/model_analyzer, commit 63a0fec, 2026-04-28).
- `plain_tpe`: Optuna's `TPESampler(seed=...)` with its defaults, ask and tell, no enqueued
  baseline, no repeat guard, no confirmation; the best single measurement is declared.
- `exhaustive_grid`: NVIDIA's MLPerf autotuner (`scripts/autotune/grid.py`: the cartesian
  product of the space) with every point measured `repeats` times, as vLLM's `bench sweep`
  runs each point (`--num-runs`, default 3); the best median is declared.

Server max-QPS search:

- `interpolation_search`: vLLM's `bench sweep serve_sla` (`vllm/benchmarks/sweep/serve_sla.py`,
  `solve_sla`, and `sla_sweep.py`): probe the upper end, then the lower end, then solve a
  monotone cubic (PCHIP) interpolant of the SLA margin (measured percentile - bound) against the
  rate for its first root (rounded down to the lattice of rates it probes); stop when the
  lowest failing and highest passing rates are one lattice step apart; report the highest
  passing rate.
- `reliable_edge`: the issue's reference, the highest target whose runs pass at least
  `needed` of `repeats` times, walked in geometric steps from a start.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: A configuration as the peers see it: one index per dimension of the space.
Coordinate = tuple[int, ...]
#: One measurement: (objective value, passing the constraints), or None when the run failed.
Measurement = tuple[float, bool] | None

# Model Analyzer's constants (model_analyzer/constants.py) and Neighborhood.TRANSLATION_LIST.
MA_RADIUS = 3
MA_MIN_INITIALIZED = 3
MA_TRANSLATION = (0.09, 0.3, 1.0)


@dataclass
class QuickResult:
    """What a quick search measured, in order, and what it declares best (None: nothing
    passed)."""

    measured: list[Coordinate] = field(default_factory=list)
    best: Coordinate | None = None
    #: Every measurement taken, by configuration.
    data: dict[Coordinate, Measurement] = field(default_factory=dict)


def _distance(a: Sequence[int], b: Sequence[int]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def ma_steps(dimensions: int, radius: int) -> list[list[int]]:
    """Every step vector within `radius`, in the order Model Analyzer's
    `Neighborhood._get_potential_steps` lists them (its sign flips mutate the vector in
    place, which decides the order and so the tie-breaks of
    `_pick_fast_mode_coordinate_to_initialize`)."""
    result: list[list[int]] = []

    def signs(current: list[int], index: int) -> None:
        if index + 1 == len(current):
            result.append(list(current))
            if current[index]:
                current[index] = -current[index]
                result.append(list(current))
        else:
            signs(current, index + 1)
            if current[index]:
                current[index] = -current[index]
                signs(current, index + 1)

    def permute(current: list[int], index: int) -> None:
        for i in range(radius + 1):
            current[index] = i
            if index == len(current) - 1:
                if _distance([0] * len(current), current) <= radius:
                    signs(current, 0)
                else:
                    return
            else:
                permute(current, index + 1)

    permute([0] * dimensions, 0)
    return result


class _Neighborhood:
    """Model Analyzer's `Neighborhood` over plain measurements (value, passing)."""

    def __init__(
        self,
        sizes: Sequence[int],
        home: Coordinate,
        data: dict[Coordinate, Measurement],
        slow: bool = False,
    ) -> None:
        self.sizes, self.home, self.data, self.forced_slow = sizes, home, data, slow
        self.coordinates = [
            c
            for step in ma_steps(len(sizes), MA_RADIUS)
            if self._in_bounds(c := tuple(h + s for h, s in zip(home, step, strict=True)))
        ]

    def _in_bounds(self, c: Sequence[int]) -> bool:
        return all(0 <= v < n for v, n in zip(c, self.sizes, strict=True))

    def _valid(self) -> list[Coordinate]:
        return [c for c in self.coordinates if c != self.home and self.data.get(c) is not None]

    def _passing(self) -> list[Coordinate]:
        return [c for c in self._valid() if self.data[c][1]]  # type: ignore[index]

    def _home_passing(self) -> bool:
        home = self.data.get(self.home)
        return home is not None and home[1]

    def slow(self) -> bool:
        if self.forced_slow:
            return True
        if self.data.get(self.home) is None:
            return False
        passing, valid = self._passing(), self._valid()
        any_failing, any_passing = len(valid) != len(passing), bool(passing)
        home_passing = self._home_passing()
        return (home_passing and any_failing) or (not home_passing and any_passing)

    def adjacent(self) -> list[Coordinate]:
        out = []
        for dim, size in enumerate(self.sizes):
            for delta in (-1, 1):
                c = list(self.home)
                c[dim] += delta
                if 0 <= c[dim] < size:
                    out.append(tuple(c))
        return out

    def enough_initialized(self) -> bool:
        if self.slow():
            return all(c in self.data for c in self.adjacent())
        return len(self._valid()) >= MA_MIN_INITIALIZED

    def new_home(self) -> Coordinate:
        if self.slow():
            passing = self._passing()
            if not passing:
                return self.home
            if self._home_passing():
                passing.append(self.home)
            # sorted(zip(measurements, vectors))[-1]: the best value, ties to the larger vector
            return max(passing, key=lambda c: (self.data[c][0], _vector(c, self.home)))  # type: ignore[index]
        return self._step_home()

    def _step_home(self) -> Coordinate:
        home = self.data[self.home]
        assert home is not None
        compare_constraints = not home[1]
        step = [0.0] * len(self.sizes)
        sums = [0.0] * len(self.sizes)
        for c in self._valid():
            value = self.data[c][0]  # type: ignore[index]
            # compare_measurements: (other - home) / mean, positive when `c` is better; the
            # constraint comparison of two failing runs is not recorded here: weight 0.
            weight = 0.0 if compare_constraints else _gain(home[0], value)
            for dim, v in enumerate(_vector(c, self.home)):
                if v > 0:
                    step[dim] += weight
                    sums[dim] += v
                elif v < 0:
                    step[dim] -= weight
                    sums[dim] -= v
        moved = []
        for dim, (s, total) in enumerate(zip(step, sums, strict=True)):
            value = s / total if total else s
            target = self.home[dim] + _translate(value)
            moved.append(min(self.sizes[dim] - 1, max(0, target)))
        return tuple(moved)

    def to_initialize(self) -> Coordinate | None:
        if self.slow():
            for c in self.adjacent():
                if c not in self.data:
                    return c
            return None
        covered: list[set[int]] = [set() for _ in self.sizes]
        for c in self._valid():
            for dim, v in enumerate(c):
                covered[dim].add(v)
        best, most = None, -1
        for c in self.coordinates:
            if c in self.data:
                continue
            uncovered = sum(v not in covered[dim] for dim, v in enumerate(c))
            if uncovered > most:
                best, most = c, uncovered
        return best

    def nearest(self, target: Coordinate) -> Coordinate:
        nearest, distance = self.home, math.inf
        for c in self.coordinates:
            d = _distance(c, target)
            if d < distance:
                nearest, distance = c, d
        return nearest


def _vector(c: Coordinate, home: Coordinate) -> Coordinate:
    return tuple(a - b for a, b in zip(c, home, strict=True))


def _gain(home: float, other: float) -> float:
    average = (home + other) / 2
    return (other - home) / average if average else 0.0


def _translate(value: float) -> int:
    out = 0
    for index, bound in enumerate(MA_TRANSLATION):
        if value > 0 and value > bound:
            out = index + 1
        if value < 0 and value < -bound:
            out = -(index + 1)
    return out


def quick_search(
    sizes: Sequence[int], measure: Callable[[Coordinate], Measurement], max_steps: int = 1000
) -> QuickResult:
    """Model Analyzer's quick search over a space of `sizes[d]` values per dimension (each
    dimension's values in increasing order), from the smallest configuration (every index 0).

    Faithful to `QuickRunConfigGenerator`: measure home; until enough neighbours within radius 3
    are measured (3, or in "slow mode" every adjacent one), measure the one covering most
    not-yet-covered values; then step along the gain-weighted direction (steps of 1-3 by
    MA's translation list), or in slow mode to the best neighbour; step back towards the best
    configuration when a new home fails after one passed; stop when the step goes nowhere or
    to a home visited twice. A configuration measured before is not measured again (MA's
    `MetricsManager` returns the stored measurement of a duplicate run config). The default
    configuration MA measures first is the smallest one here, so it is one measurement.
    Declared: the best passing measurement (MA's top model config; its later concurrency
    sweep of the top configurations has no counterpart in an Offline study)."""
    result = QuickResult()
    data = result.data
    visits: dict[Coordinate, int] = {}

    def take(c: Coordinate) -> Measurement:
        if c not in data:
            data[c] = measure(c)
            result.measured.append(c)
        return data[c]

    home: Coordinate = tuple(0 for _ in sizes)
    to_measure = home
    best: Coordinate = home
    best_value: Measurement = None
    home_has_passed = False
    hood = _Neighborhood(sizes, home, data)
    for _ in range(max_steps):
        m = take(to_measure)
        if m is not None:
            if (
                best_value is None
                or (m[1] and not best_value[1])
                or (m[1] == best_value[1] and m[1] and m[0] > best_value[0])
            ):
                best, best_value = to_measure, m
            if to_measure == home and m[1]:
                home_has_passed = True
        # _step()
        step_back = False
        if to_measure == home:
            last = data.get(home)
            step_back = last is None or (not last[1] and home_has_passed)
        if step_back:
            new = hood.nearest(best)
            if new == home:
                break
            home = to_measure = new
            visits[home] = visits.get(home, 0) + 1
            hood = _Neighborhood(sizes, home, data, slow=True)
        elif hood.enough_initialized():
            new = hood.new_home()
            if new == home or visits.get(new, 0) >= 2:
                break
            home = to_measure = new
            visits[home] = visits.get(home, 0) + 1
            hood = _Neighborhood(sizes, home, data)
        else:
            nxt = hood.to_initialize()
            if nxt is None:
                break
            to_measure = nxt
    passing = [c for c, m in data.items() if m is not None and m[1]]
    result.best = max(passing, key=lambda c: data[c][0]) if passing else None  # type: ignore[index]
    return result


def exhaustive_grid(
    points: Sequence[Any], measure: Callable[[Any], float], repeats: int = 3
) -> tuple[Any, list[float]]:
    """Every point measured `repeats` times in turn; the point with the best median declared
    (ties: the first in grid order) and the medians."""
    medians = [statistics.median(measure(p) for _ in range(repeats)) for p in points]
    best = max(range(len(points)), key=lambda i: medians[i])
    return points[best], medians


# --- Server max-QPS search: vLLM's serve_sla ---------------------------------------------


def pchip_slopes(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """SciPy's `PchipInterpolator` derivatives (Fritsch-Butland weighted harmonic mean inside,
    the shape-preserving three-point formula at the ends)."""
    n = len(xs)
    h = [xs[i + 1] - xs[i] for i in range(n - 1)]
    delta = [(ys[i + 1] - ys[i]) / h[i] for i in range(n - 1)]
    if n == 2:
        return [delta[0], delta[0]]
    d = [0.0] * n
    for k in range(1, n - 1):
        if delta[k - 1] * delta[k] <= 0:
            d[k] = 0.0
        else:
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            d[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])

    def edge(h0: float, h1: float, m0: float, m1: float) -> float:
        value = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        if value * m0 <= 0:
            return 0.0
        if m0 * m1 < 0 and abs(value) > abs(3 * m0):
            return 3 * m0
        return value

    d[0] = edge(h[0], h[1], delta[0], delta[1])
    d[-1] = edge(h[-1], h[-2], delta[-1], delta[-2])
    return d


def pchip_roots(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """The zeros of the PCHIP interpolant through (xs, ys), xs increasing, in increasing order
    (`PchipInterpolator(xs, ys, extrapolate=False).solve()`); a zero is found where the
    interpolant changes sign or touches zero at a knot."""
    d = pchip_slopes(xs, ys)
    roots: list[float] = []

    def at(i: int, x: float) -> float:
        h = xs[i + 1] - xs[i]
        t = (x - xs[i]) / h
        h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
        h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
        return h00 * ys[i] + h10 * h * d[i] + h01 * ys[i + 1] + h11 * h * d[i + 1]

    for i in range(len(xs) - 1):
        if ys[i] == 0 and (not roots or roots[-1] != xs[i]):
            roots.append(xs[i])
        grid = [xs[i] + (xs[i + 1] - xs[i]) * k / 64 for k in range(65)]
        for a, b in itertools.pairwise(grid):
            fa, fb = at(i, a), at(i, b)
            if fa * fb < 0:
                for _ in range(60):
                    mid = (a + b) / 2
                    if at(i, a) * at(i, mid) <= 0:
                        b = mid
                    else:
                        a = mid
                roots.append((a + b) / 2)
    if ys[-1] == 0 and (not roots or roots[-1] != xs[-1]):
        roots.append(xs[-1])
    return roots


@dataclass
class SlaHistory:
    """vLLM's `SLAHistory`: rate -> margin (<= 0: the SLA holds)."""

    low: float
    high: float
    margins: dict[float, float] = field(default_factory=dict)

    def max_passing(self) -> float:
        return max((q for q, m in self.margins.items() if m <= 0), default=self.low)

    def min_failing(self) -> float:
        return min((q for q, m in self.margins.items() if m > 0), default=self.high)


def interpolation_search(
    probe: Callable[[float], float],
    low: float,
    high: float,
    step: float,
    max_probes: int = 30,
) -> tuple[float | None, SlaHistory]:
    """vLLM's `solve_sla`: `probe(qps)` returns the SLA margin at that rate (the mean over
    its runs of measured percentile - bound; > 0 fails). The first probe is `high`, the second
    `low`, then the first root of the PCHIP interpolant of margin against rate over every
    probe so far, rounded down to the lattice of rates vLLM probes: vLLM's rates are integers
    (`int(root)`, and `+ 1` when that one was probed already, "to cover both sides of the
    root"); here they are low x (1 + step)^k, the same rule on the lattice's index. The loop
    ends when the lowest failing rate is at most one lattice step above the highest passing
    one (vLLM: 1 req/s), or after a probe clamped into [low, high]. Returns the highest
    passing rate (None: none passed; vLLM reports its lower bound then) and the history."""
    history = SlaHistory(low, high)
    ratio = 1 + step
    while (
        history.min_failing() > history.max_passing() * ratio * (1 + 1e-9)
        and len(history.margins) < max_probes
    ):
        if not history.margins:
            qps = high
        elif len(history.margins) == 1:
            qps = low
        else:
            xs = sorted(history.margins)
            roots = pchip_roots(xs, [history.margins[x] for x in xs])
            if not roots:  # vLLM's next(iter(...)) would raise; stop as a failed solve
                break
            k = math.floor(math.log(max(roots[0], low) / low) / math.log(ratio) + 1e-9)
            qps = low * ratio**k
            if any(math.isclose(qps, q, rel_tol=1e-9) for q in history.margins):
                qps = low * ratio ** (k + 1)
        clamped = min(high, max(low, qps))
        history.margins[clamped] = probe(clamped)
        if clamped != qps:
            break
    passing = [q for q, m in history.margins.items() if m <= 0]
    return (max(passing) if passing else None), history


def reliable_edge(
    passes: Callable[[float], bool],
    start: float,
    step: float,
    repeats: int = 20,
    needed: int = 19,
    max_targets: int = 20,
) -> tuple[float | None, dict[float, tuple[int, int]]]:
    """The highest target that passes at least `needed` of `repeats` runs, found by walking
    from `start` in geometric steps of `step`: up while targets pass, down while they fail
    (pass rate falls with the target). A target's runs stop as soon as it has failed more than
    `repeats - needed` times. Returns the edge (None: no target passed within `max_targets`)
    and every target's (passes, runs)."""
    tally: dict[float, tuple[int, int]] = {}

    def verdict(qps: float) -> bool:
        ok = runs = 0
        while runs < repeats and runs - ok <= repeats - needed:
            ok += passes(qps)
            runs += 1
        tally[qps] = (ok, runs)
        return ok >= needed

    qps = start
    passed = verdict(qps)
    direction = 1 if passed else -1
    edge = qps if passed else None
    while len(tally) < max_targets:
        qps = qps * (1 + step) if direction > 0 else qps / (1 + step)
        ok = verdict(qps)
        if direction > 0:
            if not ok:
                break
            edge = qps
        elif ok:
            edge = qps
            break
    return edge, tally

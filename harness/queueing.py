"""A discrete-event model of the batching SUT (`harness.sut`) under Poisson arrivals: predicts
the latency percentile at a QPS and the largest QPS that meets a bound, without LoadGen runs,
and is refitted (`calibrate`) to the latency a LoadGen run measured.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

#: Draws `size` full-batch service times (seconds) from `rng`.
ServiceDraw = Callable[[np.random.Generator, int], np.ndarray]

DEFAULT_SAMPLES = 20_000
#: Shares of the upper QPS predict_max_qps tries, from the top, before it bisects; a miss at
#: every one means no QPS meets the bound.
SCAN = (0.9, 0.75, 0.6, 0.45, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)
#: The range of service-time factors `calibrate` fits: a run that needs more than a 2x
#: correction says the model is wrong, not miscalibrated.
CALIBRATION_BOUNDS = (0.5, 2.0)


@dataclass(frozen=True)
class SutModel:
    """The SUT's batching parameters and its service time.

    `service` is an empirical sample of full-batch latencies (seconds, drawn with replacement)
    or a callable drawing them. A batch of n < batch_size samples takes a full-batch draw times
    `fixed_fraction + (1 - fixed_fraction) * n / batch_size`; the default 1.0 charges a partial
    batch as much as a full one (conservative: GPUs pad, CPUs rarely scale down linearly).
    """

    batch_size: int
    streams: int
    timeout_s: float
    service: Sequence[float] | np.ndarray | ServiceDraw
    fixed_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.streams < 1:
            raise ValueError("batch_size and streams must be >= 1")
        if self.timeout_s < 0 or not 0.0 <= self.fixed_fraction <= 1.0:
            raise ValueError("timeout_s must be >= 0 and fixed_fraction in [0, 1]")
        if not callable(self.service) and (len(self.service) == 0 or min(self.service) <= 0):
            raise ValueError("an empirical service sample must be non-empty and positive")

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` full-batch service times in seconds."""
        if callable(self.service):
            return np.asarray(self.service(rng, size), dtype=np.float64)
        return rng.choice(np.asarray(self.service, dtype=np.float64), size=size)

    def capacity_qps(self) -> float:
        """Samples/s with every stream busy on full batches: streams * batch / mean service."""
        mean = float(np.mean(self.draw(np.random.default_rng(0), 4096)))
        return self.streams * self.batch_size / mean


def simulate(
    qps: float, model: SutModel, samples: int = DEFAULT_SAMPLES, seed: int = 0
) -> np.ndarray:
    """Per-sample latencies (seconds: queueing + batching wait + service) of `samples` Poisson
    arrivals at `qps`, in arrival order.

    A free stream takes the oldest queued sample, then waits until it holds `batch_size`
    samples or `timeout_s` has passed since it took the first, and serves what it holds.
    (The real SUT lets several idle streams wait on the same first sample; here the earliest
    free stream claims it, which differs only with several streams and a non-zero timeout.)
    Batch k, in dispatch order, takes the k-th full-batch draw.
    """
    if not qps > 0 or samples < 1:
        raise ValueError("qps must be > 0 and samples >= 1")
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / qps, samples))
    service = model.draw(rng, samples)
    if model.batch_size == 1 and model.streams == 1:
        # Lindley's recursion done(i) = max(done(i-1), arrival(i)) + service(i), unrolled:
        # done(i) = S(i) + max over j <= i of (arrival(j) - S(j-1)), S the running sum.
        total = np.cumsum(service)
        return total + np.maximum.accumulate(arrivals - (total - service)) - arrivals
    ends, counts = _batches(arrivals.tolist(), service.tolist(), model)
    return np.repeat(np.asarray(ends), np.asarray(counts)) - arrivals


def _batches(
    arrivals: list[float], service: list[float], model: SutModel
) -> tuple[list[float], list[int]]:
    """The end time and size of every batch, in dispatch order (the event loop)."""
    samples, size = len(arrivals), model.batch_size
    timeout, fixed = model.timeout_s, model.fixed_fraction
    bisect_right, heapreplace = bisect.bisect_right, heapq.heapreplace
    free = [0.0] * model.streams  # a heap of the times each stream becomes free
    ends: list[float] = []
    counts: list[int] = []
    head = batch = 0
    while head < samples:
        first = arrivals[head]
        start = free[0] if free[0] > first else first  # a stream holds a first sample
        last = head + size - 1  # the sample that would fill the batch
        if size == 1:
            taken, dispatch = 1, start
        else:
            if last >= samples:  # the last arrivals: the batch never fills
                last = samples - 1
                dispatch = start + timeout
            else:
                dispatch = arrivals[last] if arrivals[last] < start + timeout else start + timeout
            if dispatch < start:
                dispatch = start
            taken = bisect_right(arrivals, dispatch, head, last + 1) - head
        seconds = service[batch]
        if taken < size:
            seconds *= fixed + (1.0 - fixed) * taken / size
        end = dispatch + seconds
        heapreplace(free, end)
        ends.append(end)
        counts.append(taken)
        head += taken
        batch += 1
    return ends, counts


def predict_percentile_ms(
    qps: float,
    model: SutModel,
    percentile: float = 99.0,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> float:
    """The modelled latency `percentile` (ms) at `qps`."""
    return float(np.percentile(simulate(qps, model, samples, seed), percentile)) * 1000.0


def predict_run_percentile_ms(
    qps: float,
    model: SutModel,
    percentile: float = 99.0,
    queries: int = 0,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> float:
    """The latency `percentile` (ms) a LoadGen run of `queries` at `qps` is modelled to
    measure: the median over runs of that length simulated from an empty queue, as many as
    `samples` allows (the steady state when `queries` is 0 or over `samples`)."""
    measured = [
        float(np.percentile(run, percentile))
        for run in simulate_runs(qps, model, queries, samples, seed)
    ]
    return float(np.median(measured)) * 1000.0


def simulate_runs(
    qps: float, model: SutModel, queries: int, samples: int = DEFAULT_SAMPLES, seed: int = 0
) -> list[np.ndarray]:
    """The per-sample latencies of LoadGen runs of `queries` at `qps`, each simulated from an
    empty queue, as many as `samples` allows (seeds `seed`, `seed` + 1, ...); one steady-state
    run of `samples` when `queries` is 0 or over `samples`."""
    if queries <= 0 or queries > samples:
        return [simulate(qps, model, samples, seed)]
    return [simulate(qps, model, queries, seed + r) for r in range(samples // queries)]


def scaled(model: SutModel, factor: float) -> SutModel:
    """`model` with every service time multiplied by `factor`."""
    if not factor > 0:
        raise ValueError("factor must be > 0")
    service = model.service
    if callable(service):
        draw = service

        def scaled_draw(rng: np.random.Generator, size: int) -> np.ndarray:
            return factor * np.asarray(draw(rng, size), dtype=np.float64)

        return replace(model, service=scaled_draw)
    return replace(model, service=factor * np.asarray(service, dtype=np.float64))


def calibrate(
    model: SutModel,
    qps: float,
    measured_ms: float,
    percentile: float = 99.0,
    queries: int = 0,
    bounds: tuple[float, float] = CALIBRATION_BOUNDS,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> float:
    """The service-time factor (within `bounds`) with which `model` reproduces a LoadGen run's
    measured latency `percentile` at `qps` (`predict_run_percentile_ms`): the model refitted
    to what the SUT did under Poisson load, where the warm-up timed it saturated.

    Bisection on the factor (the modelled percentile grows with it; common random numbers),
    to 0.1%; a bound of `bounds` when even it cannot reproduce the measurement."""
    if not qps > 0 or not measured_ms > 0:
        raise ValueError("qps and measured_ms must be > 0")

    def modelled(factor: float) -> float:
        return predict_run_percentile_ms(
            qps, scaled(model, factor), percentile, queries, samples, seed
        )

    low, high = bounds
    if modelled(low) >= measured_ms:
        return low
    if modelled(high) <= measured_ms:
        return high
    while high - low > 1e-3 * low:
        mid = (low + high) / 2
        if modelled(mid) < measured_ms:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def allowed_late(queries: int, percentile: float, confidence: float = 0.99) -> int:
    """The most over-bound queries a Server run of `queries` may have and pass LoadGen's early
    stopping at `percentile` (its `MinPassingQueriesFinder`, tolerance 0): the largest t with
    P(Binomial(queries, 1 - p) <= t) <= 1 - confidence; -1 when even none late fails."""
    late = 1.0 - percentile / 100.0
    log_pmf = queries * math.log1p(-late)  # t = 0
    log_ratio = math.log(late) - math.log1p(-late)
    log_cdf = log_pmf
    target = math.log1p(-confidence)
    t = 0
    while log_cdf <= target and t < queries:
        log_pmf += math.log(queries - t) - math.log(t + 1) + log_ratio
        t += 1
        log_cdf = max(log_cdf, log_pmf) + math.log1p(math.exp(-abs(log_cdf - log_pmf)))
    return t - 1


def meets_bound(
    latencies: np.ndarray, bound_ms: float, percentile: float = 99.0, queries: int = 0
) -> bool:
    """Whether `latencies` pass as one LoadGen Server run: the percentile within `bound_ms`
    and, for a run of `queries` > 0, early stopping, with the late count scaled to that run."""
    bound_s = bound_ms / 1000.0
    if float(np.percentile(latencies, percentile)) > bound_s:
        return False
    if queries <= 0:
        return True
    late = float(np.count_nonzero(latencies > bound_s)) / len(latencies) * queries
    return late <= allowed_late(queries, percentile)


def predict_valid(
    qps: float,
    model: SutModel,
    bound_ms: float,
    percentile: float = 99.0,
    queries: int = 0,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> bool:
    """Whether a LoadGen Server run of `queries` (0: a long one) at `qps` is predicted VALID.

    A run no longer than `samples` is simulated as LoadGen runs it, from an empty queue, as
    many times as `samples` allows; the prediction is the majority's. (A short run near
    capacity passes more often than the steady state suggests: its queue has no time to grow.)
    """
    simulated = simulate_runs(qps, model, queries, samples, seed)
    passed = sum(meets_bound(run, bound_ms, percentile, queries) for run in simulated)
    return 2 * passed >= len(simulated)


def predict_max_qps(
    model: SutModel,
    bound_ms: float,
    percentile: float = 99.0,
    upper_qps: float | None = None,
    tolerance: float = 0.02,
    min_queries: int = 0,
    min_duration_s: float = 0.0,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> float:
    """The largest QPS (<= `upper_qps`, default the model's capacity) predicted VALID for a
    run of max(min_queries, QPS x min_duration_s) queries (both 0: the percentile alone),
    bisected to `tolerance` (relative) above the highest SCAN share that passes; 0.0 when
    none does. Every probe reuses `seed` (common random numbers): the answer is reproducible.
    """
    upper = upper_qps if upper_qps is not None else model.capacity_qps()
    high = upper
    if not high > 0 or not tolerance > 0:
        raise ValueError("upper_qps and tolerance must be > 0")

    def meets(qps: float) -> bool:
        queries = max(min_queries, math.ceil(qps * min_duration_s))
        return predict_valid(qps, model, bound_ms, percentile, queries, samples, seed)

    # Not a bisection from 0: with a batching timeout a light load waits out the timeout while
    # a heavier one fills batches sooner, so the QPS that meet a bound can form a band.
    if meets(high):
        return high
    for share in SCAN:
        low = share * upper
        if meets(low):
            break
        high = low
    else:
        return 0.0
    while high - low > tolerance * low:
        # Geometric midpoints while the bracket is wide, arithmetic ones once it is narrow.
        mid = math.sqrt(low * high) if high > 2 * low else (low + high) / 2
        if meets(mid):
            low = mid
        else:
            high = mid
    return low

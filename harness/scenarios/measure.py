"""The scenario stage of the measure pipeline (harness.runner.measure_devices): with the SUT
warm and its warm-up measured, run the scenario under LoadGen. Offline sizes its query from the
warm-up; the Server max-QPS search first bounds the load by an Offline run, then starts from
the queueing model's guess (harness.queueing, fed the warm-up's batch latencies) and refits the
model to each run's measured percentile."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.config import RunConfig, ScenarioSpec
from harness.loadgen_log import LoadgenRun
from harness.queueing import (
    CALIBRATION_BOUNDS,
    SutModel,
    calibrate,
    predict_max_qps,
    scaled,
)
from harness.scenarios import offline, prune, server
from harness.scenarios.outcome import Outcome
from harness.sut import LoadgenSut

log = logging.getLogger("harness")


@dataclass(frozen=True)
class Warmup:
    batch_ms: float
    samples_per_second: float
    #: Every timed full-batch latency (seconds, all streams): the queueing model's service.
    batch_latencies_s: tuple[float, ...] = ()
    #: Median latency of a one-sample batch under the same load (None when not measured): how
    #: much of a batch's cost is fixed, which the queueing model needs for partial batches.
    single_ms: float | None = None

    def fixed_fraction(self, batch_size: int) -> float:
        """Share of a full batch's latency that a batch of any size pays, from the one-sample
        latency (t1 = tB * (f + (1 - f) / B)); 1.0 (every batch costs a full one: the
        conservative model) when unmeasured."""
        if self.single_ms is None or batch_size <= 1 or self.batch_ms <= 0:
            return 1.0
        share = (self.single_ms / self.batch_ms - 1 / batch_size) / (1 - 1 / batch_size)
        return min(1.0, max(0.0, share))


def system_warmup(warmups: Sequence[Warmup]) -> Warmup:
    """Several devices' warm-ups as one system's: the throughputs add up, every timed batch
    latency is pooled (the queueing model's service) and the slowest device's batch (and
    one-sample) latency stands for the system's. A system of one: its own warm-up."""
    if len(warmups) == 1:
        return warmups[0]
    slowest = max(warmups, key=lambda w: w.batch_ms)
    return Warmup(
        batch_ms=slowest.batch_ms,
        samples_per_second=sum(w.samples_per_second for w in warmups),
        batch_latencies_s=tuple(
            itertools.chain.from_iterable(w.batch_latencies_s for w in warmups)
        ),
        single_ms=slowest.single_ms,
    )


@dataclass(frozen=True)
class Context:
    run: RunConfig
    spec: ScenarioSpec
    sut: LoadgenSut
    warmup: Warmup
    out_dir: Path
    #: Devices behind `sut`, each with `run.streams` workers (the queueing model's servers).
    devices: int = 1
    #: Refit the queueing model to each Server run (False: its first guess only, a benchmark's
    #: ablation).
    refit: bool = True
    #: Search Server's max QPS by the late count where early stopping allows it
    #: (`server.late_count_search`; False: always by bracketing, a benchmark's ablation).
    late_count: bool = True


def _offline(ctx: Context) -> Outcome:
    pruned = _pruned(ctx, "warm-up estimate", ctx.warmup.samples_per_second)
    if pruned is not None:
        return pruned
    return offline.run(ctx.sut, ctx.spec, ctx.warmup.samples_per_second, ctx.out_dir)


def _pruned(
    ctx: Context, bound: str, value: float, runs: tuple[LoadgenRun, ...] = ()
) -> Outcome | None:
    """The pruned outcome where `value`, the bound named `bound`, cannot reach the spec's
    `prune_below` (harness.scenarios.prune); None where it may."""
    found = prune.check(bound, value, ctx.spec.prune_below)
    if found is None:
        return None
    log.info("%s", found.reason)
    primary = runs[-1] if runs else None
    return Outcome(False, 0.0, primary, runs, note=found.reason, pruned=found)


def _server(ctx: Context) -> Outcome:
    spec = ctx.spec
    if not spec.find_max_qps:
        return server.run(ctx.sut, spec, ctx.out_dir)
    if ctx.warmup.batch_ms > spec.latency_ms:
        note = (
            f"infeasible: one batch of {ctx.run.batch_size} takes {ctx.warmup.batch_ms:.1f} ms, "
            f"over the {spec.latency_ms:g} ms bound"
        )
        log.info(note)
        return Outcome(valid=False, score=0.0, primary=None, runs=(), note=note)
    # Each bound met on the way may end the trial: the Offline throughput (no Server run goes
    # over it, so a pruned baseline still bounds the speed-up), then the queueing model's
    # guess. The warm-up's estimate prunes Offline trials only: it bounds nothing for sure.
    bound = offline.run(ctx.sut, spec, ctx.warmup.samples_per_second, ctx.out_dir)
    upper = bound.score
    log.info("upper bound from Offline: %.1f samples/s", upper)
    pruned = _pruned(ctx, "Offline throughput", upper, bound.runs) if bound.valid else None
    if pruned is not None:
        return pruned
    model = _queue_model(ctx) if upper > 0 else None
    # A model that finds no QPS gives no first guess (the search starts blind), but its refit
    # to the first run may: to the answer, or to the lowest load when none meets the bound.
    guess = _predicted_max_qps(ctx, model, upper) if model is not None else 0.0
    pruned = _pruned(ctx, "queueing model", guess, bound.runs) if guess > 0 else None
    if pruned is not None:
        return pruned
    refine = _refitter(ctx, model, upper) if model is not None and ctx.refit else None
    found = server.find_max_qps(
        ctx.sut,
        spec,
        upper,
        ctx.out_dir,
        first_guess=guess or None,
        refine=refine,
        by_late_count=ctx.late_count,
    )
    return Outcome(found.valid, found.score, found.primary, bound.runs + found.runs, found.note)


def _queue_model(ctx: Context) -> SutModel | None:
    """The queueing model of the SUT from the warm-up's batch latencies; None without them."""
    latencies = ctx.warmup.batch_latencies_s
    if not latencies or min(latencies) <= 0:
        return None
    run = ctx.run
    return SutModel(
        run.batch_size,
        run.streams * ctx.devices,
        run.deque_timeout_us / 1e6,
        latencies,
        fixed_fraction=ctx.warmup.fixed_fraction(run.batch_size),
    )


def _predicted_max_qps(ctx: Context, model: SutModel, upper: float) -> float:
    """The queueing model's max QPS (at most `upper`), a probe of the search; 0.0 when the
    model finds no QPS, however low, that meets the bound."""
    spec = ctx.spec
    guess = predict_max_qps(
        model,
        spec.latency_ms,
        spec.percentile,
        upper_qps=upper,
        tolerance=spec.qps_tolerance,
        min_queries=spec.server_min_queries,
        min_duration_s=spec.min_duration_s,
    )
    log.info("model: ~%.1f QPS meet p%g <= %g ms", guess, spec.percentile, spec.latency_ms)
    return guess


def _refitter(ctx: Context, model: SutModel, upper: float) -> server.Refine:
    """The search's `refine`: the model refitted to a run's measured latency percentile (its
    service times scaled, `calibrate`), and its max QPS again. The warm-up times batches with
    every stream saturated, which is not how a Server run loads the SUT, so the first guess
    is off by a few percent; one run at it shows by how much."""
    spec = ctx.spec

    def refine(qps: float, run: LoadgenRun) -> float | None:
        measured = run.percentile_ms(spec.percentile)
        if measured is None or not measured > 0:
            return None
        queries = run.query_count or max(
            spec.server_min_queries, math.ceil(qps * spec.min_duration_s)
        )
        factor = calibrate(model, qps, measured, spec.percentile, queries)
        if factor in CALIBRATION_BOUNDS:
            log.info(
                "model: cannot reproduce p%g %.2f ms at %.1f QPS", spec.percentile, measured, qps
            )
            return None
        log.info(
            "model refitted to p%g %.2f ms at %.1f QPS: service x%.3f",
            spec.percentile,
            measured,
            qps,
            factor,
        )
        return _predicted_max_qps(ctx, scaled(model, factor), upper)

    return refine


#: Scenario name -> how to measure it.
SCENARIOS: dict[str, Callable[[Context], Outcome]] = {"offline": _offline, "server": _server}

"""How many LoadGen runs four Server max-QPS searches need, and what they report (a script,
not a test).

Per configuration of a recorded landscape, replayed by the `replay` backend (the batching
queue, the SUT threads and LoadGen are real; only the inference is a sleep for the recorded
latency, times --time-scale):

(1) model   the harness's own search, through the runner's code path: the warm-up's batch
            latencies (and one-sample latencies: the fixed share of a batch's cost) feed the
            queueing model, whose max QPS is the first probe of `find_max_qps`, bracketed
            above by the Offline rate; while the answer is bracketed on one side only, the
            model is refitted to each run's measured percentile and its new max QPS is the
            next probe (--no-refine: not); the answer must pass --answer-runs runs (default
            2) before it is reported;
(2) bisect  plain bisection of the target QPS between 0 and the Offline rate (arithmetic
            midpoints, no guess), to the same relative tolerance;
(3) peak    LoadGen's own TestMode.FindPeakPerformance, started at --peak-start x the Offline
            rate: it checks that target, doubles it until a run fails, then bisects to
            server_find_peak_qps_decimals_of_precision. Its sub-runs are counted twice: the
            SUT's flush_queries calls (LoadGen flushes once after each run it issues) and the
            run announcements in LoadGen's detail log; the two must agree;
(4) interp  vLLM's `bench sweep serve_sla` search (`benchmarks/peers.py`,
            `interpolation_search`): the Offline rate, then the lowest load the harness's
            search may run (`server.lowest_qps`), then the first root of a PCHIP interpolant
            of the margin (measured percentile - bound) against the target, to the same
            tolerance; --interp-runs runs per probe (vLLM's --num-runs, whose default is 3;
            here 1 by default, as every other search here probes with one run), the margin
            of their mean percentile; LoadGen's verdict overrides it: a probe with an
            INVALID run fails (margin at least +1e-9 ms).

The reference is the highest VALID target of a fine sweep (geometric steps of --sweep-step)
around the answers. With --sweep-repeats N the sweep's targets are run N times in all,
and the "reliable edge" is the highest target at and below which every one of those runs
passed: where runs pass reliably rather than by luck. Each method's answer is then run
--confirm-runs more times (default once: "confirmation runs") at the QPS it reported. The
Offline run that gives the upper bound is shared and not counted.

The reliable-answer target (--edge-runs 20): the "19/20 edge" of a configuration is the highest
target that passes at least --edge-needed (19) of --edge-runs (20) runs, walked in steps of
--sweep-step from --edge-start x the model-led search's answer (`peers.reliable_edge`: up while
targets pass, down while they fail; a target stops at its second failure). The target: the
model-led search's reported QPS passes >= 90% of the confirmation runs (>= 30 over >= 10
configurations: --confirm-runs 3), is >= 95% of the 19/20 edge in every configuration, and the
search takes a median <= 4 LoadGen runs. --no-sweep leaves out the fine sweep (the reference).

QPS are LoadGen targets (`server_target_qps`); the harness's score is LoadGen's scheduled QPS,
which for a fixed schedule seed and query count is a fixed multiple of the target.

    python benchmarks/server_search.py [--landscape L.json] [--time-scale 0.1]
        [--latency-ms 100] [--percentile 99] [--configs fp32/b1/s1,int8/b2/s1]
        [--min-queries 600] [--methods model,bisect,peak,interp] [--no-refine]
        [--answer-runs 2] [--confirm-runs 1] [--interp-runs 1] [--edge-runs 20]
        [--no-sweep] [--out figures.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `benchmarks` importable as a package
    sys.path.insert(0, str(ROOT))

from benchmarks import peers  # noqa: E402
from harness import runner  # noqa: E402
from harness.backends import BackendOptions, get_backend  # noqa: E402
from harness.backends.replay import Key, read_landscape, recorded_latencies  # noqa: E402
from harness.config import RunConfig, ScenarioSpec  # noqa: E402
from harness.dataset import SampleSet  # noqa: E402
from harness.device import cpu_name  # noqa: E402
from harness.loadgen_log import DETAIL_FILE, MLLOG_PREFIX, LoadgenRun  # noqa: E402
from harness.scenarios import server  # noqa: E402
from harness.scenarios._loadgen import run_test, test_settings  # noqa: E402
from harness.scenarios.measure import SCENARIOS, Context  # noqa: E402
from harness.sut import BatchingSUT  # noqa: E402

DEFAULT_LANDSCAPE = Path(__file__).parent / "landscapes" / "mobilenet-offline-cpu.json"
METHODS = ("model", "bisect", "peak", "interp")
#: The reliable-answer target: confirmation pass rate, share of the 19/20 edge, median runs.
TARGET_PASS_RATE, TARGET_EDGE_SHARE, TARGET_RUNS = 0.90, 0.95, 4
#: How LoadGen's detail log announces each FindPeakPerformance sub-run (6.0.17).
PEAK_RUN_MESSAGES = (
    "FindPeakPerformance: Check validity of the base settings field",
    "FindBoundaries: Checking fields",
    "FindPeakPerformanceBinarySearch: Testing the mid value",
)
PEAK_FOUND = "FindPeakPerformance: Found peak performance field: "
#: A bisection that has not converged after this many runs stops (never reached in practice).
MAX_BISECT_RUNS = 30
MAX_SWEEP_RUNS = 40


@dataclass
class Search:
    """One method's search on one configuration."""

    runs: int = 0
    #: The target QPS it reports (0.0: none VALID).
    qps: float = 0.0
    targets: list[float] = field(default_factory=list)
    #: Each run's verdict, in order (model and bisect; FindPeakPerformance's are not kept).
    verdicts: list[bool] = field(default_factory=list)
    #: Runs until the search's answer so far was within the tolerance of the reference.
    landed: int | None = None
    #: The confirmation runs at `qps`, VALID or not, and the first one's percentile.
    confirms: list[bool] = field(default_factory=list)
    confirm_p: float | None = None
    #: Within the tolerance of the reference (None: no reference).
    within: bool | None = None
    #: Within the tolerance of the reliable edge (None: not measured).
    within_reliable: bool | None = None
    #: Reported QPS / the 19/20 edge (None: not measured).
    to_edge: float | None = None
    #: Wall time of the search (model: with the Offline run the others share).
    seconds: float = 0.0
    note: str = ""

    @property
    def confirmed(self) -> bool | None:
        """Every confirmation run VALID (None: nothing was confirmed)."""
        return all(self.confirms) if self.confirms else None


@dataclass
class Figures:
    config: str
    recorded_batch_ms: float
    upper_qps: float = 0.0
    model_guess: float | None = None
    reference: float | None = None
    #: With --sweep-repeats > 1: the highest sweep target at and below which every sweep run
    #: passed (the edge where runs pass reliably, not by luck).
    reliable: float | None = None
    lowest_invalid_above: float | None = None
    sweep: list[tuple[float, bool]] = field(default_factory=list)
    #: With --edge-runs: the highest target passing --edge-needed of --edge-runs runs, and
    #: each target walked as [target, passes, runs].
    edge: float | None = None
    edge_tally: list[tuple[float, int, int]] = field(default_factory=list)
    searches: dict[str, Search] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""


def parse_key(text: str) -> Key:
    """'fp32/b1/s2' -> ('fp32', 1, 2)."""
    try:
        precision, batch, streams = text.strip().split("/")
        if batch[0] != "b" or streams[0] != "s":
            raise ValueError
        return precision, int(batch[1:]), int(streams[1:])
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"a configuration is precision/bBATCH/sSTREAMS, e.g. fp32/b4/s2, got {text!r}"
        ) from None


def name(key: Key) -> str:
    return f"{key[0]}/b{key[1]}/s{key[2]}"


def default_configs(found: dict[Key, list[float]], bound_ms: float) -> list[Key]:
    """Streams 1-2, batch 1-8, whose recorded median batch fits the bound (the runner calls a
    configuration infeasible when its warm-up batch does not)."""
    keys = [
        k
        for k, v in found.items()
        if v and k[2] <= 2 and k[1] <= 8 and 1000 * statistics.median(v) < bound_ms
    ]
    return sorted(keys, key=lambda k: (k[1], k[2], k[0]))


def geometric_sweep(low: float, high: float, step: float) -> list[float]:
    count = max(0, math.floor(math.log(high / low) / math.log1p(step) + 1e-9))
    return [low * (1 + step) ** i for i in range(count + 1)]


class Bench:
    """The LoadGen runs of one configuration, on one loaded backend and SUT."""

    def __init__(self, sut: BatchingSUT, spec: ScenarioSpec, out: Path) -> None:
        self.sut, self.spec, self.out = sut, spec, out
        self.count = 0

    def run(self, what: str, qps: float) -> LoadgenRun:
        self.count += 1
        print(f"    [{what}] ", end="", flush=True)
        return server.run_at(self.sut, self.spec, qps, self.out / f"run-{self.count:03d}")

    def bisect(self, upper: float) -> Search:
        """Plain bisection over (0, upper): arithmetic midpoints, the search's convergence
        rule (VALID and INVALID targets within the tolerance of the VALID one)."""
        tol = self.spec.qps_tolerance
        low, high, search = 0.0, upper, Search()
        while len(search.targets) < MAX_BISECT_RUNS:
            qps = (low + high) / 2
            if low == 0 and self.spec.server_min_queries / qps > self.spec.max_run_s:
                search.note = f"gave up below {high:.1f} QPS (run-length guard, as the harness)"
                break
            search.targets.append(qps)
            valid = self.run("bisect", qps).valid
            search.verdicts.append(valid)
            if valid:
                low = qps
            else:
                high = qps
            if low > 0 and high - low <= tol * low * (1 + 1e-9):
                break
        search.runs, search.qps = len(search.targets), low
        return search

    def interp(self, upper: float, runs_per_probe: int) -> Search:
        """vLLM serve_sla's interpolation search (`peers.interpolation_search`) between the
        harness's lowest load and `upper`."""
        spec, search = self.spec, Search()

        def probe(qps: float) -> float:
            margins, valid = [], True
            for _ in range(runs_per_probe):
                run = self.run("interp", qps)
                search.targets.append(qps)
                search.verdicts.append(run.valid)
                valid = valid and run.valid
                p = run.percentile_ms(spec.percentile)
                margins.append((p if p is not None else math.inf) - spec.latency_ms)
            margin = sum(margins) / len(margins)
            return margin if valid == (margin <= 0) else (1e-9 if not valid else -1e-9)

        low = server.lowest_qps(spec, upper)
        answer, _ = peers.interpolation_search(probe, low, upper, spec.qps_tolerance)
        search.runs, search.qps = len(search.targets), answer or 0.0
        return search

    def find_peak(self, start: float, decimals: int) -> Search:
        """LoadGen's FindPeakPerformance from `start`; sub-runs counted from the SUT's
        flush_queries calls and from the detail log, which must agree."""
        import mlperf_loadgen as lg

        spec = self.spec
        settings = test_settings(
            "server",
            server_target_qps=float(start),
            server_target_latency_ns=int(spec.latency_ms * 1e6),
            server_target_latency_percentile=spec.percentile / 100.0,
            min_duration_ms=int(spec.min_duration_s * 1000),
            min_query_count=spec.server_min_queries,
            server_coalesce_queries=True,
            server_find_peak_qps_decimals_of_precision=decimals,
        )
        settings.mode = lg.TestMode.FindPeakPerformance
        flushes = 0
        sut_flush: Callable[[], None] = self.sut.flush

        def counting_flush() -> None:
            nonlocal flushes
            flushes += 1
            sut_flush()

        self.count += 1
        out = self.out / f"run-{self.count:03d}-peak"
        print(f"    [peak] FindPeakPerformance from {start:.1f} QPS ...", end="", flush=True)
        self.sut.flush = counting_flush  # type: ignore[method-assign]
        started = time.perf_counter()
        try:
            run_test(self.sut, settings, out)
        finally:
            self.sut.flush = sut_flush  # type: ignore[method-assign]
        logged, peak, targets = peak_log(out / DETAIL_FILE)
        search = Search(runs=flushes, qps=peak or 0.0, targets=targets)
        if logged != flushes:
            search.note = f"detail log shows {logged} sub-runs, the SUT saw {flushes} flushes"
        if peak is None:
            search.note = (search.note + "; " if search.note else "") + "no peak (start failed)"
        print(
            f" {flushes} sub-runs ({logged} in the detail log) in "
            f"{time.perf_counter() - started:.1f} s: peak {search.qps:.1f} QPS"
        )
        return search


def peak_log(path: Path) -> tuple[int, float | None, list[float]]:
    """From a FindPeakPerformance detail log: the sub-runs it announced, the peak it found
    and the target of each sub-run."""
    runs, peak, targets = 0, None, []
    for line in path.read_text().splitlines():
        if not line.startswith(MLLOG_PREFIX):
            continue
        entry = json.loads(line[len(MLLOG_PREFIX) :])
        value = str(entry.get("value"))
        if entry.get("key") not in ("generic_message", "error_runtime"):
            continue
        if any(value.startswith(m) for m in PEAK_RUN_MESSAGES):
            runs += 1
            # "... field: 250.5", "... fields [250.5, 501)", "... [l, u): m": the last number
            # is the target of the run announced.
            tail = value.rsplit(":", 1)[-1].rsplit(",", 1)[-1].strip(" [)")
            with contextlib.suppress(ValueError):
                targets.append(float(tail))
        elif value.startswith(PEAK_FOUND):
            peak = float(value[len(PEAK_FOUND) :])
    return runs, peak, targets


def measure_config(key: Key, args: argparse.Namespace, recorded_ms: float, out: Path) -> Figures:
    precision, batch, streams = key
    scale = args.time_scale
    figures = Figures(config=name(key), recorded_batch_ms=recorded_ms)
    extra = {
        "landscape": str(args.landscape),
        "seed": args.seed,
        "time_scale": scale,
        "session": args.session,
    }
    run = RunConfig(
        model="replayed",
        backend="replay",
        precision=precision,
        batch_size=batch,
        streams=streams,
        deque_timeout_us=round(args.deque_timeout_us * scale),
        backend_options=extra,
    )
    spec = ScenarioSpec(
        scenario="server",
        find_max_qps=True,
        duration_s=args.duration_s * scale,
        latency_ms=args.latency_ms * scale,
        percentile=args.percentile,
        min_queries=args.min_queries,
        qps_tolerance=args.tolerance,
        answer_runs=args.answer_runs,
        max_run_s=ScenarioSpec.max_run_s * scale,
        out_dir=out,
    )
    tol = spec.qps_tolerance
    options = BackendOptions(
        precision=precision, max_batch=batch, streams=streams, device="cpu", extra=extra
    )
    backend = get_backend("replay")(Path("never-read.onnx"), options)
    samples = SampleSet({"input": np.zeros((64, 1), np.float32)})
    started = time.perf_counter()
    with backend:
        warm = runner.run_warmup(backend, samples, run, single=True)
        with BatchingSUT(backend, samples, batch, streams, run.deque_timeout_us) as sut:
            bench = Bench(sut, spec, out)
            # (1) The runner's own Server path: Offline bound, model guess, find_max_qps.
            print("    [model] the runner's Server search (Offline run, model, find_max_qps)")
            begun = time.perf_counter()
            context = Context(
                run, spec, sut, warm, out, refit=not args.no_refine, late_count=not args.bracket
            )
            outcome = SCENARIOS["server"](context)
            offline_runs = [r for r in outcome.runs if r.scenario == "Offline"]
            probes = [r for r in outcome.runs if r.scenario == "Server"]
            if not offline_runs:
                figures.note = outcome.note or "no Offline run"
                return figures
            upper = figures.upper_qps = offline_runs[-1].samples_per_second or 0.0
            model = Search(
                runs=len(probes),
                qps=(outcome.primary.target_qps or 0.0)
                if outcome.valid and outcome.primary
                else 0.0,
                targets=[r.target_qps or 0.0 for r in probes],
                verdicts=[r.valid for r in probes],
                note=outcome.note,
            )
            model.seconds = time.perf_counter() - begun
            if probes and not math.isclose(
                probes[0].target_qps or 0.0, server.FIRST_PROBE * upper, rel_tol=1e-6
            ):
                figures.model_guess = probes[0].target_qps
            # (2) Plain bisection, (3) LoadGen's FindPeakPerformance, (4) vLLM's serve_sla.
            figures.searches = {"model": model}
            for method in ("bisect", "peak", "interp"):
                if method not in args.methods:
                    continue
                begun = time.perf_counter()
                if method == "bisect":
                    found = bench.bisect(upper)
                elif method == "peak":
                    found = bench.find_peak(args.peak_start * upper, args.peak_decimals)
                else:
                    found = bench.interp(upper, args.interp_runs)
                found.seconds = time.perf_counter() - begun
                figures.searches[method] = found
            # Confirmation runs at each reported QPS.
            for method, search in figures.searches.items():
                if search.qps > 0:
                    for _ in range(args.confirm_runs):
                        confirm = bench.run(f"confirm {method}", search.qps)
                        search.confirms.append(confirm.valid)
                        if search.confirm_p is None:
                            search.confirm_p = confirm.percentile_ms(spec.percentile)
            answers = [s.qps for s in figures.searches.values() if s.qps > 0]
            # The 19/20 edge, walked from the model-led answer.
            if answers and args.edge_runs:
                start = args.edge_start * (model.qps or statistics.median(answers))
                figures.edge, tally = peers.reliable_edge(
                    lambda q: bench.run("edge", q).valid,
                    start,
                    args.sweep_step,
                    repeats=args.edge_runs,
                    needed=args.edge_needed,
                )
                figures.edge_tally = [(q, ok, n) for q, (ok, n) in sorted(tally.items())]
                print(
                    "    19/20 edge: "
                    + ", ".join(f"{q:.1f} {ok}/{n}" for q, ok, n in figures.edge_tally)
                    + f" -> {figures.edge}"
                )
                if figures.edge:
                    for search in figures.searches.values():
                        search.to_edge = search.qps / figures.edge
            # The reference: the highest VALID target of a fine sweep around the answers.
            # (Not around the model's guess: a wrong one would stretch the sweep.)
            if answers and args.sweep:
                low = 0.94 * min(answers)
                high = min(1.05 * max(answers), upper / (1 + tol))
                points = geometric_sweep(low, high, args.sweep_step)
                i = 0
                while i < len(points) and len(figures.sweep) < MAX_SWEEP_RUNS:
                    valid = bench.run("sweep", points[i]).valid
                    figures.sweep.append((points[i], valid))
                    i += 1
                    if i == len(points) and valid:  # still VALID at the top: keep climbing
                        nxt = points[-1] * (1 + args.sweep_step)
                        if nxt < upper:
                            points.append(nxt)
            # The reference is the first pass's (one fine sweep, as the issue defines it).
            passed = [q for q, ok in figures.sweep if ok]
            first_pass = list(figures.sweep)
            for repeat in range(1, args.sweep_repeats):
                for qps, _ in first_pass:
                    valid = bench.run(f"sweep {repeat + 1}", qps).valid
                    figures.sweep.append((qps, valid))
            if args.sweep_repeats > 1 and first_pass:
                figures.reliable = reliable_edge(figures.sweep)
            if len(figures.sweep) >= MAX_SWEEP_RUNS and figures.sweep[-1][1]:
                figures.note = "the sweep hit its run limit still VALID: no reference"
                passed = []
            if passed:
                ref = figures.reference = max(passed)
                above = [q for q, ok in figures.sweep if not ok and q > ref]
                figures.lowest_invalid_above = min(above) if above else None
                for search in figures.searches.values():
                    search.within = abs(search.qps - ref) <= tol * ref
                    search.landed = runs_to_land(search, ref, tol)
            if figures.reliable:
                edge = figures.reliable
                for search in figures.searches.values():
                    search.within_reliable = abs(search.qps - edge) <= tol * edge
    figures.seconds = time.perf_counter() - started
    return figures


def edge_summary(all_figures: list[Figures], tol: float) -> dict[str, Any]:
    """Per method against the 19/20 edge: runs, wall time, confirmation pass rate, reported /
    edge; and the reliable-answer target for the model-led search."""
    done = [f for f in all_figures if f.searches and f.edge]
    if not done:
        return {}
    methods = [m for m in METHODS if any(m in f.searches for f in done)]
    print()
    print(f"against the 19/20 edge ({len(done)} configurations): reported / edge, confirmation")
    print(f"{'config':<12} {'edge':>7} | " + " | ".join(f"{m:>22}" for m in methods))
    for f in done:
        cells = []
        for m in methods:
            s = f.searches.get(m)
            cells.append(
                f"{'':>22}"
                if s is None
                else f"{s.qps:7.1f} {s.to_edge or 0:5.3f} {sum(s.confirms)}/{len(s.confirms):<3}"
                f"{s.runs:>3}r"
            )
        print(f"{f.config:<12} {f.edge:7.1f} | " + " | ".join(cells))
    summary: dict[str, Any] = {}
    for m in methods:
        searches = [f.searches[m] for f in done if m in f.searches]
        passed = sum(sum(s.confirms) for s in searches)
        confirms = sum(len(s.confirms) for s in searches)
        shares = [s.to_edge or 0.0 for s in searches]
        summary[m] = {
            "configurations": len(searches),
            "median_runs": statistics.median(s.runs for s in searches),
            "median_seconds": statistics.median(s.seconds for s in searches),
            "confirm_valid": passed,
            "confirm_runs": confirms,
            "median_to_edge": statistics.median(shares),
            "min_to_edge": min(shares),
            "at_least_95": sum(x >= TARGET_EDGE_SHARE for x in shares),
            "above_edge": sum(x > 1 + 1e-9 for x in shares),
        }
        row = summary[m]
        print(
            f"  {m:<7} median {row['median_runs']:g} LoadGen runs, "
            f"{row['median_seconds']:.1f} s per configuration; confirmation runs VALID "
            f"{passed}/{confirms}"
            + (f" ({passed / confirms:.0%})" if confirms else "")
            + f"; reported / 19/20 edge: median {row['median_to_edge']:.3f}, lowest "
            f"{row['min_to_edge']:.3f}, >= {TARGET_EDGE_SHARE:.0%} in "
            f"{row['at_least_95']}/{len(searches)}, above the edge in "
            f"{row['above_edge']}/{len(searches)}"
        )
    model = summary.get("model")
    if model:
        rate = model["confirm_valid"] / model["confirm_runs"] if model["confirm_runs"] else 0.0
        checks = {
            "confirmation": rate >= TARGET_PASS_RATE
            and model["confirm_runs"] >= 30
            and model["configurations"] >= 10,
            "edge": model["at_least_95"] == model["configurations"],
            "runs": model["median_runs"] <= TARGET_RUNS,
        }
        ok = all(checks.values())
        print(
            f"reliable-answer target (model-led): confirmation {model['confirm_valid']}/"
            f"{model['confirm_runs']} = {rate:.0%} over {model['configurations']} "
            f"configurations (>= {TARGET_PASS_RATE:.0%} of >= 30 over >= 10) "
            f"[{'ok' if checks['confirmation'] else 'short'}]; >= {TARGET_EDGE_SHARE:.0%} of "
            f"the 19/20 edge in {model['at_least_95']}/{model['configurations']} "
            f"[{'ok' if checks['edge'] else 'short'}]; median {model['median_runs']:g} runs "
            f"(<= {TARGET_RUNS}) [{'ok' if checks['runs'] else 'over'}]: "
            f"{'PASS' if ok else 'FAIL'}"
        )
        summary["reliable_answer"] = {"pass": ok, "checks": checks}
    return summary


def reliable_edge(sweep: list[tuple[float, bool]]) -> float | None:
    """The highest target at and below which every run of the sweep passed; None when the
    lowest target already failed once."""
    failed = min((q for q, ok in sweep if not ok), default=math.inf)
    below = [q for q, ok in sweep if q < failed]
    return max(below, default=None)


def runs_to_land(search: Search, reference: float, tol: float) -> int | None:
    """The first run after which the search's answer so far (its largest target below every
    INVALID one that was VALID each time) lies within `tol` of `reference`."""
    verdicts: dict[float, list[bool]] = {}
    for count, (qps, valid) in enumerate(zip(search.targets, search.verdicts, strict=False), 1):
        verdicts.setdefault(qps, []).append(valid)
        lowest_invalid = min((q for q, v in verdicts.items() if not all(v)), default=math.inf)
        passing = [q for q, v in verdicts.items() if all(v) and q < lowest_invalid]
        if passing and abs(max(passing) - reference) <= tol * reference:
            return count
    return None


def mark(flag: bool | None, yes: str, no: str) -> str:
    return "-" if flag is None else (yes if flag else no)


def cell(search: Search | None) -> str:
    if search is None:
        return f"{'':>29}"
    within = mark(search.within, "yes", "NO")
    confirmed = mark(search.confirmed, "VALID", "INVALID")
    landed = "-" if search.landed is None else str(search.landed)
    return f"{search.runs:>3} {landed:>3} {search.qps:8.1f} {within:>4} {confirmed:>7}"


def print_table(all_figures: list[Figures], tol: float) -> dict[str, Any]:
    methods = [m for m in METHODS if any(m in f.searches for f in all_figures)]
    head = " | ".join(f"{m + ': runs land      QPS ref? confirm':>29}" for m in methods)
    print(f"{'config':<12} {'upper':>7} {'guess':>7} {'ref':>7} {'edge':>7} | {head}")
    for f in all_figures:
        guess = f"{f.model_guess:7.1f}" if f.model_guess else f"{'-':>7}"
        ref = f"{f.reference:7.1f}" if f.reference else f"{'-':>7}"
        ref += f" {f.reliable:7.1f}" if f.reliable else f" {'-':>7}"
        cells = " | ".join(cell(f.searches.get(m)) for m in methods)
        print(f"{f.config:<12} {f.upper_qps:7.1f} {guess} {ref} | {cells}")
        if f.note:
            print(f"{'':<12} note: {f.note}")
        for m, s in f.searches.items():
            if s.note:
                print(f"{'':<12} {m}: {s.note}")
    summary: dict[str, Any] = {}
    done = [f for f in all_figures if f.searches]
    for m in methods:
        searches = [f.searches[m] for f in done if m in f.searches]
        runs = [s.runs for s in searches]
        if not runs:
            continue
        landed = [s.landed for s in searches if s.within is not None and s.verdicts]
        summary[m] = {
            "median_runs": statistics.median(runs),
            "median_runs_to_land": statistics.median(
                [math.inf if n is None else n for n in landed]
            )
            if landed
            else None,
            "max_runs": max(runs),
            "within": sum(1 for s in searches if s.within),
            "with_reference": sum(1 for s in searches if s.within is not None),
            "within_reliable": sum(1 for s in searches if s.within_reliable),
            "with_reliable": sum(1 for s in searches if s.within_reliable is not None),
            "confirmed": sum(1 for s in searches if s.confirmed),
            "confirmed_of": sum(1 for s in searches if s.confirmed is not None),
            "confirm_valid": sum(sum(s.confirms) for s in searches),
            "confirm_runs": sum(len(s.confirms) for s in searches),
            "median_ratio_to_reference": statistics.median(
                [f.searches[m].qps / f.reference for f in done if m in f.searches and f.reference]
                or [float("nan")]
            ),
        }
    print()
    print(f"medians over {len(done)} configurations:")
    for m, s in summary.items():
        print(
            f"  {m:<7} median {s['median_runs']:g} LoadGen runs (max {s['max_runs']}), "
            + (
                f"landed within {tol:.0%} after a median {s['median_runs_to_land']:g}, "
                if s["median_runs_to_land"] is not None
                else ""
            )
            + f"within {tol:.0%} of the reference {s['within']}/{s['with_reference']}, "
            f"median reported/reference {s['median_ratio_to_reference']:.3f}, "
            f"confirmation runs VALID {s['confirm_valid']}/{s['confirm_runs']}"
            + (
                f" (answers passing all of theirs {s['confirmed']}/{s['confirmed_of']})"
                if s["confirm_runs"] > s["confirmed_of"]
                else ""
            )
            + (
                f", within {tol:.0%} of the reliable edge "
                f"{s['within_reliable']}/{s['with_reliable']}"
                if s["with_reliable"]
                else ""
            )
        )
    curve = pass_rates(done)
    if curve:
        summary["pass_rate_by_target"] = curve
        print(
            "every run (sweep, model, bisect, confirmation) by its target / the reference, "
            "pooled over configurations: VALID runs / runs"
        )
        print("  " + "  ".join(f"{b:.0%}: {ok}/{n}" for b, (ok, n) in curve.items()))
    return summary


def pass_rates(figures: list[Figures], width: float = 0.02) -> dict[float, tuple[int, int]]:
    """How often a run passes at a given distance from the reference: every run of the sweep,
    of `model`, `bisect` and `interp` and their confirmation runs, binned by target / reference
    (bins `width` wide, centred on multiples of it), pooled over configurations.
    FindPeakPerformance's sub-runs are left out (their verdicts are not kept)."""
    bins: dict[float, list[int]] = {}
    for f in figures:
        if not f.reference:
            continue
        runs = list(f.sweep)
        for method in ("model", "bisect", "interp"):
            search = f.searches.get(method)
            if search is None:
                continue
            runs += list(zip(search.targets, search.verdicts, strict=False))
            runs += [(search.qps, valid) for valid in search.confirms]
        for qps, valid in runs:
            centre = round(round(qps / f.reference / width) * width, 6)
            tally = bins.setdefault(centre, [0, 0])
            tally[0] += bool(valid)
            tally[1] += 1
    return {b: (ok, n) for b, (ok, n) in sorted(bins.items()) if 0.8 <= b <= 1.2}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--landscape", type=Path, default=DEFAULT_LANDSCAPE)
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.1,
        help="replayed latencies, the bound, durations and deque timeout are multiplied by it",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=100.0, help="bound at time scale 1 (default 100)"
    )
    parser.add_argument("--percentile", type=float, default=99.0)
    parser.add_argument(
        "--configs",
        type=lambda s: [parse_key(k) for k in s.split(",") if k.strip()],
        help="e.g. fp32/b1/s1,int8/b2/s2 (default: streams 1-2, batch 1-8 that fit the bound)",
    )
    parser.add_argument("--min-queries", type=int, default=600)
    parser.add_argument(
        "--duration-s", type=float, default=1.0, help="min duration at time scale 1 (default 1)"
    )
    parser.add_argument(
        "--deque-timeout-us", type=int, default=2000, help="at time scale 1 (default 2000)"
    )
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--sweep-step", type=float, default=0.02)
    parser.add_argument(
        "--sweep-repeats",
        type=int,
        default=1,
        help="run the sweep's targets this many times in all (passes after the first: the "
        "same targets); the reference stays the first pass's highest VALID, and the "
        "'reliable edge' is the highest target at and below which every sweep run passed",
    )
    parser.add_argument(
        "--peak-start", type=float, default=0.4, help="FindPeak's start, share of Offline"
    )
    parser.add_argument(
        "--peak-decimals",
        type=int,
        help="FindPeak's decimals of precision (default: LoadGen's 1 at time scale 1, "
        "i.e. 1 + log10(time scale): the same number of steps at any scale)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the replay noise's seed")
    parser.add_argument(
        "--session",
        type=int,
        default=0,
        help="replay the repeats of this recording session of the landscape (default 0: the "
        "first recording, the one every figure in RESULTS.md was measured on); -1: all",
    )
    parser.add_argument(
        "--methods",
        type=lambda s: {m.strip() for m in s.split(",") if m.strip()},
        default=set(METHODS),
        help=f"comma-separated, of {', '.join(METHODS)} (model always runs: its Offline run "
        "is the bound of the others)",
    )
    parser.add_argument(
        "--no-refine",
        action="store_true",
        help="the model-led search without refitting the model to each run (the search as it "
        "was before harness.queueing.calibrate), for an A/B comparison",
    )
    parser.add_argument(
        "--bracket",
        action="store_true",
        help="the model-led search by bracketing even where early stopping allows late "
        "queries (the harness's search before its late-count search), for an A/B comparison",
    )
    parser.add_argument(
        "--answer-runs",
        type=int,
        default=ScenarioSpec.answer_runs,
        help="VALID runs the model-led search needs at its answer (the harness's "
        "--answer-runs; default %(default)s)",
    )
    parser.add_argument(
        "--confirm-runs",
        type=int,
        default=1,
        help="independent runs at each reported QPS after the searches (default 1)",
    )
    parser.add_argument(
        "--interp-runs",
        type=int,
        default=1,
        help="LoadGen runs per probe of the interp search (vLLM's --num-runs; its default is "
        "3); the margin is their mean percentile's (default %(default)s)",
    )
    parser.add_argument(
        "--edge-runs",
        type=int,
        default=0,
        help="measure each configuration's reliable edge with this many runs per target "
        "(the reliable-answer target: 20; default 0: not measured)",
    )
    parser.add_argument(
        "--edge-needed",
        type=int,
        help="runs of --edge-runs a target must pass to be under the edge (default: all but one)",
    )
    parser.add_argument(
        "--edge-start",
        type=float,
        default=1.0,
        help="the edge walk's first target, share of the model-led answer (default %(default)s)",
    )
    parser.add_argument(
        "--no-sweep",
        dest="sweep",
        action="store_false",
        help="leave out the fine sweep (and so the reference and the runs-to-land figures)",
    )
    parser.add_argument("--out", type=Path, help="write every figure here (JSON)")
    args = parser.parse_args()
    if args.edge_needed is None:
        args.edge_needed = max(1, args.edge_runs - 1)
    if args.answer_runs < 1 or args.confirm_runs < 0:
        parser.error("--answer-runs must be >= 1 and --confirm-runs >= 0")
    unknown = args.methods - set(METHODS)
    if unknown:
        parser.error(
            f"--methods: unknown {', '.join(sorted(unknown))} (valid: {', '.join(METHODS)})"
        )
    if args.session < 0:
        args.session = None
    if args.peak_decimals is None:
        args.peak_decimals = max(0, round(1 + math.log10(args.time_scale)))
    logging.basicConfig(stream=sys.stdout, format="%(message)s")
    logging.getLogger("harness").setLevel(logging.INFO)
    data = read_landscape(args.landscape)
    found = recorded_latencies(data, args.session)
    keys = args.configs or default_configs(found, args.latency_ms)
    scale = args.time_scale
    print(f"machine: {cpu_name()}, Python {platform.python_version()}")
    print(
        f"landscape {args.landscape} ({data.get('model')}, recorded on {data.get('device')}), "
        f"{len(keys)} configurations"
    )
    print(
        f"replayed at time scale {scale:g}: every recorded latency, the bound "
        f"({args.latency_ms:g} ms -> {args.latency_ms * scale:g} ms at p{args.percentile:g}), "
        f"the searches' longest run ({ScenarioSpec.max_run_s:g} s), the min duration "
        f"({args.duration_s:g} s -> {args.duration_s * scale:g} s) and the "
        f"deque timeout ({args.deque_timeout_us} us -> {round(args.deque_timeout_us * scale)} us)"
        f" are multiplied by {scale:g}, so QPS are 1/{scale:g} times those at time scale 1; "
        f"min {args.min_queries} queries per Server run; tolerance {args.tolerance:.0%}; "
        f"FindPeak from {args.peak_start:g} x Offline, decimals {args.peak_decimals}"
    )
    started = time.perf_counter()
    all_figures: list[Figures] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, key in enumerate(keys):
            recorded_ms = 1000 * statistics.median(found.get(key) or [float("nan")])
            print(f"\n[{i + 1}/{len(keys)}] {name(key)} (recorded batch {recorded_ms:.1f} ms)")
            figures = measure_config(key, args, recorded_ms, Path(tmp) / f"c{i:02d}")
            print(f"    {figures.seconds:.1f} s, reference {figures.reference}")
            all_figures.append(figures)
            if args.out:  # after every configuration: an interrupted run keeps its figures
                write_figures(args, all_figures, {}, time.perf_counter() - started)
    elapsed = time.perf_counter() - started
    print()
    summary = print_table(all_figures, args.tolerance)
    summary["edge"] = edge_summary(all_figures, args.tolerance)
    print(f"total {elapsed / 60:.1f} min")
    if args.out:
        write_figures(args, all_figures, summary, elapsed)
    return 0


def write_figures(
    args: argparse.Namespace, figures: list[Figures], summary: dict[str, Any], seconds: float
) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": cpu_name(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "configurations": [asdict(f) for f in figures],
        "summary": summary,
        "seconds": seconds,
    }
    args.out.write_text(json.dumps(document, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())

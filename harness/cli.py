"""`python -m harness run`: measure one configuration with LoadGen, like trtexec for this tool."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.backends import BACKENDS
from harness.cli_common import (
    Parser,
    add_input_flags,
    common_flags,
    format_table,
    parse_option,
    run_guarded,
    setup_logging,
)
from harness.config import (
    COMPLIANCE_SERVER_QUERIES,
    PRECISIONS,
    SCENARIO_NAMES,
    SEARCH_SERVER_QUERIES,
    RunConfig,
    ScenarioSpec,
    default_cache_dir,
)
from harness.result import Result
from harness.runner import measure
from harness.scenarios.server import MIN_LATE


def build_parser() -> argparse.ArgumentParser:
    """The flags' defaults are RunConfig's and ScenarioSpec's, never a second copy."""
    parser = Parser(prog="python -m harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    run = sub.add_parser(
        "run",
        parents=[common_flags()],  # type: ignore[list-item]
        help="measure one configuration with MLPerf LoadGen",
        description="Measure one configuration (batch size, streams, precision) of one model "
        "with the real MLPerf LoadGen, Offline or Server, and print LoadGen's figures.",
    )
    what = run.add_argument_group("what runs")
    what.add_argument(
        "--model",
        default=RunConfig.model,
        help="built-in name (resnet50, mobilenet, tiny) or a path to an ONNX file with a "
        "dynamic batch dimension (default %(default)s)",
    )
    what.add_argument(
        "--backend",
        default=RunConfig.backend,
        help=f"one of {', '.join(BACKENDS)} (default %(default)s)",
    )
    what.add_argument(
        "--device", default=RunConfig.device, help="cpu, cuda or cuda:N (default %(default)s)"
    )
    what.add_argument(
        "--precision",
        default=RunConfig.precision,
        help=f"one of {', '.join(PRECISIONS)} (default %(default)s)",
    )
    what.add_argument(
        "--batch-size",
        type=int,
        default=RunConfig.batch_size,
        help="largest batch (default %(default)s)",
    )
    what.add_argument(
        "--streams",
        type=int,
        default=RunConfig.streams,
        help="concurrent workers (default %(default)s)",
    )
    what.add_argument(
        "--threads",
        type=int,
        default=RunConfig.threads,
        help="intra-op threads per stream (default: the cores split among the streams)",
    )
    what.add_argument(
        "--deque-timeout-us",
        type=int,
        default=RunConfig.deque_timeout_us,
        help="how long the batcher waits to fill a batch (default %(default)s)",
    )
    what.add_argument(
        "--samples",
        type=int,
        default=RunConfig.samples,
        help="samples in the QSL (default: fits 128 MiB)",
    )
    what.add_argument(
        "--data",
        type=Path,
        help=".npz file, or folder of .npz/.npy samples, or folder with one <input>.npy per "
        "input: samples on axis 0 whatever the model's batch axis; a `labels` array (one class "
        "per sample) scores accuracy against fp32's (default: synthetic, seeded)",
    )
    what.add_argument(
        "--seed",
        type=int,
        default=RunConfig.seed,
        help="seed of the synthetic samples (default %(default)s)",
    )
    what.add_argument(
        "--backend-option",
        action="append",
        type=parse_option,
        default=[],
        metavar="KEY=VALUE",
        help="backend setting, e.g. latency_ms=2 (null)",
    )
    inputs = run.add_argument_group("model inputs and accuracy")
    add_input_flags(inputs)
    inputs.add_argument(
        "--accuracy-floor",
        type=float,
        default=RunConfig.accuracy_floor,
        metavar="F",
        help="least agreement with fp32 an fp16/int8 variant must keep, by --accuracy-metric "
        "(with labels in --data: accuracy relative to fp32's, 0.99 being MLPerf's rule); "
        "under it the result says loudly that its throughput is not usable "
        "(default %(default)s, the tuner's)",
    )
    how = run.add_argument_group("how LoadGen measures")
    how.add_argument(
        "--scenario",
        default=ScenarioSpec.scenario,
        help=f"one of {', '.join(SCENARIO_NAMES)} (default %(default)s)",
    )
    how.add_argument(
        "--target-qps", type=float, default=ScenarioSpec.target_qps, help="Server: run at this QPS"
    )
    how.add_argument(
        "--find-max-qps",
        action="store_true",
        help="Server: search the largest VALID QPS under the latency bound",
    )
    how.add_argument(
        "--answer-runs",
        type=int,
        default=ScenarioSpec.answer_runs,
        metavar="N",
        help="--find-max-qps by bracketing (where LoadGen's early stopping lets fewer than "
        f"{MIN_LATE} queries of a run be late, e.g. p99 with 600 queries): VALID runs the "
        "answer needs before it is reported (default %(default)s; 1 is the cheapest search, "
        "each more costs a run)",
    )
    how.add_argument(
        "--qps-tolerance",
        type=float,
        default=ScenarioSpec.qps_tolerance,
        metavar="SHARE",
        help="--find-max-qps by bracketing: stop once the largest VALID target lies within this "
        "share of the smallest INVALID one (default %(default)s; 0.05 costs about one run "
        "fewer per search, the answer up to 5%% under the edge)",
    )
    how.add_argument(
        "--latency-ms",
        type=float,
        default=ScenarioSpec.latency_ms,
        help="Server latency bound (default %(default)s, ResNet-50's MLPerf bound)",
    )
    how.add_argument(
        "--percentile",
        type=float,
        default=ScenarioSpec.percentile,
        help="Server latency percentile (default %(default)s)",
    )
    how.add_argument(
        "--duration-s",
        type=float,
        default=ScenarioSpec.duration_s,
        help="LoadGen minimum duration of each run (default %(default)s)",
    )
    how.add_argument(
        "--min-queries",
        type=int,
        default=ScenarioSpec.min_queries,
        help=f"Server minimum query count (default {SEARCH_SERVER_QUERIES:,}; "
        f"{COMPLIANCE_SERVER_QUERIES:,} with --compliance)",
    )
    how.add_argument(
        "--expected-qps",
        type=float,
        default=ScenarioSpec.expected_qps,
        help="Offline expected QPS (default: estimated from a warm-up)",
    )
    how.add_argument(
        "--compliance",
        action="store_true",
        help="MLPerf-length runs: 60 s, 270,336 Server queries",
    )
    out = run.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        help=f"folder for LoadGen's logs (default {ScenarioSpec.out_dir}/<name>)",
    )
    out.add_argument("--json", type=Path, help="write the result as JSON to this file")
    out.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="models, variants and engines cache (default %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug, args.quiet)
    return run_guarded(lambda: _run(args), args.debug, "harness")


def run_config(args: argparse.Namespace) -> RunConfig:
    """The RunConfig the `run` flags describe."""
    return RunConfig(
        model=args.model,
        backend=args.backend,
        precision=args.precision,
        batch_size=args.batch_size,
        streams=args.streams,
        device=args.device,
        threads=args.threads,
        deque_timeout_us=args.deque_timeout_us,
        samples=args.samples,
        data_dir=args.data,
        seed=args.seed,
        cache_dir=args.cache_dir,
        backend_options=dict(args.backend_option),
        dims=dict(args.dims),
        shapes=dict(args.shapes),
        input_ranges=dict(args.input_ranges),
        accuracy_metric=args.accuracy_metric,
        accuracy_output=args.accuracy_output,
        accuracy_floor=args.accuracy_floor,
    )


def scenario_spec(args: argparse.Namespace, out: Path) -> ScenarioSpec:
    """The ScenarioSpec the `run` flags describe, logging to `out`."""
    return ScenarioSpec(
        scenario=args.scenario,
        duration_s=args.duration_s,
        target_qps=args.target_qps,
        find_max_qps=args.find_max_qps,
        answer_runs=args.answer_runs,
        qps_tolerance=args.qps_tolerance,
        latency_ms=args.latency_ms,
        percentile=args.percentile,
        min_queries=args.min_queries,
        compliance=args.compliance,
        expected_qps=args.expected_qps,
        out_dir=out,
    )


def _run(args: argparse.Namespace) -> int:
    run = run_config(args)
    out = args.out or ScenarioSpec.out_dir / (
        f"{Path(run.model).stem}-{run.backend}-{run.precision}-b{run.batch_size}"
        f"-s{run.streams}-{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    spec = scenario_spec(args, out)
    result = measure(run, spec)
    print(render(result))
    print(f"LoadGen logs: {out}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"result: {args.json}")
    return 0


def render(result: Result) -> str:
    """The short result table the CLI prints."""
    lat = result.latency_ms
    unit = "samples/s" if result.scenario == "offline" else "QPS"
    label = "simulated (null backend)" if result.simulated else result.device
    lines = [
        f"{result.model} on {result.backend} ({label}), {result.precision}, "
        f"batch {result.batch_size}, {result.streams} stream(s)",
        format_table(
            [
                [
                    result.scenario,
                    "VALID" if result.valid else "INVALID",
                    result.score,
                    lat.get("p50"),
                    lat.get("p90"),
                    lat.get("p99"),
                    len(result.loadgen_runs),
                ]
            ],
            ["scenario", "result", unit, "p50 ms", "p90 ms", "p99 ms", "LoadGen runs"],
        ),
    ]
    if result.scenario == "server" and len(result.loadgen_runs) > 1:
        rows = [
            [
                r.get("scenario"),
                r.get("target_qps"),
                "VALID" if r.get("valid") else "INVALID",
                (r.get("latency_ms") or {}).get(f"p{result.percentile:g}"),
                _reason(r),
            ]
            for r in result.loadgen_runs
        ]
        header = ["run", "target", "result", f"p{result.percentile:g} ms", "why INVALID"]
        lines.append(format_table(rows, header))
    inputs = result.inputs or {}
    if inputs.get("dims"):
        lines.append("dims: " + ", ".join(f"{k}={v}" for k, v in inputs["dims"].items()))
    ranged = [t for t in inputs.get("tensors", []) if "range" in t]
    if ranged:
        lines.append(
            "synthetic inputs: "
            + "; ".join(
                f"{t['name']} {t['range']['low']:g}..{t['range']['high']:g} "
                f"({t['range']['source']})"
                for t in ranged
            )
        )
    if result.agreement:
        lines.extend(agreement_lines(result.agreement, result.precision))
    if result.note:
        lines.append(f"note: {result.note}")
    return "\n".join(lines)


def agreement_lines(a: Mapping[str, Any], precision: str) -> list[str]:
    """The agreement with fp32, and a warning line when it is under the floor: a throughput
    beside an agreement that low is not a result anyone can deploy."""
    metric = a.get("metric", "top1")
    value = a.get("value", a["top1"])
    lines = [
        f"agreement with fp32 on {a.get('output') or 'the first output'}: {metric} "
        f"{value:.4f} on {a['samples']} samples, max abs error {a['max_abs_error']:.4g}"
    ]
    accuracy, reference = a.get("accuracy"), a.get("reference_accuracy")
    if isinstance(accuracy, float) and accuracy == accuracy:
        lines.append(f"accuracy on the labels: {precision} {accuracy:.4f}, fp32 {reference:.4f}")
    floor = a.get("floor")
    if isinstance(floor, (int, float)) and isinstance(value, float) and value < floor:
        lines.append(
            f"WARNING: {precision} is under the accuracy floor: {metric} {value:.4f} < "
            f"{floor:g}; its throughput above is not a usable result (a study stores such a "
            "trial as infeasible)"
        )
    elif isinstance(value, float) and value != value:
        lines.append(
            f"WARNING: the agreement of {precision} with fp32 could not be scored ({metric} "
            "is not defined for this output); check --accuracy-metric and --accuracy-output"
        )
    return lines


def _reason(run: dict[str, object]) -> str:
    """A short reason for an INVALID LoadGen run, from LoadGen's own flags."""
    if run.get("valid"):
        return ""
    reasons = []
    if run.get("perf_constraints_met") is False:
        reasons.append("latency over the bound")
    if run.get("early_stopping_met") is False:
        reasons.append("early stopping (too few queries)")
    if run.get("min_duration_met") is False:
        reasons.append("min duration")
    if run.get("min_queries_met") is False:
        reasons.append("min queries")
    return ", ".join(reasons) or "see LoadGen log"


if __name__ == "__main__":
    sys.exit(main())

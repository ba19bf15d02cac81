"""`python -m tuner`: optimize, export, report, studies, dashboard.

Parses flags, builds the validated configuration and dispatches; every user error becomes one
line and an exit code (2 for usage errors, 1 otherwise) in one place, `run_guarded`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.cli_common import (
    Parser,
    add_input_flags,
    common_flags,
    default_cache_dir,
    format_table,
    parse_option,
    run_guarded,
    setup_logging,
)
from harness.config import check_int
from tuner.config import DEFAULT_STORAGE, OBJECTIVES, SAMPLERS
from tuner.storage import GRACE_FACTOR, HEARTBEAT_S

STORAGE_ENV = "TUNER_STORAGE"
log = logging.getLogger("tuner")


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2,4, got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _storage_flag(parser: argparse.ArgumentParser, required_help: str = "") -> None:
    parser.add_argument(
        "--storage",
        help=f"study database URL (default ${STORAGE_ENV}, else {DEFAULT_STORAGE}){required_help}",
    )


def _storage(args: argparse.Namespace, fallback: str | None = DEFAULT_STORAGE) -> str:
    url = args.storage or os.environ.get(STORAGE_ENV) or fallback
    if url is None:
        raise SystemExit(2)
    return url


def add_optimize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "optimize",
        parents=[common_flags()],
        help="search the best batch size, streams and precision",
        description="Tune one model on one device: Optuna proposes batch size, streams and "
        "precision; the harness measures each with MLPerf LoadGen in a child process; every "
        "trial is stored in the study database. Re-running the same command resumes the study. "
        "Without arguments: the built-in resnet50 on ONNX Runtime CPU, Offline, "
        "stored in studies/tuner.db.",
    )
    p.add_argument("--config", type=Path, help="study file (studies/*.toml); flags override it")
    p.add_argument(
        "--study",
        dest="name",
        help="study name (default: from model, scenario, backend and device)",
    )
    _storage_flag(p)
    g = p.add_argument_group("model and device")
    g.add_argument("--model", help="built-in (resnet50, mobilenet, tiny) or an ONNX path")
    g.add_argument(
        "--backend",
        help="onnxruntime (default, CPU or CUDA), tensorrt (NVIDIA GPU, the gpu extra), torch "
        "(CUDA or CPU, the torch extra), null or replay (simulated, for tests and benchmarks)",
    )
    g.add_argument("--device", help="cpu (default), cuda or cuda:N")
    g.add_argument("--threads", type=int, help="intra-op threads per stream")
    g.add_argument(
        "--data",
        dest="data_dir",
        type=Path,
        help=".npz file, or folder of .npz/.npy samples, or folder with one <input>.npy per "
        "input (default: synthetic, seeded)",
    )
    g.add_argument("--samples", type=int, help="samples in the QSL")
    g.add_argument(
        "--backend-option",
        action="append",
        type=parse_option,
        metavar="KEY=VALUE",
        help="backend setting (repeatable)",
    )
    add_input_flags(
        p.add_argument_group("model inputs and accuracy (study file: [model], [study])"),
        defaults=False,
    )
    g = p.add_argument_group("scenario")
    g.add_argument("--scenario", help="offline (default) or server")
    g.add_argument("--latency-ms", type=float, help="Server latency bound (default 15)")
    g.add_argument("--percentile", type=float, help="Server latency percentile (default 99)")
    g.add_argument("--duration-s", type=float, help="LoadGen min duration per run (default 2)")
    g.add_argument("--min-queries", type=int, help="Server min query count (default 600)")
    g.add_argument(
        "--answer-runs",
        type=int,
        metavar="N",
        help="Server: VALID runs each trial's max-QPS search needs at its answer (default 2; "
        "1 is the cheapest search, each more costs a run per trial)",
    )
    g = p.add_argument_group("search")
    g.add_argument(
        "--batch-sizes",
        type=_int_list,
        help="e.g. 1,2,4,8 (default: powers of two up to --max-batch)",
    )
    g.add_argument("--max-batch", type=int, help="largest default batch size (default 32)")
    g.add_argument("--streams", type=_int_list, help="e.g. 1,2 (default 1..--max-streams)")
    g.add_argument("--max-streams", type=int, help="default 2")
    g.add_argument(
        "--precisions",
        type=_str_list,
        help="e.g. fp32,int8 (default: all the backend runs on the device)",
    )
    g.add_argument(
        "--deque-timeouts-us",
        dest="deque_timeout_us",
        type=_int_list,
        help="Server batching timeouts to try (default 500,2000,8000)",
    )
    g.add_argument("--trials", type=int, help="trial budget of the study (default 12)")
    g.add_argument("--timeout", dest="timeout_s", type=float, help="stop after this many seconds")
    g.add_argument(
        "--trial-timeout",
        dest="trial_timeout_s",
        type=float,
        help="fail a trial that runs longer (default 600 s)",
    )
    g.add_argument("--sampler", help=f"one of {', '.join(SAMPLERS)} (default tpe)")
    g.add_argument("--seed", type=int, help="sampler and sample-data seed (default 0)")
    g.add_argument(
        "--objectives",
        type=_str_list,
        help=f"throughput, or throughput,p99 (Server; Pareto front); from {OBJECTIVES}",
    )
    g.add_argument(
        "--accuracy-floor",
        type=float,
        help="least top-1 agreement with fp32 a precision must keep (default 0.8)",
    )
    g.add_argument(
        "--confirm-runs",
        type=int,
        help="once the budget is spent, measure each top configuration this many more times; "
        "the best median wins (default 2; 0: the best single run wins)",
    )
    g.add_argument(
        "--confirm-top",
        type=int,
        help="how many of the best configurations to confirm (default 3)",
    )
    g = p.add_argument_group("workers")
    g.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes sharing the study (default 1)",
    )
    g.add_argument(
        "--gpus",
        help="all, or nvidia-smi indices like 0,2: one worker per GPU (GPU backends); GPUs of "
        "one model share a study, each model gets its own",
    )
    _heartbeat_flag(g)
    g = p.add_argument_group("files")
    g.add_argument("--cache-dir", type=Path, help=f"default {default_cache_dir()}")
    g.add_argument("--runs-dir", type=Path, help="LoadGen logs of every trial (default runs/)")
    p.set_defaults(action=_optimize)


def _heartbeat_flag(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--heartbeat-s",
        type=int,
        default=HEARTBEAT_S,
        help=f"heartbeat of a running trial; one silent {GRACE_FACTOR}x as long belonged to a "
        f"killed worker and is failed, then retried once (default {HEARTBEAT_S})",
    )


def add_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        parents=[common_flags()],
        help="join an existing study and run its trials",
        description="Join a study made by `optimize` and run trials until its budget is spent. "
        "Start as many as you like, on any host that reaches the storage (PostgreSQL for "
        "several hosts; SQLite only for workers on one host).",
    )
    _storage_flag(p)
    p.add_argument("--study", required=True, help="study name (see `python -m tuner studies`)")
    p.add_argument(
        "--trial-timeout",
        dest="trial_timeout_s",
        type=float,
        help="fail a trial that runs longer (default: the study's)",
    )
    _heartbeat_flag(p)
    p.add_argument("--worker-name", default="", help="prefix of this worker's progress lines")
    p.add_argument("--cache-dir", type=Path, help=f"default {default_cache_dir()}")
    p.add_argument("--runs-dir", type=Path, help="LoadGen logs of every trial (default runs/)")
    p.set_defaults(action=_worker)


def add_system(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "system",
        parents=[common_flags()],
        help="measure the best configuration on several GPUs at once",
        description="Run the study's best per-GPU configuration on all the selected GPUs "
        "together as one LoadGen test (one backend, its streams and batcher per GPU, one SUT "
        "dispatching to them), print the system score and each GPU's share, and store it on "
        "the study as `system_result`.",
    )
    _storage_flag(p)
    p.add_argument("--study", required=True, help="study name (see `python -m tuner studies`)")
    p.add_argument("--gpus", default="all", help="all (default), or nvidia-smi indices like 0,2")
    p.add_argument("--scenario", choices=("offline", "server"), help="default: the study's")
    p.add_argument("--latency-ms", type=float, help="Server latency bound (default: the study's)")
    p.add_argument("--duration-s", type=float, help="LoadGen min duration (default: the study's)")
    p.add_argument("--timeout", dest="timeout_s", type=float, help="give up after this many s")
    p.add_argument("--cache-dir", type=Path, help=f"default {default_cache_dir()}")
    p.add_argument("--runs-dir", type=Path, help="LoadGen logs (default runs/)")
    p.set_defaults(action=_system)


def add_export(sub: argparse._SubParsersAction) -> None:
    from tuner.export import FORMATS

    p = sub.add_parser(
        "export",
        parents=[common_flags()],
        help="write the best configuration for deployment",
        description="Write the best feasible trial of a study as json, a LoadGen user.conf, a "
        "Triton config.pbtxt, a trtexec command or NVIDIA MLPerf harness config.json keys.",
    )
    _storage_flag(p)
    p.add_argument("--study", required=True, help="study name (see `python -m tuner studies`)")
    p.add_argument("--format", default="json", help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--out", type=Path, required=True, help="file to write")
    p.add_argument(
        "--trial",
        type=int,
        help="export this trial (needed when several trials are Pareto-optimal)",
    )
    p.set_defaults(action=_export)


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        parents=[common_flags()],
        help="print the trials and write a CSV and plots",
        description="Print a study's trials as a table; write trials.csv and PNG plots "
        "(throughput vs batch size, p99 vs QPS, history, best vs baseline) to --out.",
    )
    _storage_flag(p)
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--out", type=Path, required=True, help="folder for the CSV and plots")
    p.set_defaults(action=_report)


def add_studies(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "studies",
        parents=[common_flags()],
        help="list the studies in a database",
        description="List the studies in a database with their best values.",
    )
    _storage_flag(p)
    p.set_defaults(action=_studies)


def add_dashboard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard",
        parents=[common_flags()],
        help="browse the studies in optuna-dashboard",
        description="Start optuna-dashboard on the study database (binds 127.0.0.1 unless "
        "--host says otherwise).",
    )
    _storage_flag(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.set_defaults(action=_dashboard)


COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "optimize": add_optimize,
    "worker": add_worker,
    "system": add_system,
    "export": add_export,
    "report": add_report,
    "studies": add_studies,
    "dashboard": add_dashboard,
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m tuner", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug, args.quiet)
    action: Callable[[argparse.Namespace], int] = args.action
    return run_guarded(lambda: action(args), args.debug, "tuner")


def _optimize(args: argparse.Namespace) -> int:
    import optuna

    from tuner import config
    from tuner.pipeline import Trials, optimize

    fields = (
        "name",
        "model",
        "backend",
        "device",
        "threads",
        "data_dir",
        "samples",
        "scenario",
        "latency_ms",
        "percentile",
        "duration_s",
        "min_queries",
        "answer_runs",
        "batch_sizes",
        "max_batch",
        "streams",
        "max_streams",
        "precisions",
        "deque_timeout_us",
        "trials",
        "timeout_s",
        "trial_timeout_s",
        "sampler",
        "seed",
        "objectives",
        "accuracy_floor",
        "accuracy_metric",
        "accuracy_output",
        "confirm_runs",
        "confirm_top",
        "cache_dir",
        "runs_dir",
    )
    overrides = {f: getattr(args, f) for f in fields}
    for key in ("dims", "shapes", "input_ranges"):  # repeatable NAME=... flags -> a table
        overrides[key] = dict(getattr(args, key)) if getattr(args, key) else None
    overrides["storage"] = args.storage or os.environ.get(STORAGE_ENV)
    if args.backend_option:
        overrides["backend_options"] = dict(args.backend_option)
    cfg = config.build(args.config, **overrides)  # no --cache-dir: StudyConfig's default
    # The progress lines of `optimize` say what Optuna's INFO log would, once; -q means quiet.
    optuna.logging.set_verbosity(optuna.logging.DEBUG if args.debug else optuna.logging.WARNING)
    check_int("--workers", args.workers, 1)
    say: Callable[[str], None] = (
        (lambda _: None) if args.quiet else (lambda line: log.info("%s", line))
    )
    trials = Trials(args.workers, args.gpus, args.heartbeat_s, args.quiet)
    trials.check(cfg, args.device)
    finished = optimize(cfg, say, trials)
    print(finished.summary)
    if finished.message is not None:
        print(f"tuner: {finished.message}", file=sys.stderr)
    return finished.code


def _worker(args: argparse.Namespace) -> int:
    import optuna

    from tuner.study import join, work

    optuna.logging.set_verbosity(optuna.logging.DEBUG if args.debug else optuna.logging.WARNING)
    local = {
        "cache_dir": args.cache_dir or default_cache_dir(),
        "runs_dir": args.runs_dir,
        "trial_timeout_s": args.trial_timeout_s,
    }
    prepared = join(_storage(args), args.study, args.heartbeat_s, **local)
    prefix = f"{args.worker_name}: " if args.worker_name else ""

    def say(line: str) -> None:
        if not args.quiet:
            log.info("%s%s", prefix, line)

    try:
        ran = work(prepared, say, owner=args.worker_name or "worker")
    except KeyboardInterrupt:
        say("interrupted: the running trial is stored as FAIL (interrupted)")
        return 130
    say(f"done: ran {ran} trial(s)")
    return 0


def _system(args: argparse.Namespace) -> int:
    import optuna

    from harness import gpus as nvml
    from tuner.system import SystemRequest, render, run_system

    optuna.logging.set_verbosity(optuna.logging.DEBUG if args.debug else optuna.logging.WARNING)
    request = SystemRequest(
        storage=_storage(args),
        study=args.study,
        gpus=args.gpus,
        scenario=args.scenario,
        latency_ms=args.latency_ms,
        duration_s=args.duration_s,
        timeout_s=args.timeout_s,
        quiet=args.quiet,
    )
    local = {"cache_dir": args.cache_dir or default_cache_dir(), "runs_dir": args.runs_dir}
    found = nvml.discover()
    result = run_system(
        request, found.gpus, found.reason, local, lambda line: log.info("%s", line)
    )
    print(render(result))
    return 0


def _export(args: argparse.Namespace) -> int:
    from tuner.export import export
    from tuner.study import load

    study = load(_storage(args), args.study)
    path = export(study, args.format, args.out, args.trial)
    print(f"wrote {path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from tuner.report import summary_lines, trials_table, write_report
    from tuner.study import load

    study = load(_storage(args), args.study)
    print(trials_table(study))
    for line in summary_lines(study):
        print(line)
    for path in write_report(study, args.out):
        print(f"wrote {path}")
    return 0


def _studies(args: argparse.Namespace) -> int:
    import optuna

    from tuner.results import best_trial, robust_value, study_setting
    from tuner.storage import open_storage

    storage = open_storage(_storage(args), create=False)
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        # The summary's best_trial ignores constraints and Pareto fronts; export does not.
        best = best_trial(optuna.load_study(study_name=s.study_name, storage=storage))
        attrs = s.user_attrs
        rows.append(
            [
                s.study_name,
                attrs.get("model"),
                study_setting(attrs, "scenario"),
                study_setting(attrs, "backend"),
                attrs.get("device"),
                s.n_trials,
                robust_value(best) if best is not None and best.values else None,
                _params_text(best.params) if best is not None else None,
            ]
        )
    if not rows:
        print("no studies")
        return 0
    header = ["study", "model", "scenario", "backend", "device", "trials", "best", "best config"]
    print(format_table(rows, header))
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from tuner.dashboard import serve

    serve(_storage(args), args.host, args.port)
    return 0


def _params_text(params: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


if __name__ == "__main__":
    sys.exit(main())

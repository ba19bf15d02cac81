"""`python -m tuner`: optimize, submit, worker, cancel, system, export, report, studies,
dashboard.

Parses flags, builds the validated configuration and dispatches; every user error becomes one
line and an exit code (2 for usage errors, 1 otherwise) in one place, `run_guarded`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.cli_common import (
    Parser,
    add_input_flags,
    common_flags,
    default_cache_dir,
    format_table,
    run_guarded,
    setup_logging,
)
from harness.config import SCENARIO_NAMES, check_int
from tuner import config
from tuner.config import DEFAULT_STORAGE
from tuner.storage import GRACE_FACTOR, HEARTBEAT_S, MAX_WAIT_S, MIN_WAIT_S

STORAGE_ENV = "TUNER_STORAGE"
log = logging.getLogger("tuner")


def _storage_flag(parser: argparse._ActionsContainer, required_help: str = "") -> None:
    declared = config.declared(config.StudyConfig)["storage"]
    assert declared.flag is not None
    parser.add_argument(
        declared.flag,
        dest="storage",
        help=f"{declared.help} (default ${STORAGE_ENV}, else {DEFAULT_STORAGE}){required_help}",
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
        "precision; the harness measures each with MLPerf LoadGen in a warm worker process; every "
        "trial is stored in the study database. Re-running the same command resumes the study. "
        "Without arguments: the built-in resnet50 on ONNX Runtime CPU, Offline, "
        "stored in studies/tuner.db.",
    )
    p.add_argument("--config", type=Path, help="study file (studies/*.toml); flags override it")
    for title in (None, *_GROUPS):
        group = p if title is None else p.add_argument_group(title)
        if title == _WORKERS:
            _worker_flags(group)
        else:
            _setting_flags(group, title)
    p.set_defaults(action=_optimize)


_WORKERS = "workers"
#: `optimize --help` groups in order; the settings' flags go to the group they declare.
_GROUPS = (
    config.MODEL_GROUP,
    config.INPUTS_GROUP,
    config.SCENARIO_GROUP,
    config.SEARCH_GROUP,
    _WORKERS,
    config.FILES_GROUP,
)


def _setting_flags(group: argparse._ActionsContainer, title: str | None) -> None:
    """Add the flag of each setting (tuner.config.StudyConfig and Space) that declares this
    help group (None: the command's own options)."""
    shared_added = False
    for name, declared in config.flag_settings().items():
        if declared.group != title or declared.flag is None:
            continue
        if declared.shared:  # the harness's input flags, shared with `harness run`, all at once
            if not shared_added:
                add_input_flags(group, defaults=False)  # type: ignore[arg-type]
                shared_added = True
        elif name == "storage":  # also on the commands that open a study
            _storage_flag(group)
        else:
            _declared_flag(group, name)


def _declared_flag(
    group: argparse._ActionsContainer, name: str, study_default: bool = False, **more: Any
) -> None:
    """The flag a setting declares (tuner.config) with its help; also on `worker` and
    `system`, where `study_default` says the default is the study's, not StudyConfig's."""
    declared = config.flag_settings()[name]
    assert declared.flag is not None
    help = config.flag_help(name)
    if study_default:
        help = re.sub(r" *\(default[^)]*\)", "", help) + " (default: the study's)"
    group.add_argument(
        declared.flag,
        dest=name,
        metavar=declared.metavar,
        action="append" if declared.repeat else "store",
        type=declared.type or str,
        help=help,
        **more,
    )


def _worker_flags(g: argparse._ActionsContainer) -> None:
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
    _isolate_flag(g)


def _isolate_flag(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--isolate-trials",
        action="store_true",
        help="measure every trial in a fresh child process (slower: each loads its model, "
        "checks agreement with fp32 and warms up again); by default one warm worker process "
        "measures consecutive trials, keeping a loaded model where the next configuration "
        "can use it, and is replaced after any failure",
    )


def _heartbeat_flag(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--heartbeat-s",
        type=int,
        default=HEARTBEAT_S,
        help=f"heartbeat of a running trial; one silent {GRACE_FACTOR}x as long belonged to a "
        f"killed worker and is failed, then retried once (default {HEARTBEAT_S})",
    )


def add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit",
        parents=[common_flags()],
        help="queue a study for the workers and return at once",
        description="Check a study as `optimize` does (the same flags or study file), store "
        "its model (with external weights) and --data in the artifact store, create the study "
        "and queue it; print its name and return. Workers started with `python -m tuner "
        "worker` (no --study) serve the queue, on any host that reaches the database and the "
        "store. Identical files are stored once.",
    )
    p.add_argument("--config", type=Path, help="study file (studies/*.toml); flags override it")
    _artifacts_flag(p)
    p.add_argument(
        "--for-device",
        metavar="NAME",
        help="the device the study is for, as `studies` names devices, e.g. 'NVIDIA T4' "
        "(default: this host's, as optimize; workers serve studies of their own device)",
    )
    for title in (None, *_GROUPS):
        if title == _WORKERS:
            continue
        group = p if title is None else p.add_argument_group(title)
        _setting_flags(group, title)
    p.set_defaults(action=_submit)


def _artifacts_flag(parser: argparse._ActionsContainer) -> None:
    from tuner.artifacts import ARTIFACTS_ENV

    parser.add_argument(
        "--artifacts",
        metavar="URL",
        help="artifact store for models, data and LoadGen logs: a folder (shared by every "
        f"worker) or s3://BUCKET with boto3 (default ${ARTIFACTS_ENV}, else a folder beside "
        "an SQLite database: <database>.artifacts)",
    )


def add_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        parents=[common_flags()],
        help="serve the queue, or join one study and run its trials",
        description="Without --study: serve the queue of submitted studies, the oldest this "
        "worker can run first (its runtimes installed, its device the study's), uploading "
        "every trial's LoadGen logs to the artifact store; whichever worker ends a study's "
        "last trial confirms it and writes its summary. With --study: join that study (made "
        "by `optimize` or `submit`) and run trials until its budget is spent. Start as many as "
        "you like, on any host that reaches the storage (PostgreSQL for several hosts; SQLite "
        "only for workers on one host).",
    )
    _storage_flag(p)
    p.add_argument("--study", help="run this study only (default: serve the queue; see `studies`)")
    p.add_argument(
        "--once",
        action="store_true",
        help="serving the queue: exit when nothing is left to run (default: wait for more, "
        f"polling every {MIN_WAIT_S:g} s backing off to {MAX_WAIT_S:g} s)",
    )
    _artifacts_flag(p)
    _declared_flag(p, "trial_timeout_s", study_default=True)
    _heartbeat_flag(p)
    _isolate_flag(p)
    p.add_argument("--worker-name", default="", help="prefix of this worker's progress lines")
    _declared_flag(p, "cache_dir")
    _declared_flag(p, "runs_dir")
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
    _declared_flag(p, "scenario", study_default=True, choices=SCENARIO_NAMES)
    _declared_flag(p, "latency_ms", study_default=True)
    _declared_flag(p, "duration_s", study_default=True)
    p.add_argument("--timeout", dest="timeout_s", type=float, help="give up after this many s")
    _declared_flag(p, "cache_dir")
    _declared_flag(p, "runs_dir")
    p.set_defaults(action=_system)


def add_export(sub: argparse._SubParsersAction) -> None:
    from tuner.export import FORMATS

    p = sub.add_parser(
        "export",
        parents=[common_flags()],
        help="write the best configuration for deployment",
        description="Write the best feasible trial of a study as json, a LoadGen user.conf, a "
        "Triton config.pbtxt (onnxruntime, openvino or tensorrt), a trtexec or OpenVINO "
        "benchmark_app command or NVIDIA MLPerf harness config.json keys.",
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
        "(throughput vs batch size, Server latency at the bound's percentile vs QPS, history, "
        "best vs baseline) to --out.",
    )
    _storage_flag(p)
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--out", type=Path, help="folder for the CSV and plots")
    p.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write the outcome as JSON: best, baseline, speed-up, trial counts, engine "
        "builds and measuring_share (the share of the wall time spent inside LoadGen runs)",
    )
    p.add_argument(
        "--logs",
        type=Path,
        metavar="DIR",
        help="fetch every trial's LoadGen logs (and failed trials' errors) from the artifact "
        "store into DIR/trial-NNNN/: a study served from the queue keeps them there, so this "
        "needs only the database and the store",
    )
    _artifacts_flag(p)
    p.set_defaults(action=_report)


def add_studies(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "studies",
        parents=[common_flags()],
        help="list the studies in a database",
        description="List the studies in a database: each one's state (queued, running with "
        "N workers and trials done of the budget, confirming, done, failed with the reason, "
        "cancelled; `stopped` for an `optimize` study left with budget to spend) and its best.",
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
    _artifacts_flag(p)
    p.set_defaults(action=_dashboard)


def add_cancel(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cancel",
        parents=[common_flags()],
        help="stop handing out a study's trials",
        description="Mark a study cancelled: no worker starts another of its trials (running "
        "ones finish and are kept), and the queue skips it.",
    )
    _storage_flag(p)
    p.add_argument("--study", required=True, help="study name (see `python -m tuner studies`)")
    p.set_defaults(action=_cancel)


COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "optimize": add_optimize,
    "submit": add_submit,
    "worker": add_worker,
    "cancel": add_cancel,
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

    from tuner.pipeline import Trials, optimize

    cfg = _study_config(args)
    # The progress lines of `optimize` say what Optuna's INFO log would, once; -q means quiet.
    optuna.logging.set_verbosity(optuna.logging.DEBUG if args.debug else optuna.logging.WARNING)
    check_int("--workers", args.workers, 1)
    say: Callable[[str], None] = (
        (lambda _: None) if args.quiet else (lambda line: log.info("%s", line))
    )
    trials = Trials(
        args.workers, args.gpus, args.heartbeat_s, args.quiet, args.device, args.isolate_trials
    )
    finished = optimize(cfg, say, trials)  # checks the --gpus flags first
    print(finished.summary)
    if finished.message is not None:
        print(f"tuner: {finished.message}", file=sys.stderr)
    return finished.code


def _study_config(args: argparse.Namespace) -> config.StudyConfig:
    """Defaults, then the study file, then the flags of the settings that declare one."""
    overrides: dict[str, Any] = {}
    for name, declared in config.flag_settings().items():
        value = getattr(args, name)
        if declared.repeat:  # repeatable NAME=... flags -> a table
            value = dict(value) if value else None
        overrides[name] = value
    overrides["storage"] = args.storage or os.environ.get(STORAGE_ENV)
    return config.build(args.config, **overrides)  # no --cache-dir: StudyConfig's default


def _submit(args: argparse.Namespace) -> int:
    import optuna

    from tuner.queue import submit

    optuna.logging.set_verbosity(optuna.logging.DEBUG if args.debug else optuna.logging.WARNING)
    cfg = _study_config(args)
    made = submit(cfg, args.artifacts, args.for_device)
    size = f"{made.stored_bytes / 2**20:.1f} MiB" if made.files else "no files"
    log.info(
        "queued: %s files stored (%s); serve it with `python -m tuner worker`", made.files, size
    )
    print(made.study)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from tuner.queue import cancel

    print(cancel(_storage(args), args.study))
    return 0


def _worker(args: argparse.Namespace) -> int:
    """`worker`: serve the queue; or run one submitted study (its files fetched from the
    store, its logs uploaded there, finished here if this worker ends its last trial); or
    join one study `optimize` made. Trials are measured in one warm worker process unless
    --isolate-trials."""
    import optuna

    from tuner.child import WarmWorker
    from tuner.queue import QUEUE, Local, run_queued, serve
    from tuner.study import join, load, work

    optuna.logging.set_verbosity(optuna.logging.DEBUG if args.debug else optuna.logging.WARNING)
    storage, owner = _storage(args), args.worker_name or "worker"
    queued = args.study is None or QUEUE in load(storage, args.study, args.heartbeat_s).user_attrs
    prefix = f"{args.worker_name}: " if args.worker_name else ""

    def say(line: str) -> None:
        if not args.quiet:
            log.info("%s%s", prefix, line)

    try:
        with contextlib.ExitStack() as stack:
            measure = None if args.isolate_trials else stack.enter_context(WarmWorker())
            cache_dir = args.cache_dir or default_cache_dir()
            if queued:
                local = Local(
                    cache_dir=cache_dir,
                    runs_dir=args.runs_dir,
                    trial_timeout_s=args.trial_timeout_s,
                    artifacts=args.artifacts,
                    heartbeat_s=args.heartbeat_s,
                    measure=measure,
                )
                if args.study is None:
                    ran = serve(storage, local, say, once=args.once, owner=owner)
                else:
                    ran = run_queued(storage, args.study, local, say, owner)
            else:
                prepared = join(
                    storage,
                    args.study,
                    args.heartbeat_s,
                    cache_dir=cache_dir,
                    runs_dir=args.runs_dir,
                    trial_timeout_s=args.trial_timeout_s,
                )
                ran = work(replace(prepared, measure=measure), say, owner=owner)
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
    from tuner.export import write_atomic
    from tuner.report import report_json, summary_lines, trials_table, write_report
    from tuner.study import load

    study = load(_storage(args), args.study)
    print(trials_table(study))
    for line in summary_lines(study):
        print(line)
    if args.out is not None:
        for path in write_report(study, args.out):
            print(f"wrote {path}")
    if args.json is not None:
        write_atomic(args.json, json.dumps(report_json(study), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.logs is not None:
        from tuner.artifacts import download_trial_logs, study_store

        store = study_store(study, args.artifacts)
        fetched = list(download_trial_logs(store, study, args.logs))
        print(f"wrote {len(fetched)} log file(s) under {args.logs}")
    return 0


def _studies(args: argparse.Namespace) -> int:
    import optuna
    from optuna.trial import TrialState

    from tuner.queue import state_of
    from tuner.results import (
        best_trial,
        rate_unit,
        robust_value,
        speed_up,
        speed_up_floor,
        study_setting,
    )
    from tuner.storage import open_storage

    storage = open_storage(_storage(args), create=False)
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        # The summary's best_trial ignores constraints and Pareto fronts; export does not.
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        best, ratio, floor = best_trial(study), speed_up(study), speed_up_floor(study)
        attrs = s.user_attrs
        scenario = study_setting(attrs, "scenario")
        pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
        if ratio is not None:
            ratio_text: str | None = f"{ratio:.2f}x"
        else:
            ratio_text = f">= {floor[0]:.2f}x" if floor is not None else None
        rows.append(
            [
                s.study_name,
                str(state_of(study)),
                attrs.get("model"),
                scenario,
                study_setting(attrs, "backend"),
                attrs.get("device"),
                s.n_trials,
                pruned,
                robust_value(best, attrs) if best is not None and best.values else None,
                rate_unit(scenario),
                ratio_text,
                _params_text(best.params) if best is not None else None,
            ]
        )
    if not rows:
        print("no studies")
        return 0
    header = ["study", "state", "model", "scenario", "backend", "device", "trials", "pruned"]
    header += ["best"]
    header += ["unit"]
    header += ["speed-up", "best config"]
    print(format_table(rows, header))
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from tuner.dashboard import serve

    serve(_storage(args), args.host, args.port, args.artifacts)
    return 0


def _params_text(params: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


if __name__ == "__main__":
    sys.exit(main())

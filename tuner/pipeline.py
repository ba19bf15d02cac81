"""`optimize` as one pipeline: prepare the study (one per GPU model with `--gpus`), run its trials
(in this process, in `--workers N` worker processes, or in one worker per GPU), confirm the best
configurations, summarise. Used by the CLI and the benchmarks; the one place a Ctrl-C ends it:
what was finished is summarised and the exit code is 130."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime

import optuna

from harness.config import RunConfig, ScenarioSpec
from harness.errors import ConfigError
from tuner.child import ChildOutcome, WarmWorker, measure_in_child
from tuner.config import StudyConfig
from tuner.confirm import confirm
from tuner.sessions import session_of, share_line, store
from tuner.storage import HEARTBEAT_S
from tuner.study import Measure, Prepared, prepare, runtime_label, study_name, work
from tuner.summary import render_summary
from tuner.workers import GpuGroup, check_gpu_backend, visible_devices

INTERRUPTED_TRIALS = (
    "interrupted; the running trial is stored as FAIL (interrupted); "
    "re-run the same command to continue"
)
INTERRUPTED_CONFIRMING = (
    "interrupted while confirming the best configurations; the runs measured so far "
    "are kept: re-run the same command to finish"
)


@dataclass(frozen=True)
class Trials:
    """How the trials run: in this process (`workers` 1), in `workers` local worker
    processes, or (`gpus`: all, or nvidia-smi indices) in one worker per GPU."""

    workers: int = 1
    gpus: str | None = None
    heartbeat_s: int = HEARTBEAT_S
    quiet: bool = False
    #: The `--device` flag as given (None: not given); with `--gpus` only cuda:0 makes sense.
    device: str | None = None
    #: A fresh child process for every measurement instead of a warm worker kept across them.
    isolate: bool = False

    def check(self, cfg: StudyConfig) -> None:
        """A ConfigError for `--gpus` with a CPU backend, with `--workers`, or with a
        `--device` (the flag) other than cuda:0."""
        if self.gpus is None:
            return
        check_gpu_backend(cfg.backend)
        if self.workers != 1:
            raise ConfigError("--workers: --gpus starts one worker per GPU; give one or the other")
        if self.device not in (None, "cuda", "cuda:0"):
            raise ConfigError(
                f"--device: each --gpus worker runs on cuda:0 of its own GPU, not {self.device!r}"
            )


@dataclass(frozen=True)
class Plan:
    """One study to run: prepared, and where its processes run (CUDA_VISIBLE_DEVICES for its
    GPUs' workers and its confirmation; None: this process's devices)."""

    prepared: Prepared
    visible: str | None = None
    gpus: tuple[GpuGroup, ...] = ()


@dataclass(frozen=True)
class Finished:
    """What `optimize` ends with: the exit code, the summary to print, and on Ctrl-C the line
    saying what happened."""

    code: int
    summary: str
    plans: tuple[Plan, ...]
    message: str | None = None

    @property
    def study(self) -> optuna.Study:
        """The (first) study."""
        return self.plans[0].prepared.study


def optimize(
    cfg: StudyConfig,
    say: Callable[[str], None],
    trials: Trials = Trials(),
    measure: Measure | None = None,
) -> Finished:
    """The whole pipeline: prepare, trials, confirm, summary. Trials and confirmation here are
    measured by one warm worker (tuner.child.WarmWorker) unless `trials.isolate` or `measure`
    says otherwise; each run appends its session (wall time, LoadGen time) to the study."""
    started, clock = datetime.now(), time.monotonic()
    if trials.gpus is not None:
        plans = _gpu_plans(cfg, trials, say)
    else:
        plans = (Plan(prepare(cfg, trials.heartbeat_s, measure)),)
    confirmed: list[ChildOutcome] = []

    def finish(code: int, message: str | None = None) -> Finished:
        lines = []
        for plan in plans:
            study = plan.prepared.study
            wall = time.monotonic() - clock
            processes = sum(len(g.gpus) for g in plan.gpus) or trials.workers
            session = session_of(study, started, wall, processes, confirmed)
            if session.trials or session.confirm_runs:  # a run that measured nothing: no record
                with contextlib.suppress(Exception):  # the summary matters more than the record
                    store(study, session)
            summary = render_summary(study, plan.prepared.cfg)
            lines.append(f"{summary}\n{share_line(session)}")
        return Finished(code, "\n\n".join(lines), plans, message)

    with contextlib.ExitStack() as stack:
        if measure is None and not trials.isolate and trials.gpus is None:
            worker = stack.enter_context(WarmWorker())
            plans = (Plan(replace(plans[0].prepared, measure=worker)),)
        try:
            code = _run_trials(cfg, plans, trials, say)
        except KeyboardInterrupt:
            return finish(130, INTERRUPTED_TRIALS)
        if code != 0:
            return finish(code)
        try:
            for plan in plans:
                with _visible(plan.visible), _confirming(plan, trials) as prepared:
                    confirm(metered(prepared, confirmed), say)
        except KeyboardInterrupt:
            return finish(130, INTERRUPTED_CONFIRMING)
    return finish(0)


@contextlib.contextmanager
def _confirming(plan: Plan, trials: Trials) -> Iterator[Prepared]:
    """The plan's study with what measures its confirmation runs: its own measure, else a warm
    worker started here (inside the plan's CUDA_VISIBLE_DEVICES), else a child per run."""
    prepared = plan.prepared
    if prepared.measure is not None or trials.isolate:
        yield prepared
        return
    with WarmWorker() as worker:
        yield replace(prepared, measure=worker)


def metered(prepared: Prepared, outcomes: list[ChildOutcome]) -> Prepared:
    """`prepared` whose measurements' outcomes are also appended to `outcomes`."""
    inner = prepared.measure or measure_in_child

    def measure(run: RunConfig, spec: ScenarioSpec, timeout_s: float) -> ChildOutcome:
        outcome = inner(run, spec, timeout_s)
        outcomes.append(outcome)
        return outcome

    return replace(prepared, measure=measure)


def _gpu_plans(cfg: StudyConfig, trials: Trials, say: Callable[[str], None]) -> tuple[Plan, ...]:
    """`--gpus`: one study per GPU model (CUDA_VISIBLE_DEVICES set to its GPUs, device cuda:0
    inside), each prepared in a child process (tuner.workers.prepare_elsewhere)."""
    from harness import gpus as nvml
    from harness.models import resolve_model
    from tuner.workers import (
        SIMULATED_GPU_BACKENDS,
        group_by_model,
        prepare_elsewhere,
        select_gpus,
    )

    trials.check(cfg)
    found = nvml.discover()
    groups = group_by_model(select_gpus(trials.gpus or "all", found.gpus, found.reason))
    if cfg.name and len(groups) > 1:
        models = ", ".join(g.model for g in groups)
        raise ConfigError(
            f"--study: one name for GPUs of {len(groups)} models ({models}); each model gets "
            "its own study: leave --study out or pick GPUs of one model"
        )
    model = resolve_model(cfg.model, cfg.cache_dir, cfg.dims, cfg.shapes)
    plans = []
    for group in groups:
        options = dict(cfg.backend_options)
        if cfg.backend in SIMULATED_GPU_BACKENDS:  # the simulation stands in for this model
            options["device_name"] = group.model
        name = cfg.name or study_name(model.name, cfg.scenario, runtime_label(cfg), group.model)
        group_cfg = replace(cfg, name=name, device="cuda:0", backend_options=options)
        with visible_devices(group.visible):  # the study's device is a GPU of this model
            prepared = prepare_elsewhere(group_cfg, trials.heartbeat_s)
        plans.append(Plan(prepared, group.visible, (replace(group, study=name),)))
        indices = ", ".join(str(g.index) for g in group.gpus)
        say(f"study {name}: {len(group.gpus)} x {group.model} (GPU {indices})")
    return tuple(plans)


def _run_trials(
    cfg: StudyConfig, plans: tuple[Plan, ...], trials: Trials, say: Callable[[str], None]
) -> int:
    """The trials of every plan: 0, 130 when interrupted, else the worst worker's exit code."""
    from tuner.workers import gpu_commands, run_processes, run_workers

    if trials.gpus is not None:
        groups = [g for plan in plans for g in plan.gpus]
        commands = gpu_commands(
            groups,
            cfg.storage,
            cfg.cache_dir,
            cfg.runs_dir,
            trials.heartbeat_s,
            trials.quiet,
            isolate=trials.isolate,
        )
        return run_processes(commands)
    (plan,) = plans
    if trials.workers > 1:
        name = plan.prepared.study.study_name
        return run_workers(
            trials.workers,
            cfg.storage,
            name,
            cfg.cache_dir,
            cfg.runs_dir,
            trials.heartbeat_s,
            trials.quiet,
            trials.isolate,
        )
    work(plan.prepared, say)
    return 0


@contextlib.contextmanager
def _visible(value: str | None) -> Iterator[None]:
    if value is None:
        yield
        return
    with visible_devices(value):
        yield

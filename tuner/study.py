"""The Optuna side of a study: create or resume it, enqueue the baseline and starting points,
run this process's share of its trials (each measured by the harness in a child process) and
store each result (tuner.results). The whole `optimize` pipeline is tuner.pipeline."""

from __future__ import annotations

import os
import random
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from harness.backends import BackendInfo, BackendOptions, get_backend
from harness.config import RunConfig, ScenarioSpec
from harness.errors import ConfigError, TunerError
from harness.models import TensorSpec, resolve_model
from tuner.child import INFEASIBLE, ChildOutcome, measure_in_child
from tuner.config import StudyConfig, from_stored, to_stored
from tuner.loop import OWNER, budget_used, committed, exclusive, recover, run_trials
from tuner.results import (
    TrialRecord,
    best_trial,
    is_copy,
    rate_unit,
    robust_value,
    study_setting,
)
from tuner.sampling import NoRepeatSampler, refusal, refusals
from tuner.space import Params, SearchSpace, resolve_space
from tuner.storage import HEARTBEAT_S, open_storage, redact

#: Study attributes that must match when a study is resumed.
_IDENTITY = (
    "model_sha256",
    "dims",
    "backend",
    "device",
    "scenario",
    "latency_ms",
    "percentile",
)


class TrialFailed(Exception):
    """A trial's measurement failed; its reason is already stored on the trial."""


def study_name(model: str, scenario: str, backend: str, device: str) -> str:
    """`resnet50-offline-onnxruntime+openvino-amd-epyc-2-cores`: one study per model,
    scenario, runtimes searched and device model."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    return f"{model}-{scenario}-{backend.replace(',', '+')}-{slug}"


def runtime_label(cfg: StudyConfig) -> str:
    """The study's runtimes as its `backend` setting reads: `onnxruntime`, or
    `onnxruntime,openvino` where it searches several (tuner.results.study_setting)."""
    return ",".join(cfg.runtimes)


def probe_device(cfg: StudyConfig, model_path: Path) -> BackendInfo:
    """Who would measure, before anything is loaded: each runtime's info (cheap); every
    runtime of one study must name the same device, which the study belongs to. An option
    no runtime of several takes is refused here (one runtime's constructor refuses its own)."""
    if len(cfg.runtimes) > 1:
        known = {o for name in cfg.runtimes for o in get_backend(name).option_names}
        unknown = sorted(set(cfg.backend_options) - known)
        if unknown:
            raise ConfigError(
                f"backend.options: unknown option(s) {unknown} for {', '.join(cfg.runtimes)} "
                f"(valid: {', '.join(sorted(known)) or 'none'})"
            )
    infos = [
        get_backend(name)(
            model_path, BackendOptions(device=cfg.device, extra=cfg.backend_options_for(name))
        ).info()
        for name in cfg.runtimes
    ]
    devices = {info.device for info in infos}
    if len(devices) > 1:
        raise ConfigError(
            f"space.backends: {', '.join(cfg.runtimes)} name different devices "
            f"({', '.join(sorted(devices))}); a study belongs to one device"
        )
    return infos[0]


#: How a trial is measured: (run, spec, timeout_s) -> outcome. None on a `Prepared` means
#: `measure_in_child` (the real harness in a child process); benchmarks that replay a
#: landscape pass their own (tuner.replay).
Measure = Callable[[RunConfig, ScenarioSpec, float], ChildOutcome]


@dataclass(frozen=True)
class Prepared:
    cfg: StudyConfig
    study: optuna.Study
    space: SearchSpace
    attrs: dict[str, Any]
    measure: Measure | None = None
    #: Called with each trial this process ran, before its state is told (a queue worker
    #: uploads its logs and records them on it).
    before_tell: Callable[[optuna.Study, optuna.Trial, TrialState], None] | None = None
    #: Asked before each new trial: True stops handing them out (a cancelled study).
    stop: Callable[[], bool] | None = None


def prepare(
    cfg: StudyConfig,
    heartbeat_s: int = HEARTBEAT_S,
    measure: Measure | None = None,
    device: str | None = None,
) -> Prepared:
    """Validate everything, then create or load the study and enqueue its starting points.

    The study belongs to this host's device, or to `device` where given (a study submitted to
    a queue for workers of another kind of machine)."""
    space = resolve_space(cfg)
    model = resolve_model(cfg.model, cfg.cache_dir, cfg.dims, cfg.shapes)
    info = probe_device(cfg, model.path)
    if device is not None:
        info = replace(info, device=device, simulated=False)
    name = cfg.name or study_name(model.name, cfg.scenario, runtime_label(cfg), info.device)
    attrs: dict[str, Any] = {
        "model": model.name,
        "model_path": str(model.path),
        "model_sha256": model.sha256,
        # Every symbolic dim bound, by name (--dim, or sized by --shape): part of the identity.
        "dims": dict(model.dims),
        "inputs": [_tensor(t) for t in model.inputs],
        "outputs": [_tensor(t) for t in model.outputs],
        "device": info.device,
        "simulated": info.simulated,
        "space": space.to_dict(),
        # The study's settings (backend, scenario, bound, objectives, budget ...) live in the
        # stored config only; tuner.results.study_setting reads them (older studies: their
        # attributes of those names).
        "config": to_stored(cfg),
    }
    settings: dict[str, Any] = {
        "backend": runtime_label(cfg),
        "scenario": cfg.scenario,
        "latency_ms": cfg.latency_ms if cfg.scenario == "server" else None,
        "percentile": cfg.percentile if cfg.scenario == "server" else None,
        "objectives": list(cfg.objectives),
    }
    storage = open_storage(cfg.storage, heartbeat_s=heartbeat_s)
    directions: list[StudyDirection] = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    directions = directions[: len(cfg.objectives)]
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(cfg, space),
        directions=directions,
        load_if_exists=True,
    )
    existing = study.user_attrs
    for key in _IDENTITY:
        old = study_setting(existing, key) if key in settings else existing.get(key)
        new = settings[key] if key in settings else attrs[key]
        if old is not None and old != new:
            raise ConfigError(
                f"study {name!r} was made with {_said(key, old)}, not "
                f"{_said(key, new)}; name another study with --study"
            )
    # Inputs' bound shapes (a --shape, or a study made before dims were recorded).
    if "inputs" in existing and _shapes(existing["inputs"]) != _shapes(attrs["inputs"]):
        raise ConfigError(
            f"study {name!r} was made with input shapes {_shapes(existing['inputs'])}, not "
            f"{_shapes(attrs['inputs'])}; name another study with --study"
        )
    objectives = study_setting(existing, "objectives")
    if objectives is not None and list(objectives) != settings["objectives"]:
        raise ConfigError(f"study {name!r} has objectives {list(objectives)}")
    for key, value in attrs.items():
        if existing.get(key) != value:
            study.set_user_attr(key, value)
    if cfg.multi_objective:
        metric_names = ["throughput", f"p{cfg.percentile:g} latency ms"]
    else:
        unit = "samples/s" if cfg.scenario == "offline" else "max VALID QPS"
        metric_names = [f"throughput ({unit})"]
    with warnings.catch_warnings():  # 'experimental' since Optuna 3.2; not the user's concern
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metric_names)
    points = opening_points(cfg, space)
    with exclusive(study):  # several `optimize` processes may start the same study at once
        for point in points:
            study.enqueue_trial(point, skip_if_exists=True)
        if cfg.sampler == "grid":
            _enqueue_grid(study, space, cfg)
    return Prepared(cfg, study, space, attrs, measure)


def opening_points(cfg: StudyConfig, space: SearchSpace) -> list[dict[str, Any]]:
    """The points a study enqueues before its sampler proposes any (none twice), as many as
    the budget takes. Usually the baseline, the user's points (`[[enqueue]]`), then where the
    study searches several runtimes one screening point per runtime and precision. A Server
    study that prunes opens with the user's points and `SearchSpace.server_openers` instead,
    its baseline after them: pruning bites once a high best is in, and the baseline (batch 1,
    fp32) is then often pruned on its Offline throughput too. A grid has its own order."""
    user = [space.complete(p) for p in cfg.enqueue]
    if cfg.sampler == "grid":
        return [space.baseline(), *user]
    if cfg.scenario == "server" and cfg.prune and not cfg.multi_objective:
        openers = [p for p in space.server_openers() if p not in user]
        points = [*user, *openers, space.baseline()]
    else:
        points = [space.baseline(), *user, *space.screening()]
    unique = [p for i, p in enumerate(points) if p not in points[:i]]
    baseline = unique.index(space.baseline())
    # The baseline stays whatever the budget: it is what the speed-up divides by.
    kept = unique[: max(cfg.trials, 1)]
    return kept if baseline < len(kept) else [*kept[: cfg.trials - 1], space.baseline()]


def _said(key: str, value: Any) -> str:
    """`dims sequence=128` for bound dims, `key=value` for the rest."""
    if key == "dims" and isinstance(value, Mapping):
        return "dims " + (", ".join(f"{k}={v}" for k, v in value.items()) or "none")
    return f"{key}={value!r}"


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    """A tensor as the study stores it (exports read it): its sample shape and batch axis."""
    return {
        "name": spec.name,
        "dtype": spec.dtype,
        "sample_shape": list(spec.sample_shape),
        "batch_axis": spec.batch_axis,
    }


def _shapes(inputs: Any) -> dict[str, list[int]]:
    return {t["name"]: list(t["sample_shape"]) for t in inputs or []}


def _enqueue_grid(study: optuna.Study, space: SearchSpace, cfg: StudyConfig) -> None:
    """Grid search as enqueued trials: the points in a seeded order, as many as the budget
    leaves, each exactly once however many workers share the study."""
    seen = [
        t.params or t.system_attrs.get("fixed_params") for t in study.get_trials(deepcopy=False)
    ]
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    pending = cfg.trials - committed(study) - waiting
    for point in grid_order(space, cfg.seed, first=seen):
        if pending <= 0:
            break
        if point not in seen:
            study.enqueue_trial(point, skip_if_exists=True)
            pending -= 1


def grid_order(
    space: SearchSpace, seed: int, first: Sequence[Mapping[str, Any] | None] = ()
) -> list[dict[str, Any]]:
    """Every grid point in a seeded order, points sharing an engine (runtime, precision and
    batch size) next to each other, as NVIDIA's autotuner does: streams and deque timeouts vary
    within a group. Groups holding a point of `first` (already in the study, like the baseline)
    lead."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    points = space.points()
    for point in random.Random(seed).sample(points, k=len(points)):
        groups.setdefault(_engine_key(point), []).append(point)
    started = {_engine_key(p) for p in first if p}
    ordered = sorted(groups.items(), key=lambda item: item[0] not in started)
    return [point for _, points in ordered for point in points]


def _engine_key(point: Mapping[str, Any]) -> tuple[str, str, int]:
    return str(point.get("backend")), str(point.get("precision")), int(point.get("batch_size", 0))


def make_sampler(cfg: StudyConfig, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """TPE or random sampling, never proposing a configuration the study already holds, TPE's
    last `climb` trials climbing from the best so far (tuner.sampling); grid points are
    enqueued trials (see prepare)."""
    inner: optuna.samplers.BaseSampler
    climb_from = None
    if cfg.sampler in ("grid", "random"):
        inner = optuna.samplers.RandomSampler(seed=cfg.seed)
    else:
        startup = max(3, min(10, cfg.trials // 3))
        inner = optuna.samplers.TPESampler(
            seed=cfg.seed, n_startup_trials=startup, multivariate=True
        )
        # At most a quarter of the budget: a short study climbing from its first trials would
        # only walk the baseline's neighbourhood.
        climb = min(cfg.climb, cfg.trials // 4)
        climb_from = cfg.trials - climb if climb else None
    return NoRepeatSampler(inner, space, seed=cfg.seed, climb_from=climb_from)


def work(prepared: Prepared, say: Callable[[str], None], owner: str = "optimize") -> int:
    """This process's share of the study (`owner` names it on its trials): trials until the
    budget is spent, and none RUNNING elsewhere (a trial whose worker died is failed and its
    configuration retried here)."""
    cfg, study = prepared.cfg, prepared.study
    with exclusive(study):
        for line in recover(study):
            say(line)
    trials = study.get_trials(deepcopy=False)
    used = budget_used(study)
    elsewhere = sum(t.state == TrialState.RUNNING for t in trials)
    now = f", {elsewhere} running elsewhere" if elsewhere else ""
    say(
        f"study {study.study_name} in {redact(cfg.storage)}: {used} of {cfg.trials} trials "
        f"done{now}, {max(0, cfg.trials - used - elsewhere)} to go "
        f"(space of {prepared.space.size} configurations)"
    )
    progress = _Progress(cfg, prepared, say, time.monotonic())
    return run_trials(
        study,
        _Objective(prepared, say),
        budget=cfg.trials,
        timeout_s=cfg.timeout_s,
        on_done=progress,
        failed=(TrialFailed,),
        owner=owner,
        say=say,
        stop=prepared.stop,
        before_tell=prepared.before_tell,
    )


class _Objective:
    """Measure one trial's configuration and store everything measured on the trial."""

    def __init__(self, prepared: Prepared, say: Callable[[str], None]) -> None:
        self.prepared = prepared
        self.say = say

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        cfg, space = self.prepared.cfg, self.prepared.space
        params = space.suggest(trial)
        label = params.label(deque="deque_timeout_us" in trial.params)
        self.say(f"trial {trial.number}: {label} ...")
        study = self.prepared.study
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        duplicate = _measured_before(trial, done)
        if duplicate is not None:
            return _reuse(trial, duplicate)
        ruled_out = refusal(space, trial.params, refusals(space, done))
        if ruled_out is not None:  # e.g. an enqueued screening trial of a runtime that failed
            return record_ruled_out(trial, ruled_out, cfg)
        run, spec = trial_configs(cfg, params, study.study_name, trial.number)
        spec = replace(spec, prune_below=prune_below(study, cfg))
        measure = self.prepared.measure or measure_in_child
        outcome = measure(run, spec, cfg.trial_timeout_s)
        if outcome.failure == INFEASIBLE:
            return record_infeasible(trial, outcome, cfg)
        if outcome.result is None:
            seconds = round(outcome.seconds, 2)
            failed = TrialRecord(seconds, failure=outcome.failure, fail_reason=outcome.reason)
            failed.store(trial)
            if outcome.failure == "interrupted":
                raise KeyboardInterrupt
            raise TrialFailed(outcome.reason)
        if outcome.result.get("pruned"):
            record_pruned(trial, outcome)
        return record(trial, outcome, cfg)


def prune_below(study: optuna.Study, cfg: StudyConfig) -> float | None:
    """The score a trial must be able to reach not to be pruned: the study's best so far (every
    worker's, read from the study now), by its confirmed median where it has one; None where
    pruning is off, the study has several objectives (Optuna prunes single-objective trials
    only) or nothing feasible is measured yet."""
    if not cfg.prune or cfg.multi_objective:
        return None
    best = best_trial(study)
    if best is None:
        return None
    value = robust_value(best, study.user_attrs)
    return value if value > 0 else None


def record_pruned(trial: optuna.Trial, outcome: ChildOutcome) -> NoReturn:
    """Store a pruned measurement (what it measured up to its bound, and why it stopped) and
    end the trial as Optuna's PRUNED, the bound as its one intermediate value."""
    result = outcome.result
    assert result is not None and result.get("pruned")
    TrialRecord.from_result(result, outcome.seconds).store(trial)
    trial.report(float(result["pruned"]["value"]), step=0)
    raise optuna.TrialPruned(result["note"])


def trial_configs(
    cfg: StudyConfig, params: Params, name: str, number: int
) -> tuple[RunConfig, ScenarioSpec]:
    """The harness inputs for one trial."""
    runtime = params.backend or cfg.backend
    run = RunConfig(
        model=cfg.model,
        backend=runtime,
        precision=params.precision,
        batch_size=params.batch_size,
        streams=params.streams,
        device=cfg.device,
        threads=cfg.threads,
        deque_timeout_us=params.deque_timeout_us,
        samples=cfg.samples,
        data_dir=cfg.data_dir,
        seed=cfg.seed,
        cache_dir=cfg.cache_dir,
        backend_options=cfg.backend_options_for(runtime),
        dims=dict(cfg.dims),
        shapes=dict(cfg.shapes),
        input_ranges=dict(cfg.input_ranges),
        accuracy_metric=cfg.accuracy_metric,
        accuracy_output=cfg.accuracy_output,
        accuracy_floor=cfg.accuracy_floor,
    )
    spec = ScenarioSpec(
        scenario=cfg.scenario,
        duration_s=cfg.duration_s,
        find_max_qps=cfg.scenario == "server",
        latency_ms=cfg.latency_ms,
        percentile=cfg.percentile,
        min_queries=cfg.min_queries,
        answer_runs=cfg.answer_runs,
        qps_tolerance=cfg.qps_tolerance,
        out_dir=cfg.runs_dir / name / f"trial-{number:04d}",
    )
    return run, spec


def record_infeasible(trial: optuna.Trial, outcome: ChildOutcome, cfg: StudyConfig) -> Any:
    """A configuration the model cannot take (its precision's file cannot be made, or its
    runtime cannot read the file): a COMPLETE trial scoring 0 that breaks the `precision`
    constraint and says why, so the samplers learn from it and the study goes on."""
    record = TrialRecord.infeasible(outcome.reason, outcome.seconds, on=outcome.infeasible_on)
    return _infeasible(trial, record, cfg)


def record_ruled_out(trial: optuna.Trial, earlier: FrozenTrial, cfg: StudyConfig) -> Any:
    """A configuration that an earlier trial's finding rules out too (tuner.sampling.refusals:
    the same file on the same runtime, a file that cannot be made, or the same precision under
    the accuracy floor on the same runtime): infeasible as that trial, not run."""
    found = TrialRecord.from_trial(earlier)
    reason, on = found.fail_reason or "", found.infeasible_on
    if found.failure != INFEASIBLE:  # under the floor: that precision on that runtime
        value = found.agreement
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        reason = f"under the accuracy floor ({found.metric} {shown} < {cfg.accuracy_floor:g})"
        on = earlier.params.get("backend") or cfg.backend
    record = TrialRecord.infeasible(reason, 0.0, on=on, as_trial=earlier.number)
    return _infeasible(trial, record, cfg)


def _infeasible(trial: optuna.Trial, record: TrialRecord, cfg: StudyConfig) -> Any:
    record.store(trial)
    trial.set_constraint("precision", 1.0)
    trial.set_constraint("accuracy", 0.0)
    trial.set_constraint("valid", 1.0)
    if cfg.multi_objective:
        return 0.0, float(cfg.latency_ms * 10)
    return 0.0


def record(trial: optuna.Trial, outcome: ChildOutcome, cfg: StudyConfig) -> Any:
    """Store a measurement on the trial; return the objective value(s)."""
    result = outcome.result
    assert result is not None
    measured = TrialRecord.from_result(result, outcome.seconds)
    measured.store(trial)
    value = measured.agreement
    accurate = value is None or value != value or value >= cfg.accuracy_floor  # NaN: unscored
    shortfall = 0.0 if accurate else cfg.accuracy_floor - float(value)  # type: ignore[arg-type]
    trial.set_constraint("accuracy", shortfall)
    trial.set_constraint("valid", 0.0 if result["valid"] else 1.0)
    score = float(result["score"]) if result["valid"] else 0.0
    if cfg.multi_objective:
        latency = measured.latency_ms or {}
        p = latency.get(f"p{cfg.percentile:g}") or latency.get("p99")
        return score, float(p) if p is not None else float(cfg.latency_ms * 10)
    return score


def _measured_before(trial: optuna.Trial, done: list[FrozenTrial]) -> FrozenTrial | None:
    """An earlier COMPLETE trial (of `done`, the study's) with the same parameters, if any."""
    for other in done:
        if other.params == trial.params and not is_copy(other):
            return other
    return None


def _reuse(trial: optuna.Trial, earlier: FrozenTrial) -> Any:
    """Copy an identical configuration's measurement instead of measuring it again."""
    # The copy keeps its own owner: the earlier trial's may be a process long gone.
    TrialRecord.from_trial(earlier).copy_of(earlier.number, private=(OWNER,)).store(trial)
    for key, value in earlier.constraints.items():
        trial.set_constraint(key, float(value))
    values = earlier.values
    return tuple(values) if len(values) > 1 else values[0]


def time_left(cfg: StudyConfig, done: int, done_here: int, elapsed: float) -> float:
    """Seconds until the study ends, at this process's pace so far (`done_here` trials in
    `elapsed` s): the trials left of the budget (`done` spent), then the confirmation runs that
    follow a spent budget (tuner.confirm: the top `confirm_top` and the baseline, each
    `confirm_runs` more times; fewer where the baseline is a candidate), each taken to cost a
    trial's time. With `--timeout`, no more than it leaves (a study it stops is not confirmed)."""
    runs = 0 if cfg.multi_objective else (cfg.confirm_top + 1) * cfg.confirm_runs
    left = (max(0, cfg.trials - done) + runs) * elapsed / max(1, done_here)
    if cfg.timeout_s is not None:
        left = min(left, max(0.0, cfg.timeout_s - elapsed))
    return left


class _Progress:
    """Prints one line per finished trial: n of N, its score, the best so far, time left."""

    def __init__(
        self, cfg: StudyConfig, prepared: Prepared, say: Callable[[str], None], started: float
    ) -> None:
        self.cfg = cfg
        self.prepared = prepared
        self.say = say
        self.started = started
        self.done_here = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.done_here += 1
        done = budget_used(study)
        elapsed = time.monotonic() - self.started
        left = time_left(self.cfg, done, self.done_here, elapsed)
        unit = rate_unit(self.cfg.scenario)
        record = TrialRecord.from_trial(trial)
        if record.failure == INFEASIBLE:
            what = f"infeasible: {record.fail_reason or ''}"
            if record.infeasible_as is not None:
                what += f" (as trial {record.infeasible_as}; not run)"
        elif trial.state == TrialState.PRUNED:
            what = record.note or "pruned"
        elif trial.state == TrialState.COMPLETE:
            what = f"{trial.values[0]:,.1f} {unit}"
            if record.duplicate_of is not None:
                what += f" (same as trial {record.duplicate_of})"
            elif record.valid is not None and not record.valid:
                what += " INVALID"
            value = record.agreement_value
            if isinstance(value, float) and value < self.cfg.accuracy_floor:
                what += (
                    f" UNDER THE ACCURACY FLOOR ({record.agreement_metric} {value:.4f} < "
                    f"{self.cfg.accuracy_floor:g}: never the best)"
                )
        else:
            reason = record.fail_reason
            what = f"FAILED: {reason if reason is not None else trial.state.name}"
            retried = any(
                trial.number in t.system_attrs.get("retry_history", ())
                for t in study.get_trials(deepcopy=False)
            )
            if retried:
                what += " (its configuration runs again)"
        best = best_trial(study)
        best_text = (
            f"best {robust_value(best, study.user_attrs):,.1f} (trial {best.number})"
            if best is not None
            else "no best yet"
        )
        self.say(
            f"[{done}/{self.cfg.trials}] trial {trial.number}: {what} | {best_text} | "
            f"elapsed {_clock(elapsed)}, ~{_clock(left)} left"
        )


def join(storage: str, name: str, heartbeat_s: int = HEARTBEAT_S, **local: Any) -> Prepared:
    """An existing study, ready for this process to run its trials (as a worker).

    `local` overrides this host's settings (cache_dir, runs_dir, trial_timeout_s)."""
    study = load(storage, name, heartbeat_s)
    stored = study.user_attrs.get("config")
    if not isinstance(stored, dict):
        raise TunerError(f"study {name!r} was not made by `python -m tuner optimize`")
    cfg = from_stored(stored, storage=storage, name=name, **local)
    space = resolve_space(cfg)
    model = resolve_model(cfg.model, cfg.cache_dir, cfg.dims, cfg.shapes)
    device = probe_device(cfg, model.path).device
    if model.sha256 != study.user_attrs.get("model_sha256"):
        raise ConfigError(
            f"study {name!r}: this host's {cfg.model} differs from the study's model"
        )
    if device != study.user_attrs.get("device"):
        raise ConfigError(
            f"study {name!r} belongs to {study.user_attrs.get('device')!r}; this worker's "
            f"device is {device!r}"
        )
    # Workers seeded alike would all draw the same first configurations; each gets its own.
    worker_cfg = replace(cfg, seed=(cfg.seed * 1_000_003 + os.getpid()) % 2**31)
    study.sampler = make_sampler(worker_cfg, space)
    return Prepared(cfg, study, space, dict(study.user_attrs))


def load(storage: str, name: str, heartbeat_s: int = HEARTBEAT_S) -> optuna.Study:
    """An existing study, or a TunerError listing the studies that do exist."""
    store = open_storage(storage, create=False, heartbeat_s=heartbeat_s)
    try:
        return optuna.load_study(study_name=name, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        listing = ", ".join(names) if names else "none"
        raise TunerError(
            f"study {name!r} not found in {redact(storage)} (studies: {listing})"
        ) from None


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"

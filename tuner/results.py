"""A trial's record and the queries on it: `TrialRecord` alone writes and reads what a trial
measured (its Optuna user attributes; tuner.study sets the constraints); `best_trial`,
`robust_value` and the rest answer from it. The bottom of `tuner/`: report, summary, export,
system and confirm read through it, and it imports nothing of the tuner above `tuner.child`.
`study_setting` reads a study's settings (scenario, backend, latency bound ...) from its stored
config, so the attributes that repeat them beside it are only a fallback for studies made
without one.

The attribute names are the stored schema: studies made by earlier versions read unchanged.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.errors import TunerError
from tuner.child import INFEASIBLE

#: Study attribute prefix of a confirmed candidate's scores (tuner.confirm): `confirm:<trial
#: number>` holds its own value then each repeat's score (0 for a failed or INVALID repeat).
#: Its confirmed score is their median once it has 1 + `confirm_runs` of them (derived, never
#: stored).
CONFIRM_PREFIX = "confirm:"
#: Trial attributes of the same, as studies made by earlier versions stored them (read only).
CONFIRM_SCORES = "confirm_scores"
CONFIRMED_SCORE = "confirmed_score"
#: Study attribute: the number of the trial with the best confirmed median.
CONFIRMED_BEST = "confirmed_best"

#: Attributes a measurement stores even when the harness did not give them (None).
_MEASURED = frozenset(
    (
        "score",
        "valid",
        "samples_per_second",
        "qps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "latency_ms",
        "loadgen_runs",
        "engine_build_s",
        "warmup_batch_ms",
        "device",
        "backend",
        "versions",
        "simulated",
        "variant_sha256",
        "variant_path",
        "variant_build_s",
        "engine_cached",
        "note",
        "log_dir",
    )
)
#: Attributes a measurement with an accuracy check stores (None included).
_AGREEMENT = frozenset(
    (
        "agreement_top1",
        "agreement_metric",
        "agreement_value",
        "agreement_output",
        "agreement_max_abs_error",
        "agreement_samples",
        "agreement_accuracy",
        "agreement_reference_accuracy",
    )
)


@dataclass(frozen=True)
class TrialRecord:
    """Everything a trial stored: what it measured (`from_result`), why it failed or was
    infeasible, which earlier trial it copies, its confirmation runs. `extra` keeps the
    attributes this type does not model (such as the worker that owns the trial) as read."""

    trial_seconds: float | None = None
    failure: str | None = None
    fail_reason: str | None = None
    #: An infeasible configuration's runtime where it is infeasible there alone (the runtime
    #: cannot read the file, or left the precision under the accuracy floor); None where it is
    #: on every runtime (the file cannot be made; tuner.child.ChildOutcome.infeasible_on).
    infeasible_on: str | None = None
    #: The earlier infeasible trial whose cause holds for this configuration too, where this
    #: one was not run (tuner.sampling.refusal).
    infeasible_as: int | None = None
    score: float | None = None
    valid: bool | None = None
    samples_per_second: float | None = None
    qps: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    latency_ms: dict[str, Any] | None = None
    loadgen_runs: list[dict[str, Any]] | None = None
    engine_build_s: float | None = None
    warmup_batch_ms: float | None = None
    device: str | None = None
    backend: str | None = None
    versions: dict[str, Any] | None = None
    #: What the runtime chose or was told (OpenVINO's streams, threads, batch shape ...).
    backend_details: dict[str, Any] | None = None
    simulated: bool | None = None
    variant_sha256: str | None = None
    variant_path: str | None = None
    variant_build_s: float | None = None
    engine_cached: bool | None = None
    note: str | None = None
    log_dir: str | None = None
    agreement_top1: float | None = None
    agreement_metric: str | None = None
    agreement_value: float | None = None
    agreement_output: str | None = None
    agreement_max_abs_error: float | None = None
    agreement_samples: int | None = None
    #: Top-1 accuracy on the data's labels of this precision and of fp32 (None: no labels).
    agreement_accuracy: float | None = None
    agreement_reference_accuracy: float | None = None
    inputs: Any = None
    gpu: Any = None
    duplicate_of: int | None = None
    #: Why the trial stopped at a bound (harness.scenarios.prune.Pruned.to_dict()): a PRUNED
    #: trial's bound, margin and the best it could not reach.
    pruned: dict[str, Any] | None = None
    confirm_scores: list[float] | None = None
    confirmed_score: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ writing

    @classmethod
    def from_result(cls, result: Mapping[str, Any], seconds: float | None = None) -> TrialRecord:
        """The record of one harness measurement (`harness.measure`'s result as a dict)."""
        latency = result.get("latency_ms") or {}
        agreement = result.get("agreement") or {}
        runs = result["loadgen_runs"]
        agreed: dict[str, Any] = {}
        if agreement:
            agreed = dict(
                agreement_top1=agreement.get("top1"),
                agreement_metric=agreement.get("metric", "top1"),
                agreement_value=agreement.get("value", agreement.get("top1")),
                agreement_output=agreement.get("output", ""),
                agreement_max_abs_error=agreement.get("max_abs_error"),
                agreement_samples=agreement.get("samples"),
                agreement_accuracy=_number(agreement.get("accuracy")),
                agreement_reference_accuracy=_number(agreement.get("reference_accuracy")),
            )
        return cls(
            trial_seconds=None if seconds is None else round(seconds, 2),
            score=result["score"],
            valid=result["valid"],
            samples_per_second=result["samples_per_second"],
            qps=result["qps"],
            p50_ms=latency.get("p50"),
            p90_ms=latency.get("p90"),
            p99_ms=latency.get("p99"),
            latency_ms=latency,
            loadgen_runs=[compact_run(r) for r in runs],
            engine_build_s=result["engine_build_s"],
            warmup_batch_ms=result["warmup"]["batch_ms"],
            device=result["device"],
            backend=result["backend"],
            versions=result["versions"],
            backend_details=result.get("backend_details") or None,
            simulated=result["simulated"],
            variant_sha256=result["variant_sha256"],
            variant_path=result["variant_path"],
            variant_build_s=result["variant_build_s"],
            engine_cached=result["engine_cached"],
            note=result["note"],
            log_dir=str(Path(runs[-1]["log_dir"]).parent) if runs else "",
            inputs=result.get("inputs") or None,  # bound dims, shapes and the inputs' ranges
            gpu=result.get("gpu"),  # GPU telemetry (harness.gpus); absent on CPU
            pruned=result.get("pruned") or None,
            **agreed,
        )

    @classmethod
    def infeasible(
        cls,
        reason: str,
        seconds: float | None = None,
        on: str | None = None,
        as_trial: int | None = None,
    ) -> TrialRecord:
        """A configuration the model cannot take: its precision's file cannot be made, or
        its runtime (`on`) cannot read the file (or, known from an earlier trial `as_trial`,
        left the precision under the accuracy floor)."""
        return cls(
            trial_seconds=None if seconds is None else round(seconds, 2),
            failure=INFEASIBLE,
            fail_reason=reason,
            infeasible_on=on,
            infeasible_as=as_trial,
            score=0.0,
            valid=False,
        )

    @property
    def measured(self) -> bool:
        """A measurement by the harness (not a failure, not an infeasible configuration)."""
        return self.failure is None and self.score is not None

    @property
    def has_agreement(self) -> bool:
        return any(getattr(self, name) is not None for name in _AGREEMENT)

    def to_attrs(self) -> dict[str, Any]:
        """The user attributes to store, by their stored names."""
        attrs: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            always = (f.name in _MEASURED and self.measured) or (
                f.name in _AGREEMENT and self.measured and self.has_agreement
            )
            if value is not None or always:
                attrs[f.name] = value
        attrs.update(self.extra)
        return attrs

    def store(self, trial: optuna.Trial) -> None:
        """Write the record on a running trial."""
        for key, value in self.to_attrs().items():
            trial.set_user_attr(key, value)

    def copy_of(self, number: int, private: tuple[str, ...] = ()) -> TrialRecord:
        """This record as a copy made by a later trial of the same configuration: without the
        confirmation runs (they belong to trial `number`) or the `private` attributes."""
        extra = {k: v for k, v in self.extra.items() if k not in private}
        return replace(
            self, confirm_scores=None, confirmed_score=None, duplicate_of=number, extra=extra
        )

    # ------------------------------------------------------------------ reading

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRecord:
        """The record a trial stored (any version of the schema)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        attrs = trial.user_attrs
        values = {k: v for k, v in attrs.items() if k in known}
        extra = {k: v for k, v in attrs.items() if k not in known}
        return cls(**values, extra=extra)

    @property
    def agreement(self) -> float | None:
        """Agreement with fp32 by the study's metric (older trials: top-1)."""
        return self.agreement_value if self.agreement_value is not None else self.agreement_top1

    @property
    def metric(self) -> str:
        return self.agreement_metric or "top1"

    @property
    def confirmed(self) -> float | None:
        """The median of the confirmation runs as an earlier version stored it on the trial
        (see `confirmed_value` for a study's confirmed score)."""
        value = self.confirmed_score
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return None


def compact_run(run: Mapping[str, Any]) -> dict[str, Any]:
    """One LoadGen run as a trial stores it."""
    lat = run.get("latency_ms") or {}
    # LoadGen's own percentile (a fraction, Server runs only): its latency is what the run was
    # judged on, the lowest one a study measured is what its summary names (tuner.summary).
    fraction = run.get("target_percentile")
    return {
        "scenario": run.get("scenario"),
        "target_qps": run.get("target_qps"),
        "valid": run.get("valid"),
        "samples_per_second": run.get("samples_per_second"),
        "scheduled_qps": run.get("scheduled_qps"),
        "completed_qps": run.get("completed_qps"),
        "p99_ms": lat.get("p99"),
        "percentile_ms": lat.get(f"p{round(fraction * 100, 4):g}") if fraction else None,
        "invalid_reasons": run.get("invalid_reasons"),
        "log_dir": run.get("log_dir"),
        # The span LoadGen measured (s): what a study's measuring share sums (tuner.sessions).
        "duration_s": run.get("duration_s"),
    }


# ---------------------------------------------------------------------------- the study

#: Study settings a reader takes from the study's stored `config` (its field in brackets when
#: the name differs); a study made without one (or a hand-built one) has them as attributes.
_SETTINGS = {
    "backend": "backend",
    "scenario": "scenario",
    "latency_ms": "latency_ms",
    "percentile": "percentile",
    "objectives": "objectives",
    "accuracy_floor": "accuracy_floor",
    "duration_s": "duration_s",
    "trials_budget": "trials",
}
#: Settings only a Server study has (None in an Offline one).
_SERVER_ONLY = ("latency_ms", "percentile")


def study_setting(attrs: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """A study setting (`scenario`, `backend`, `latency_ms` ...) from the study's attributes
    `attrs`: the stored config's value, else the attribute of that name."""
    config = attrs.get("config")
    field_name = _SETTINGS.get(key)
    if field_name is not None and isinstance(config, Mapping) and field_name in config:
        if key in _SERVER_ONLY and config.get("scenario") != "server":
            return None
        if key == "backend":  # a study of several runtimes: all of them, the baseline's first
            several = (config.get("space") or {}).get("backends")
            return ",".join(several) if several else config[field_name]
        return config[field_name]
    return attrs.get(key, default)


def study_settings(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The study's attributes with every setting read as `study_setting` reads it."""
    settings = {key: study_setting(attrs, key) for key in _SETTINGS}
    return {**attrs, **{k: v for k, v in settings.items() if k in attrs or v is not None}}


# ---------------------------------------------------------------------------- queries


def is_feasible(trial: FrozenTrial) -> bool:
    """COMPLETE with every constraint <= 0."""
    return trial.state == TrialState.COMPLETE and all(v <= 0.0 for v in trial.constraints.values())


def ranked(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The distinct feasible configurations of `trials` by (single-run) value, best first, one
    trial each: the best-valued measured trial of a configuration (never a copy of an earlier
    one), the earlier trial first on a tie."""
    measured = [t for t in trials if is_feasible(t) and not is_copy(t)]
    measured.sort(key=lambda t: (-t.values[0], t.number))
    chosen: dict[str, FrozenTrial] = {}
    for trial in measured:
        chosen.setdefault(json.dumps(trial.params, sort_keys=True), trial)
    return list(chosen.values())


def is_copy(trial: FrozenTrial) -> bool:
    """A copy of an earlier trial's measurement (same configuration, not measured again)."""
    return TrialRecord.from_trial(trial).duplicate_of is not None


def confirm_key(number: int) -> str:
    """The study attribute holding trial `number`'s confirmation scores."""
    return f"{CONFIRM_PREFIX}{number}"


def confirm_scores(trial: FrozenTrial, attrs: Mapping[str, Any]) -> list[float]:
    """The trial's confirmation scores so far (empty when it was not confirmed), from the
    study's attributes `attrs` (older studies: the trial's own `confirm_scores`)."""
    stored = attrs.get(confirm_key(trial.number))
    if stored is None:
        stored = TrialRecord.from_trial(trial).confirm_scores
    return [float(s) for s in stored or []]


def confirmed_value(trial: FrozenTrial, attrs: Mapping[str, Any]) -> float | None:
    """The trial's confirmed score: the median of its confirmation scores once it has
    1 + `confirm_runs` (the study's config) of them, else None. Older studies: the median the
    trial stored."""
    stored = attrs.get(confirm_key(trial.number))
    if stored is None:
        return TrialRecord.from_trial(trial).confirmed
    config = attrs.get("config")
    runs = config.get("confirm_runs") if isinstance(config, Mapping) else None
    scores = [float(s) for s in stored]
    if not scores or (isinstance(runs, int) and len(scores) < 1 + runs):
        return None
    return float(statistics.median(scores))


def robust_value(trial: FrozenTrial, attrs: Mapping[str, Any]) -> float:
    """The trial's throughput to report and export: the median of its confirmation runs where
    it was confirmed, else its single measured value. `attrs`: the study's user attributes
    (read once by the caller, not per trial)."""
    confirmed = confirmed_value(trial, attrs)
    return confirmed if confirmed is not None else float(trial.values[0])


def measured_throughput(trial: FrozenTrial) -> float:
    """What the trial measured (even when INVALID), else its objective value."""
    score = TrialRecord.from_trial(trial).score
    return float(score if score is not None else trial.values[0])


def rate_unit(scenario: object) -> str:
    """What a study's scores count: `QPS` (Server), `samples/s` (Offline)."""
    return "QPS" if scenario == "server" else "samples/s"


def rate(trial: FrozenTrial, scenario: object, attrs: Mapping[str, Any]) -> float:
    """Measured samples/s (Offline) or largest VALID QPS (Server) of the trial, as deployed:
    the median of its confirmation runs where it was confirmed; a TunerError when it has no
    positive rate."""
    record = TrialRecord.from_trial(trial)
    key = "samples_per_second" if scenario == "offline" else "qps"
    value: Any = confirmed_value(trial, attrs)
    if value is not None:
        key = CONFIRMED_SCORE
    else:
        value = getattr(record, key)
    if value is None and trial.values:
        value = trial.values[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TunerError(f"trial {trial.number} has no measured {key} ({value!r})")
    rate = float(value)
    if not math.isfinite(rate) or rate <= 0:
        raise TunerError(f"trial {trial.number} has {key}={rate!r}, not a positive rate")
    return rate


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best feasible trial, or None: with one objective the confirmed winner (the best
    median of repeated runs, see tuner.confirm) where there is one, else the best single value;
    with several, the Pareto-optimal trial of highest throughput."""
    if len(study.directions) > 1:
        front = study.best_trials
        return max(front, key=lambda t: t.values[0]) if front else None
    confirmed = confirmed_trial(study)
    if confirmed is not None:
        return confirmed
    try:
        return study.best_trial
    except ValueError:
        return None


def confirmed_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's `confirmed_best` trial while it is still COMPLETE and feasible, else None."""
    number = study.user_attrs.get(CONFIRMED_BEST)
    if len(study.directions) > 1 or not isinstance(number, int):
        return None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.number == number:
            return trial if is_feasible(trial) else None
    return None


def engine_builds(study: optuna.Study) -> int | None:
    """Measured trials that built their precision variant (engine) instead of finding it
    cached; None when no trial recorded it (a study older than `engine_cached`)."""
    records = [
        TrialRecord.from_trial(t)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]
    known = [
        r.engine_cached for r in records if r.engine_cached is not None and r.duplicate_of is None
    ]
    return sum(not cached for cached in known) if known else None


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    """The first COMPLETE trial at batch 1, 1 stream, fp32."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        p = trial.params
        if p.get("batch_size") == 1 and p.get("streams") == 1 and p.get("precision") == "fp32":
            return trial
    return None


def pruned_baseline(study: optuna.Study) -> FrozenTrial | None:
    """The baseline configuration's PRUNED trial, where it has no COMPLETE one."""
    if baseline_trial(study) is not None:
        return None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        p = trial.params
        if p.get("batch_size") == 1 and p.get("streams") == 1 and p.get("precision") == "fp32":
            return trial
    return None


def speed_up_floor(study: optuna.Study) -> tuple[float, float] | None:
    """Where the baseline of a Server study was pruned, (the best's value over the baseline's
    Offline throughput, that throughput): a floor of the speed-up, since a Server search never
    answers over the Offline throughput it measured first. None otherwise (an Offline trial
    pruned on its warm-up's estimate has no such bound)."""
    base, best = pruned_baseline(study), best_trial(study)
    if base is None or best is None:
        return None
    runs = TrialRecord.from_trial(base).loadgen_runs or []
    rates = [
        float(rate)
        for r in runs
        if r.get("scenario") == "Offline"
        and isinstance(rate := r.get("samples_per_second"), (int, float))
        and rate > 0
    ]
    if study_setting(study.user_attrs, "scenario") != "server" or not rates:
        return None
    bound = rates[-1]
    return robust_value(best, study.user_attrs) / bound, bound


def speed_up(study: optuna.Study) -> float | None:
    """The best's throughput over the baseline's (each the median of its confirmation runs
    where it has them, see tuner.confirm), or None when either is missing (or zero)."""
    best, base = best_trial(study), baseline_trial(study)
    attrs = study.user_attrs
    if best is None or base is None or not base.values or not robust_value(base, attrs):
        return None
    return robust_value(best, attrs) / robust_value(base, attrs)


def _number(value: Any) -> float | None:
    """A float figure, None for a missing or NaN one."""
    if isinstance(value, (int, float)) and value == value:
        return float(value)
    return None

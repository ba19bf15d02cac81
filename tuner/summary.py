"""The table `optimize` ends with: the best configuration, its score (the median of its
confirmation runs where it was confirmed), its speed-up over the baseline (batch 1, 1 stream,
fp32) and how many engines the study built; with no feasible Server trial, the lowest latency
measured and a bound it would have met."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.cli_common import format_table
from tuner.config import StudyConfig
from tuner.results import (
    TrialRecord,
    baseline_trial,
    best_trial,
    confirm_scores,
    confirmed_trial,
    confirmed_value,
    engine_builds,
    is_copy,
    pruned_baseline,
    ranked,
    rate_unit,
    robust_value,
    speed_up,
    speed_up_floor,
    study_setting,
)
from tuner.storage import redact

NO_FEASIBLE = "no feasible trial: every configuration failed or broke a constraint"


def render_summary(study: optuna.Study, cfg: StudyConfig) -> str:
    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    failed = sum(t.state == TrialState.FAIL for t in trials)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    attrs = study.user_attrs
    simulated = " (simulated: null backend)" if attrs.get("simulated") else ""
    pruned_text = f", {pruned} pruned" if pruned else ""
    lines = [
        f"study {study.study_name}{simulated}: {len(trials)} trials, {complete} complete"
        f"{pruned_text}, {failed} failed",
        f"model {attrs.get('model')} on {study_setting(attrs, 'backend')} "
        f"({attrs.get('device')}), {study_setting(attrs, 'scenario')}",
    ]
    unit = rate_unit(cfg.scenario)
    best = best_trial(study)
    base = baseline_trial(study)
    # Server: the latency at the bound's percentile (p90 for a p90 bound), as LoadGen logged it.
    pct = f"p{cfg.percentile:g}"
    rows = []
    for label, trial in (("best", best), ("baseline", base)):
        if trial is not None:
            rows.append(_row(label, trial, attrs, cfg.percentile))
    if not rows:
        lines.append(NO_FEASIBLE if complete else "no complete trial yet")
        lines.extend(out_of_reach_lines(study) if complete else [])
        return "\n".join(lines)
    header = ["", "trial", "batch", "streams", "precision", unit, f"{pct} ms", "agreement vs fp32"]
    if cfg.scenario == "server":
        header.insert(5, "deque us")
        for row, trial in zip(rows, [t for t in (best, base) if t is not None], strict=True):
            row.insert(5, trial.params.get("deque_timeout_us"))
    else:  # an Offline latency is the time since the one big query was issued: not shown
        header.remove(f"{pct} ms")
        for row in rows:
            del row[6]
    shown = [t for t in (best, base) if t is not None]
    if any("backend" in t.params for t in shown):  # a study of several runtimes
        header.insert(2, "runtime")
        for row, trial in zip(rows, shown, strict=True):
            row.insert(2, trial.params.get("backend"))
    lines.append(format_table(rows, header))
    ratio = speed_up(study)
    if ratio is not None:
        lines.append(f"speed-up over the baseline: {ratio:.2f}x")
    lines.extend(pruned_lines(study, unit))
    lines.extend(confirmed_lines(study, unit))
    lines.extend(runtime_lines(study, unit))
    if best is not None and not cfg.multi_objective and confirmed_trial(study) is None:
        lines.append("not confirmed: the best of single runs (noise can make a lucky one win)")
    builds = engine_builds(study)
    if builds is not None:
        lines.append(f"engine builds: {builds}")
    if best is None:
        lines.append(NO_FEASIBLE)
        lines.extend(out_of_reach_lines(study))
    elif cfg.multi_objective:
        front = ", ".join(str(t.number) for t in study.best_trials)
        lines.append(f"Pareto front (throughput vs p99): trials {front}")
    url = redact(cfg.storage)
    lines.append(
        f"export: python -m tuner export --storage {url} --study {study.study_name} "
        "--format json --out best.json"
    )
    return "\n".join(lines)


def pruned_lines(study: optuna.Study, unit: str) -> list[str]:
    """The pruned trials, and where the baseline is one of them, what the speed-up is at least:
    `pruned: trials 2, 3, 5 (each stopped at a bound under the best: 9 LoadGen runs in all)`."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    if not trials:
        return []
    runs = sum(len(TrialRecord.from_trial(t).loadgen_runs or ()) for t in trials)
    numbers = ", ".join(str(t.number) for t in trials)
    lines = [
        f"pruned: trial{'s' if len(trials) > 1 else ''} {numbers} (each stopped at a bound "
        f"under the best so far: {runs} LoadGen run{'s' if runs != 1 else ''} in all)"
    ]
    base = pruned_baseline(study)
    if base is not None:
        floor = speed_up_floor(study)
        if floor is not None:
            lines.append(
                f"speed-up over the baseline: at least {floor[0]:.2f}x (the baseline, trial "
                f"{base.number}, was pruned: its Offline throughput, {floor[1]:,.1f}, bounds its "
                f"{unit})"
            )
        else:
            lines.append(f"speed-up over the baseline: not measured (trial {base.number} pruned)")
    return lines


def runtime_lines(study: optuna.Study, unit: str) -> list[str]:
    """In a study of several runtimes, each runtime's best feasible trial by the confirmed
    median where there is one, else the single run (as the study's best is chosen), so that
    how close the runtimes came is on the page:
    `best on openvino: trial 9, int8, batch 4, 2 streams: 96.2 samples/s`."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not any("backend" in t.params for t in trials):
        return []
    best: dict[str, FrozenTrial] = {}
    attrs = study.user_attrs
    for trial in ranked(trials):  # the highest median where confirmed, else single run
        runtime = str(trial.params.get("backend"))
        if runtime not in best or robust_value(trial, attrs) > robust_value(best[runtime], attrs):
            best[runtime] = trial
    runtimes = dict.fromkeys(str(t.params.get("backend")) for t in trials if "backend" in t.params)
    lines = []
    for runtime in runtimes:
        top = best.get(runtime)
        if top is None:
            lines.append(f"best on {runtime}: no feasible trial")
            continue
        params = {k: v for k, v in top.params.items() if k != "backend"}
        value = robust_value(top, attrs)
        lines.append(
            f"best on {runtime}: trial {top.number}, {config_label(params)}: {value:,.1f} {unit}"
        )
    return lines


def confirmed_lines(study: optuna.Study, unit: str) -> list[str]:
    """`confirmed: median of 3 runs (94.7, 94.7, 94.3 samples/s)` for the confirmed best, and
    the same for the baseline where it was measured again (see tuner.confirm): the two numbers
    the speed-up divides."""
    attrs = study.user_attrs
    best, base = confirmed_trial(study), baseline_trial(study)
    if best is not None and base is not None and base.number == best.number:
        base = None  # the baseline won: said once
    lines = []
    for label, trial in (("confirmed", best), ("baseline confirmed", base)):
        if trial is None or confirmed_value(trial, attrs) is None:
            continue
        scores = confirm_scores(trial, attrs)
        runs = ", ".join(f"{s:,.1f}" for s in scores)
        lines.append(f"{label}: median of {len(scores)} runs ({runs} {unit})")
    return lines


def _row(
    label: str, trial: FrozenTrial, attrs: Mapping[str, Any], percentile: float
) -> list[object]:
    p, record = trial.params, TrialRecord.from_trial(trial)
    latency = latency_at(record, percentile)
    return [
        label,
        trial.number,
        p.get("batch_size"),
        p.get("streams"),
        p.get("precision"),
        robust_value(trial, attrs),
        latency,
        agreement_text(record),
    ]


def agreement_text(record: TrialRecord) -> str | None:
    """`top1 0.969`, `cosine 0.9987`: a trial's agreement with fp32 and its metric."""
    value = record.agreement
    if value is None or value != value:
        return None
    return f"{record.metric} {float(value):.4g}"


def run_latency(run: Mapping[str, Any], percentile: float | None) -> float | None:
    """A stored LoadGen run's latency (ms) at the study's `percentile`, the one LoadGen judged
    it on; runs stored before `percentile_ms` give their p99 to a p99 study only."""
    ms = run.get("percentile_ms")
    if ms is None and percentile == 99.0:
        ms = run.get("p99_ms")
    return float(ms) if isinstance(ms, (int, float)) and ms > 0 else None


def latency_at(record: TrialRecord, percentile: float | None) -> float | None:
    """A trial's latency (ms) at the study's `percentile` (p90 for a p90 bound), as LoadGen
    logged it for the trial's answer."""
    if percentile is None:
        return None
    latency = (record.latency_ms or {}).get(f"p{percentile:g}")
    if latency is None and percentile == 99.0:  # studies older than the stored percentiles
        latency = record.p99_ms
    return float(latency) if isinstance(latency, (int, float)) else None


def lowest_latency(study: optuna.Study) -> tuple[FrozenTrial, dict[str, Any], float] | None:
    """The Server run of lowest latency at the study's percentile (its trial, its compact run,
    the latency in ms) among measured trials that keep every constraint but validity (such as
    the accuracy floor), else among all; None in an Offline study or where no run logged it."""
    if study_setting(study.user_attrs, "scenario") != "server":
        return None
    percentile = study_setting(study.user_attrs, "percentile")
    found: list[tuple[bool, float, int, FrozenTrial, dict[str, Any]]] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if is_copy(trial):
            continue  # a copy of an earlier trial's runs
        broken = any(v > 0 for k, v in trial.constraints.items() if k != "valid")
        for run in TrialRecord.from_trial(trial).loadgen_runs or []:
            if run.get("scenario") != "Server":
                continue
            ms = run_latency(run, percentile)
            if ms is not None:
                found.append((broken, ms, trial.number, trial, run))
    if not found:
        return None
    _, ms, _, trial, run = min(found, key=lambda f: f[:3])
    return trial, run, ms


def round_up(value: float, digits: int = 2) -> float:
    """`value` rounded up to `digits` significant figures: 20.84 -> 21, 8.5 -> 8.5."""
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return round(math.ceil(value / step - 1e-9) * step, 12)


def out_of_reach_lines(study: optuna.Study) -> list[str]:
    """With no feasible trial, how far the bound was: the lowest latency a Server run measured
    at the study's percentile, its QPS and configuration, and a bound it would have met; or,
    where no trial reached a Server run, the fastest warm-up batch."""
    if study_setting(study.user_attrs, "scenario") != "server":
        return []
    pct = f"p{study_setting(study.user_attrs, 'percentile', 99.0):g}"
    bound = study_setting(study.user_attrs, "latency_ms")
    bound_text = f"the {bound:g} ms bound" if isinstance(bound, (int, float)) else "the bound"
    lowest = lowest_latency(study)
    if lowest is None:
        return _fastest_warmup(study, bound_text)
    trial, run, ms = lowest
    qps = run.get("target_qps") or run.get("scheduled_qps") or 0.0
    line = (
        f"lowest {pct} measured: {ms:,.2f} ms at {qps:,.1f} QPS, trial {trial.number} "
        f"({config_label(trial.params)})"
    )
    suggested = round_up(ms)
    if not isinstance(bound, (int, float)) or suggested > bound:
        return [f"{line}; a bound of {suggested:g} ms at {pct} would have been met"]
    if not run.get("valid"):
        why = "; ".join(run.get("invalid_reasons") or []) or "INVALID"
    else:
        broken = sorted(k for k, v in trial.constraints.items() if v > 0)
        why = f"the trial broke {', '.join(broken) or 'a constraint'}"
    return [f"{line}: within {bound_text}, yet {why}"]


def _fastest_warmup(study: optuna.Study, bound_text: str) -> list[str]:
    """No Server run logged the percentile: the fastest warm-up batch, if any trial timed one."""
    timed = [
        (float(ms), t)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if isinstance(ms := TrialRecord.from_trial(t).warmup_batch_ms, (int, float))
    ]
    if not timed:
        return []
    ms, fastest = min(timed, key=lambda pair: pair[0])
    return [
        f"no Server run measured a latency: the fastest warm-up batch took "
        f"{ms:,.2f} ms (median), trial {fastest.number} "
        f"({config_label(fastest.params)}), against {bound_text}"
    ]


def config_label(params: dict[str, Any]) -> str:
    """`int8, batch 1, 1 stream` (and the batching timeout where the trial has one; the
    runtime first in a study of several)."""
    streams = params.get("streams")
    text = f"{params['backend']} " if params.get("backend") is not None else ""
    text += f"{params.get('precision')}, batch {params.get('batch_size')}, "
    text += f"{streams} stream{'' if streams == 1 else 's'}"
    if params.get("deque_timeout_us") is not None:
        text += f", deque {params['deque_timeout_us']:,} us"
    return text

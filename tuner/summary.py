"""The table `optimize` ends with: the best configuration, its score (the median of its
confirmation runs where it was confirmed), its speed-up over the baseline (batch 1, 1 stream,
fp32) and how many engines the study built."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.cli_common import format_table
from tuner.config import StudyConfig
from tuner.storage import redact
from tuner.study import (
    CONFIRM_SCORES,
    baseline_trial,
    best_trial,
    confirmed_trial,
    engine_builds,
    robust_value,
)


def render_summary(study: optuna.Study, cfg: StudyConfig) -> str:
    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    failed = sum(t.state == TrialState.FAIL for t in trials)
    simulated = " (simulated: null backend)" if study.user_attrs.get("simulated") else ""
    lines = [
        f"study {study.study_name}{simulated}: {len(trials)} trials, {complete} complete, "
        f"{failed} failed",
        f"model {study.user_attrs.get('model')} on {study.user_attrs.get('backend')} "
        f"({study.user_attrs.get('device')}), {study.user_attrs.get('scenario')}",
    ]
    unit = "samples/s" if cfg.scenario == "offline" else "QPS"
    best = best_trial(study)
    base = baseline_trial(study)
    rows = []
    for label, trial in (("best", best), ("baseline", base)):
        if trial is not None:
            rows.append(_row(label, trial))
    if not rows:
        lines.append("no complete trial yet")
        return "\n".join(lines)
    header = ["", "trial", "batch", "streams", "precision", unit, "p99 ms", "top-1 vs fp32"]
    if cfg.scenario == "server":
        header.insert(5, "deque us")
        for row, trial in zip(rows, [t for t in (best, base) if t is not None], strict=True):
            row.insert(5, trial.params.get("deque_timeout_us"))
    else:  # an Offline latency is the time since the one big query was issued: not shown
        header.remove("p99 ms")
        for row in rows:
            del row[6]
    lines.append(format_table(rows, header))
    if best is not None and base is not None and robust_value(base) > 0:
        lines.append(f"speed-up over the baseline: {robust_value(best) / robust_value(base):.2f}x")
    confirmed = confirmed_trial(study)
    if confirmed is not None and best is not None and confirmed.number == best.number:
        scores = confirmed.user_attrs.get(CONFIRM_SCORES) or []
        runs = ", ".join(f"{float(s):,.1f}" for s in scores)
        lines.append(f"confirmed: median of {len(scores)} runs ({runs} {unit})")
    elif best is not None and not cfg.multi_objective:
        lines.append("not confirmed: the best of single runs (noise can make a lucky one win)")
    builds = engine_builds(study)
    if builds is not None:
        lines.append(f"engine builds: {builds}")
    if best is None:
        lines.append("no feasible trial: every configuration failed or broke a constraint")
    elif cfg.multi_objective:
        front = ", ".join(str(t.number) for t in study.best_trials)
        lines.append(f"Pareto front (throughput vs p99): trials {front}")
    url = redact(cfg.storage)
    lines.append(
        f"export: python -m tuner export --storage {url} --study {study.study_name} "
        "--format json --out best.json"
    )
    return "\n".join(lines)


def _row(label: str, trial: FrozenTrial) -> list[object]:
    p, a = trial.params, trial.user_attrs
    return [
        label,
        trial.number,
        p.get("batch_size"),
        p.get("streams"),
        p.get("precision"),
        robust_value(trial),
        a.get("p99_ms"),
        a.get("agreement_top1"),
    ]

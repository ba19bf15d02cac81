"""Confirmed winners: once the budget is spent, the best few configurations are measured again
and the best median wins, so one lucky run (noise here is about +/-10%) cannot win a study.

The top `confirm_top` distinct feasible configurations by value each get `confirm_runs` more
measurements, each in a child process like a trial (LoadGen logs under
`<runs>/<study>/confirm-<trial>-<i>`).
Each candidate trial stores `confirm_scores` (its own value first; a failed or INVALID repeat
scores 0) and, once complete, `confirmed_score` (their median); the study stores
`confirmed_best`, `confirmed_at` and `confirmed_top`. Running it again measures only what is
missing: nothing when the top set is unchanged.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import optuna_compat as compat
from tuner.child import KILLED, measure_in_child
from tuner.loop import RETRIES, budget_used, exclusive
from tuner.results import (
    CONFIRM_SCORES,
    CONFIRMED_BEST,
    CONFIRMED_SCORE,
    TrialRecord,
    is_copy,
    is_feasible,
    robust_value,
)
from tuner.space import Params
from tuner.study import Prepared, trial_configs

#: Study attributes besides `confirmed_best`: when, and which trials were the candidates.
CONFIRMED_AT = "confirmed_at"
CONFIRMED_TOP = "confirmed_top"


def candidates(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The `top` best distinct feasible configurations by (single-run) value, one trial each:
    the best-valued measured trial of a configuration (never a copy of an earlier one)."""
    measured = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if is_feasible(t) and not is_copy(t)
    ]
    measured.sort(key=lambda t: (-t.values[0], t.number))
    chosen: list[FrozenTrial] = []
    seen: set[str] = set()
    for trial in measured:
        key = json.dumps(trial.params, sort_keys=True)
        if key not in seen:
            seen.add(key)
            chosen.append(trial)
    return chosen[:top]


def confirm(prepared: Prepared, say: Callable[[str], None]) -> FrozenTrial | None:
    """Re-measure the top configurations and store the confirmed winner; return it (None when
    confirmation is off, the study has several objectives, its budget is not spent (stopped by
    `--timeout`) or no trial is feasible).

    KeyboardInterrupt propagates; the repeats measured so far are kept and the next run
    measures the rest."""
    cfg, study = prepared.cfg, prepared.study
    if cfg.confirm_runs == 0 or cfg.multi_objective:
        return None
    if budget_used(study) < cfg.trials:
        say("the budget is not spent: the best configurations are not confirmed yet")
        return None
    still = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if still:
        listing = ", ".join(str(t.number) for t in still)
        say(f"trial(s) {listing} still running elsewhere: the best are not confirmed yet")
        return None
    with exclusive(study, "confirm"):  # a second `optimize` waits, then finds it done
        top = candidates(study, cfg.confirm_top)
        if not top:
            return None
        want = 1 + cfg.confirm_runs
        todo = [t for t in top if len(_scores(t)) < want]
        numbers = [t.number for t in top]
        attrs = study.user_attrs
        done = attrs.get(CONFIRMED_BEST) is not None and attrs.get(CONFIRMED_TOP) == numbers
        if done and not todo:
            say(f"confirmation: top {len(top)} unchanged since {attrs.get(CONFIRMED_AT)}")
            return _winner(study)
        if todo:
            study.set_user_attr(CONFIRMED_BEST, None)  # until every repeat is in
            runs = ", ".join(f"trial {t.number}" for t in todo)
            say(f"confirming the top {len(top)}: {cfg.confirm_runs} more run(s) of {runs}")
        for trial in top:
            scores = _scores(trial)
            while len(scores) < want:
                scores.append(_measure_again(prepared, trial, len(scores), say))
                set_user_attr(study, trial, CONFIRM_SCORES, list(scores))
            if TrialRecord.from_trial(trial).confirmed_score != statistics.median(scores):
                set_user_attr(study, trial, CONFIRMED_SCORE, statistics.median(scores))
        best = _winner(study)
        assert best is not None  # every candidate is confirmed now
        study.set_user_attr(CONFIRMED_TOP, numbers)
        study.set_user_attr(CONFIRMED_AT, datetime.now(UTC).isoformat(timespec="seconds"))
        study.set_user_attr(CONFIRMED_BEST, best.number)
    runs = ", ".join(f"{s:,.1f}" for s in _scores(best))
    say(
        f"confirmed best: trial {best.number}, median {robust_value(best):,.1f} of "
        f"{len(_scores(best))} runs ({runs})"
    )
    return best


def _scores(trial: FrozenTrial) -> list[float]:
    """The trial's confirmation scores so far; just its own value before any repeat."""
    stored = TrialRecord.from_trial(trial).confirm_scores
    return [float(s) for s in stored] if stored else [float(trial.values[0])]


def _winner(study: optuna.Study) -> FrozenTrial | None:
    """The confirmed trial of highest median (earlier trial on a tie). Every confirmed trial
    competes, also one a later, luckier trial pushed out of the top."""
    confirmed = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if is_feasible(t)
        and not is_copy(t)
        and TrialRecord.from_trial(t).confirmed_score is not None
    ]
    return max(confirmed, key=lambda t: (robust_value(t), -t.number), default=None)


def _measure_again(
    prepared: Prepared, trial: FrozenTrial, index: int, say: Callable[[str], None]
) -> float:
    """Repeat `index` (1, 2, ...) of the trial's configuration: its score, 0 when it failed or
    was INVALID."""
    cfg, study = prepared.cfg, prepared.study
    name = study.study_name
    run, spec = trial_configs(cfg, Params.from_mapping(trial.params), name, trial.number)
    spec = replace(spec, out_dir=cfg.runs_dir / name / f"confirm-{trial.number:04d}-{index}")
    measure = prepared.measure or measure_in_child
    unit = "samples/s" if cfg.scenario == "offline" else "QPS"
    what = f"confirm trial {trial.number} run {index}/{cfg.confirm_runs}"
    for _ in range(RETRIES[KILLED]):  # a child killed from outside: said nothing sure
        outcome = measure(run, spec, cfg.trial_timeout_s)
        if outcome.failure != KILLED:
            break
        say(f"{what}: {outcome.reason}; measured again")
    if outcome.result is None:
        if outcome.failure == "interrupted":
            raise KeyboardInterrupt
        say(f"{what}: FAILED ({outcome.reason}), counts as 0")
        return 0.0
    result = outcome.result
    if not result["valid"]:
        say(f"{what}: {float(result['score']):,.1f} {unit} INVALID, counts as 0")
        return 0.0
    say(f"{what}: {float(result['score']):,.1f} {unit}")
    return float(result["score"])


def set_user_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    """Set a user attribute of a finished trial (see tuner.optuna_compat)."""
    compat.set_finished_user_attr(study, trial, key, value)

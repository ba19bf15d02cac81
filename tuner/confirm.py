"""Confirmed winners: once the budget is spent, the best few configurations are measured again
and the best median wins, so one lucky run (noise here is about +/-10%) cannot win a study.

The top `confirm_top` distinct feasible configurations by value each get `confirm_runs` more
measurements, in rounds that take every candidate in turn (A B C, then C B A: the machine's drift
falls on all alike), each measured as a trial is (LoadGen logs under
`<runs>/<study>/confirm-<trial>-<i>`). So does the baseline (batch 1, 1 stream, fp32) where it is
feasible and not among them: the speed-up the summary and `report` give divides the winner's
median by the baseline's value, and one run of the baseline made that ratio noise's (a Server
baseline answered 43.8 QPS in one study where others measured 96-145).

Everything is stored through Optuna's public API, as study user attributes: each candidate's
scores under `confirm:<trial number>` (a list: the trial's own value first, then each repeat's
score, 0 for a failed or INVALID repeat; written after every repeat), and `confirmed_best`,
`confirmed_at` and `confirmed_top`. A candidate's confirmed score is not stored: it is the
median of its scores once it has 1 + `confirm_runs` of them (tuner.results.confirmed_value).
Studies of earlier versions kept the scores and median as the trial's `confirm_scores` and
`confirmed_score`; they read unchanged. Running it again measures only what is missing:
nothing when the top set is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.child import KILLED, measure_in_child
from tuner.loop import RETRIES, budget_used, exclusive
from tuner.results import (
    CONFIRMED_BEST,
    baseline_trial,
    confirm_key,
    confirm_scores,
    confirmed_value,
    is_copy,
    is_feasible,
    ranked,
    rate_unit,
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
    return ranked(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))[:top]


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
        numbers = [t.number for t in top]
        base = baseline_trial(study)
        if base is not None and (base.number in numbers or not is_feasible(base)):
            base = None  # confirmed as a candidate, or has no value to divide by
        measured = [*top, base] if base is not None else top
        want = 1 + cfg.confirm_runs
        attrs = study.user_attrs
        todo = [t for t in measured if len(_scores(t, attrs)) < want]
        done = attrs.get(CONFIRMED_BEST) is not None and attrs.get(CONFIRMED_TOP) == numbers
        if done and not todo:
            say(f"confirmation: top {len(top)} unchanged since {attrs.get(CONFIRMED_AT)}")
            return _winner(study)
        if todo:
            study.set_user_attr(CONFIRMED_BEST, None)  # until every repeat is in
            runs = ", ".join(
                f"trial {t.number}" + (" (the baseline)" if t is base else "") for t in todo
            )
            what = "the baseline" if todo == [base] else f"the top {len(top)}"  # older study
            say(f"confirming {what}: {cfg.confirm_runs} more run(s) of {runs}")
        # Round r measures repeat r of every candidate, in turn (A B C, then C B A, ...), so
        # the machine's drift over the minutes this takes falls on each alike, as in
        # benchmarks/: one candidate's repeats all in a slow minute would lose it the study.
        repeats = {t.number: _scores(t, attrs) for t in measured}
        for r in range(1, want):
            for trial in measured if r % 2 else measured[::-1]:
                mine = repeats[trial.number]
                if len(mine) <= r:  # repeat r is missing (a rerun catches up here)
                    mine.append(_measure_again(prepared, trial, len(mine), say))
                    study.set_user_attr(confirm_key(trial.number), list(mine))
        best = _winner(study)
        assert best is not None  # every candidate is confirmed now
        study.set_user_attr(CONFIRMED_TOP, numbers)
        study.set_user_attr(CONFIRMED_AT, datetime.now(UTC).isoformat(timespec="seconds"))
        study.set_user_attr(CONFIRMED_BEST, best.number)
    attrs = study.user_attrs
    scores = _scores(best, attrs)
    runs = ", ".join(f"{s:,.1f}" for s in scores)
    say(
        f"confirmed best: trial {best.number}, median {robust_value(best, attrs):,.1f} of "
        f"{len(scores)} runs ({runs})"
    )
    return best


def _scores(trial: FrozenTrial, attrs: Mapping[str, Any]) -> list[float]:
    """The trial's confirmation scores so far; just its own value before any repeat."""
    return confirm_scores(trial, attrs) or [float(trial.values[0])]


def _winner(study: optuna.Study) -> FrozenTrial | None:
    """The confirmed trial of highest median (earlier trial on a tie). Every confirmed trial
    competes, also one a later, luckier trial pushed out of the top."""
    attrs = study.user_attrs  # read once, not per trial
    confirmed = [
        (median, -t.number, t)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if is_feasible(t) and not is_copy(t) and (median := confirmed_value(t, attrs)) is not None
    ]
    best = max(confirmed, key=lambda c: c[:2], default=None)
    return best[2] if best is not None else None


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
    unit = rate_unit(cfg.scenario)
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

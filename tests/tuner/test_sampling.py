"""The no-repeat sampler's last steps (tuner.sampling): after `polish_from` finished trials it
proposes untaken neighbours of the best feasible configuration, on a real Optuna study."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from tuner.sampling import NoRepeatSampler
from tuner.space import SearchSpace

SPACE = SearchSpace(
    batch_sizes=(1, 2, 4, 8), streams=(1, 2, 3), precisions=("fp32", "int8"), deque_timeout_us=None
)


def study_with(
    measured: list[tuple[dict[str, Any], float, bool]], polish_from: int | None
) -> optuna.Study:
    """A study whose trials measured `measured` (params, value, feasible), then sampled by a
    NoRepeatSampler over SPACE whose inner sampler is seeded random sampling."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = NoRepeatSampler(
        optuna.samplers.RandomSampler(seed=3), SPACE, seed=3, polish_from=polish_from
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params, value, feasible in measured:
        study.enqueue_trial(params)
        trial = study.ask()
        SPACE.suggest(trial)
        trial.set_constraint("valid", 0.0 if feasible else 1.0)
        study.tell(trial, value)
    return study


def propose(study: optuna.Study) -> dict[str, Any]:
    trial = study.ask()
    params = SPACE.suggest(trial)
    study.tell(trial, 0.0)
    return {
        "batch_size": params.batch_size,
        "streams": params.streams,
        "precision": params.precision,
    }


def point(b: int, s: int, p: str) -> dict[str, Any]:
    return {"batch_size": b, "streams": s, "precision": p}


MEASURED = [
    (point(1, 1, "fp32"), 10.0, True),
    (point(4, 2, "int8"), 40.0, True),
    (point(8, 3, "int8"), 90.0, False),  # the highest value, but it broke a constraint
    (point(1, 3, "fp32"), 12.0, True),
]
NEIGHBOURS_OF_B4_S2 = [
    point(2, 2, "int8"),
    point(8, 2, "int8"),
    point(4, 1, "int8"),
    point(4, 3, "int8"),
]


def test_after_polish_from_trials_it_proposes_each_neighbour_of_the_feasible_best() -> None:
    study = study_with(MEASURED, polish_from=4)
    proposed = [propose(study) for _ in range(4)]  # each scores 0: b4/s2 stays the best
    assert sorted(map(str, proposed)) == sorted(map(str, NEIGHBOURS_OF_B4_S2))
    # Every neighbour taken: the inner sampler proposes again, still never a repeat.
    nxt = propose(study)
    assert nxt not in [p for p, _, _ in MEASURED] + NEIGHBOURS_OF_B4_S2


def test_a_better_neighbour_becomes_the_incumbent_so_the_steps_climb() -> None:
    study = study_with(MEASURED, polish_from=4)
    for _ in NEIGHBOURS_OF_B4_S2:  # b8/s2 scores 50, the others 1: stop once it is measured
        if propose_scoring(study, lambda p: 50.0 if p == point(8, 2, "int8") else 1.0) == point(
            8, 2, "int8"
        ):
            break
    # b8/s2 now leads: its one untaken neighbour is next (b4/s2 and b8/s3 are taken).
    assert propose(study) == point(8, 1, "int8")


def propose_scoring(study: optuna.Study, score: Any) -> dict[str, Any]:
    trial = study.ask()
    params = SPACE.suggest(trial)
    p = point(params.batch_size, params.streams, params.precision)
    study.tell(trial, score(p))
    return p


@pytest.mark.parametrize("polish_from", [None, 5])
def test_before_polish_from_or_without_it_the_inner_sampler_proposes(
    polish_from: int | None,
) -> None:
    """Seeded random sampling proposes the same as without polishing while fewer than
    `polish_from` trials have finished."""
    plain = study_with(MEASURED, polish_from=None)
    study = study_with(MEASURED, polish_from=polish_from)
    assert propose(study) == propose(plain)

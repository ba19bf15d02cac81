"""The no-repeat sampler's last steps (tuner.sampling): once `climb_from` trials of the budget
are spent it proposes untaken neighbours of the best feasible configuration, on a real Optuna
study; and how a study's settings turn it on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
import pytest

from tuner import config
from tuner.sampling import NoRepeatSampler
from tuner.space import SearchSpace
from tuner.study import make_sampler

SPACE = SearchSpace(
    batch_sizes=(1, 2, 4, 8), streams=(1, 2, 3), precisions=("fp32", "int8"), deque_timeout_us=None
)


def study_with(
    measured: list[tuple[dict[str, Any], float, bool]],
    climb_from: int | None,
    space: SearchSpace = SPACE,
    seed: int = 3,
) -> optuna.Study:
    """A study whose trials measured `measured` (params, value, feasible), then sampled by a
    NoRepeatSampler over `space` whose inner sampler is seeded random sampling."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = NoRepeatSampler(
        optuna.samplers.RandomSampler(seed=seed), space, seed=seed, climb_from=climb_from
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params, value, feasible in measured:
        study.enqueue_trial(params)
        trial = study.ask()
        space.suggest(trial)
        trial.set_constraint("valid", 0.0 if feasible else 1.0)
        study.tell(trial, value)
    return study


def propose(
    study: optuna.Study,
    score: Callable[[dict[str, Any]], float] = lambda p: 0.0,
    space: SearchSpace = SPACE,
) -> dict[str, Any]:
    """The next proposal's parameters, told `score(parameters)`."""
    trial = study.ask()
    space.suggest(trial)
    params = dict(trial.params)
    study.tell(trial, score(params))
    return params


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


def test_after_climb_from_trials_it_proposes_each_neighbour_of_the_feasible_best() -> None:
    study = study_with(MEASURED, climb_from=4)
    proposed = [propose(study) for _ in range(4)]  # each scores 0: b4/s2 stays the best
    assert sorted(map(str, proposed)) == sorted(map(str, NEIGHBOURS_OF_B4_S2))


def test_once_the_bests_neighbours_are_taken_it_climbs_from_the_next_best() -> None:
    study = study_with(MEASURED, climb_from=4)
    for _ in NEIGHBOURS_OF_B4_S2:
        propose(study)  # each scores 0: b4/s2 stays the best, its neighbours all taken
    # The next best feasible is fp32 b1/s3 (12.0): its untaken neighbours come next.
    following = [propose(study) for _ in range(2)]
    assert sorted(map(str, following)) == sorted(
        map(str, [point(2, 3, "fp32"), point(1, 2, "fp32")])
    )


def test_with_no_untaken_neighbour_left_the_inner_sampler_proposes() -> None:
    space = SearchSpace(
        batch_sizes=(1, 2), streams=(1,), precisions=("fp32", "int8"), deque_timeout_us=None
    )
    measured = [
        ({"batch_size": b, "streams": 1, "precision": "fp32"}, v, True)
        for b, v in ((1, 10.0), (2, 20.0))
    ]
    study = study_with(measured, climb_from=2, space=space, seed=1)
    # fp32 b1 and b2 are each other's only neighbours, both taken
    assert propose(study, space=space)["precision"] == "int8"


def test_a_better_neighbour_becomes_the_incumbent_so_the_steps_climb() -> None:
    study = study_with(MEASURED, climb_from=4)
    for _ in NEIGHBOURS_OF_B4_S2:  # b8/s2 scores 50, the others 1: stop once it is measured
        if propose(study, lambda p: 50.0 if p == point(8, 2, "int8") else 1.0) == point(
            8, 2, "int8"
        ):
            break
    # b8/s2 now leads: its one untaken neighbour is next (b4/s2 and b8/s3 are taken).
    assert propose(study) == point(8, 1, "int8")


@pytest.mark.parametrize("climb_from", [None, 5])
def test_before_climb_from_or_without_it_the_inner_sampler_proposes(
    climb_from: int | None,
) -> None:
    """Seeded random sampling proposes the same as without climbing while fewer than
    `climb_from` trials have finished."""
    plain = study_with(MEASURED, climb_from=None)
    study = study_with(MEASURED, climb_from=climb_from)
    assert propose(study) == propose(plain)


def test_a_study_with_several_objectives_does_not_climb() -> None:
    # Throughput against p99 has a Pareto front, no single best to climb from.
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def study(climb_from: int | None) -> optuna.Study:
        sampler = NoRepeatSampler(
            optuna.samplers.RandomSampler(seed=3), SPACE, seed=3, climb_from=climb_from
        )
        s = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        for params, value, _ in MEASURED:
            s.enqueue_trial(params)
            trial = s.ask()
            SPACE.suggest(trial)
            s.tell(trial, [value, 5.0])
        return s

    climbing, plain = study(0), study(None)
    for s in (climbing, plain):
        trial = s.ask()
        SPACE.suggest(trial)
    assert climbing.trials[-1].params == plain.trials[-1].params


def test_the_deque_timeout_is_a_step_too() -> None:
    space = SearchSpace(
        batch_sizes=(1, 2), streams=(1,), precisions=("fp32",), deque_timeout_us=(500, 2000, 4000)
    )
    start = {"batch_size": 1, "streams": 1, "precision": "fp32", "deque_timeout_us": 2000}
    study = study_with([(start, 10.0, True)], climb_from=1, space=space, seed=1)
    proposed = [propose(study, lambda p: 1.0, space) for _ in range(3)]
    neighbours = {(p["batch_size"], p["deque_timeout_us"]) for p in proposed}
    assert neighbours == {(2, 2000), (1, 500), (1, 4000)}


@pytest.mark.parametrize(
    ("settings", "climb_from"),
    [
        ({}, 12),  # the default: 16 trials, the last 4 climb
        ({"trials": 24, "climb": 6}, 18),
        ({"climb": 0}, None),
        ({"trials": 8}, 6),  # at most a quarter of the budget climbs
        ({"trials": 3}, None),
        ({"sampler": "random"}, None),  # a baseline strategy stays as it is
    ],
    ids=["default", "set", "off", "short", "shorter", "random"],
)
def test_the_last_climb_trials_of_a_tpe_study_climb(
    settings: dict[str, Any], climb_from: int | None
) -> None:
    cfg = config.build(**settings)
    sampler = make_sampler(cfg, SPACE)
    assert isinstance(sampler, NoRepeatSampler)
    assert sampler.climb_from == climb_from

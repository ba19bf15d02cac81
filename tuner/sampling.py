"""Samplers that never spend a trial on a configuration the study already holds.

A tuning space is small and discrete (a few dozen configurations), and every trial costs a
LoadGen run; TPE and random sampling draw with replacement, so in a 12-trial study a quarter of
the proposals can be repeats (seen: 3 of 12). `NoRepeatSampler` wraps any sampler: it samples
every parameter jointly (one relative sample over the whole space) and, when the inner sampler
proposes a configuration some trial already has (finished, running or waiting), it takes instead
the unproposed configuration nearest to it (fewest differing parameters, then ordinal distance
in batch size and streams), ties broken by its own seeded draw. Once every configuration is
taken it lets repeats through; the study answers those from the earlier trial.

A configuration found infeasible whatever its batch or streams takes its kin out with it
(`refusals`): where a runtime could not read the model file (OpenVINO's frontend refusing an op
it cannot convert), every configuration of that runtime that loads the same file (fp32 and
bf16 load the model itself) counts as taken from then on; where a precision's file could not
be made, every configuration that loads it, on any runtime; where a precision's outputs fell
under the study's accuracy floor on a runtime, every configuration of that precision there
(the opset-15 Silero VAD's int8 variant agrees 0.0 with fp32: three of a 16-trial study's
trials measured it at other batch sizes). The budget goes to what can win, and the study does
not run an enqueued configuration so ruled out (tuner.study).

The last trials of a study climb (`climb_from`: how many trials of the budget come before the
climb). Each proposal is then an untaken neighbour of the best feasible configuration so far:
batch size, streams or deque timeout one listed step up or down, precision kept, the seeded
generator picking among them (the runtime kept too, where the study searches several). A
better neighbour becomes the one to climb from; where all the best's neighbours are taken the
climb goes on from the next best, and only where no feasible configuration has an untaken
neighbour does the inner sampler propose again. It is the hill
climbing Triton Model Analyzer's quick search does from the smallest configuration, started
where TPE has got to: TPE treats batch sizes as unordered categories, and with a dozen trials
it often measures the best configuration's neighbours but not the best (the VNNI ResNet-50
landscape: 13 of 100 seeds; benchmarks/RESULTS.md, "Climbing the last trials").
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from tuner.child import INFEASIBLE
from tuner.loop import committed_of
from tuner.results import TrialRecord, ranked
from tuner.space import SearchSpace


class NoRepeatSampler(BaseSampler):
    def __init__(
        self,
        inner: BaseSampler,
        space: SearchSpace,
        seed: int | None = None,
        climb_from: int | None = None,
    ) -> None:
        self.inner = inner
        self.space = space
        self.climb_from = climb_from
        self._grid = space.grid()
        self._rng = random.Random(seed)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {name: CategoricalDistribution(choices) for name, choices in self._grid.items()}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        others = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        taken = _taken(others) | self._refused(others)
        step = self._climb(study, others, taken)
        if step is not None:
            return step
        proposed = self.inner.sample_relative(study, trial, search_space)
        if set(proposed) != set(search_space):  # e.g. TPE before its startup trials are in
            proposed = {
                name: proposed[name]
                if name in proposed
                else self.inner.sample_independent(study, trial, name, dist)
                for name, dist in search_space.items()
            }
        if _key(proposed) not in taken and self.space.allows(proposed):
            return proposed
        fresh = [p for p in self.space.points() if _key(p) not in taken]
        if not fresh:  # every configuration taken: a repeat, which the study answers
            return (
                proposed if self.space.allows(proposed) else self._rng.choice(self.space.points())
            )
        distance = {_key(p): self._distance(proposed, p) for p in fresh}
        nearest = min(distance.values())
        return self._rng.choice([p for p in fresh if distance[_key(p)] == nearest])

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
        self._rng = random.Random()

    def _climb(
        self, study: optuna.Study, others: list[FrozenTrial], taken: set[str]
    ) -> dict[str, Any] | None:
        """An untaken neighbour of the best feasible configuration that has one, once
        `climb_from` trials of the budget are spent or running (`others`: every trial but the
        one being sampled); None before that, with several objectives (no single best to climb
        from), or when no feasible configuration has an untaken neighbour."""
        if self.climb_from is None or len(study.directions) > 1:
            return None
        if committed_of(others) < self.climb_from:
            return None
        for trial in ranked(others):
            if set(trial.params) != set(self._grid):
                continue
            near = [p for p in self._neighbours(trial.params) if _key(p) not in taken]
            if near:
                return self._rng.choice(near)
        return None

    def _refused(self, others: list[FrozenTrial]) -> set[str]:
        """Every configuration an infeasible trial rules out (`refusals`)."""
        refused = refusals(self.space, others)
        if not refused:
            return set()
        return {_key(p) for p in self.space.points() if refusal(self.space, p, refused)}

    def _neighbours(self, point: dict[str, Any]) -> list[dict[str, Any]]:
        """`point` with one ordinal parameter one listed step up or down (runtime and
        precision kept)."""
        out = []
        for name, choices in self._grid.items():
            if name in _CATEGORICAL or point[name] not in choices:
                continue
            at = choices.index(point[name])
            out += [{**point, name: choices[i]} for i in (at - 1, at + 1) if 0 <= i < len(choices)]
        return out

    def _distance(self, a: dict[str, Any], b: dict[str, Any]) -> tuple[int, int]:
        differing = sum(a[name] != b[name] for name in self._grid)
        ordinal = sum(
            abs(choices.index(a[name]) - choices.index(b[name]))
            for name, choices in self._grid.items()
            if name not in _CATEGORICAL
        )
        return differing, ordinal


#: Parameters without an order: a climb keeps them, the nearest-point distance only counts
#: whether they differ.
_CATEGORICAL = ("backend", "precision")


#: What an infeasible trial rules out: (kind, runtime, what) where kind "file" rules out
#: every configuration that loads the file `what` (a precision, `SearchSpace.source`) on
#: `runtime` (None: on every runtime), and "precision" every configuration of precision `what`
#: on `runtime` (its outputs fell under the study's accuracy floor there).
Scope = tuple[str, str | None, str]


def refusals(space: SearchSpace, trials: Iterable[FrozenTrial]) -> dict[Scope, FrozenTrial]:
    """What the study's trials found infeasible whatever the batch or streams, each by the
    earliest trial that found it: a file its runtime cannot read (`TrialRecord.infeasible_on`)
    or that cannot be made (for every runtime), and a precision whose outputs a runtime left
    under the accuracy floor (that precision on that runtime: bf16 loads the fp32 file, and is
    judged apart from fp32). Copies and trials ruled out themselves are not counted."""
    found: dict[Scope, FrozenTrial] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state != TrialState.COMPLETE or "precision" not in trial.params:
            continue
        record = TrialRecord.from_trial(trial)
        if record.infeasible_as is not None or record.duplicate_of is not None:
            continue
        runtime, file = space.source(trial.params)
        if record.failure == INFEASIBLE:
            scope: Scope = ("file", runtime if record.infeasible_on else None, file)
        elif trial.constraints.get("accuracy", 0.0) > 0.0:
            scope = ("precision", runtime, trial.params["precision"])
        else:
            continue
        found.setdefault(scope, trial)
    return found


def refusal(
    space: SearchSpace, point: Mapping[str, Any], refused: Mapping[Scope, FrozenTrial]
) -> FrozenTrial | None:
    """The trial (of `refusals`) whose finding holds for `point` too, or None."""
    runtime, file = space.source(point)
    for scope in (
        ("file", runtime, file),
        ("file", None, file),
        ("precision", runtime, point["precision"]),
    ):
        if scope in refused:
            return refused[scope]
    return None


def _taken(others: list[FrozenTrial]) -> set[str]:
    """Configurations of these trials (every other trial of the study): measured, running or
    enqueued."""
    taken = set()
    for trial in others:
        params = trial.params or trial.system_attrs.get("fixed_params")
        if params:
            taken.add(_key(params))
    return taken


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)

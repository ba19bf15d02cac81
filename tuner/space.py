"""The search space of a study, resolved against what the backend can run on the device."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from harness.backends import Backend
from harness.config import PRECISIONS
from harness.errors import ConfigError
from tuner.config import StudyConfig

#: The configuration every speed-up is measured against; always part of the space.
BASELINE: dict[str, Any] = {"batch_size": 1, "streams": 1, "precision": "fp32"}
#: Batching timeouts tried in the Server scenario unless the study file lists its own.
SERVER_DEQUE_TIMEOUTS_US = (500, 2000, 8000)
DEFAULT_DEQUE_TIMEOUT_US = 2000


@dataclass(frozen=True)
class Params:
    """One point of the space."""

    batch_size: int
    streams: int
    precision: str
    deque_timeout_us: int = DEFAULT_DEQUE_TIMEOUT_US

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Params:
        return cls(
            batch_size=int(values["batch_size"]),
            streams=int(values["streams"]),
            precision=str(values["precision"]),
            deque_timeout_us=int(values.get("deque_timeout_us", DEFAULT_DEQUE_TIMEOUT_US)),
        )

    def label(self) -> str:
        return f"batch {self.batch_size}, {self.streams} stream(s), {self.precision}"


@dataclass(frozen=True)
class SearchSpace:
    batch_sizes: tuple[int, ...]
    streams: tuple[int, ...]
    precisions: tuple[str, ...]
    deque_timeout_us: tuple[int, ...] | None

    @property
    def size(self) -> int:
        n = len(self.batch_sizes) * len(self.streams) * len(self.precisions)
        return n * len(self.deque_timeout_us or (1,))

    def grid(self) -> dict[str, list[Any]]:
        grid: dict[str, list[Any]] = {
            "batch_size": list(self.batch_sizes),
            "streams": list(self.streams),
            "precision": list(self.precisions),
        }
        if self.deque_timeout_us:
            grid["deque_timeout_us"] = list(self.deque_timeout_us)
        return grid

    def points(self) -> list[dict[str, Any]]:
        """Every point of the grid, in a fixed order."""
        grid = self.grid()
        return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]

    def suggest(self, trial: optuna.Trial) -> Params:
        values = {name: trial.suggest_categorical(name, c) for name, c in self.grid().items()}
        return Params.from_mapping(values)

    def baseline(self) -> dict[str, Any]:
        point = dict(BASELINE)
        if self.deque_timeout_us:
            point["deque_timeout_us"] = _closest(self.deque_timeout_us, DEFAULT_DEQUE_TIMEOUT_US)
        return point

    def complete(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """An enqueued point with the unset parameters filled from the baseline."""
        full = {**self.baseline(), **point}
        if not self.deque_timeout_us:
            full.pop("deque_timeout_us", None)
        for name, choices in self.grid().items():
            if full[name] not in choices:
                raise ConfigError(
                    f"enqueue: {name}={full[name]!r} is outside the search space {choices}"
                )
        return full

    def to_dict(self) -> dict[str, Any]:
        return self.grid()

    @classmethod
    def from_dict(cls, grid: Mapping[str, Any]) -> SearchSpace:
        """The space `to_dict` wrote."""
        deque = grid.get("deque_timeout_us")
        return cls(
            batch_sizes=tuple(int(b) for b in grid["batch_size"]),
            streams=tuple(int(s) for s in grid["streams"]),
            precisions=tuple(str(p) for p in grid["precision"]),
            deque_timeout_us=tuple(int(d) for d in deque) if deque else None,
        )


def resolve_space(cfg: StudyConfig, backend: type[Backend]) -> SearchSpace:
    """The study's space; lists default to powers of two, 1..max streams, and every
    precision the backend runs on the device. The baseline point is always included."""
    space = cfg.space
    batch_sizes = space.batch_sizes or _powers_of_two(space.max_batch)
    streams = space.streams or tuple(range(1, space.max_streams + 1))
    supported = backend.precisions(cfg.device)
    precisions = space.precisions or supported
    for p in precisions:
        if p not in supported:
            raise ConfigError(
                f"space.precisions: {p} is not supported by backend {backend.name} on "
                f"{cfg.device} (supported: {', '.join(supported)})"
            )
    deque: tuple[int, ...] | None = None
    if cfg.scenario == "server":
        deque = space.deque_timeout_us or SERVER_DEQUE_TIMEOUTS_US
    return SearchSpace(
        batch_sizes=_with(batch_sizes, 1),
        streams=_with(streams, 1),
        precisions=tuple(sorted({*precisions, "fp32"}, key=PRECISIONS.index)),
        deque_timeout_us=deque,
    )


def _powers_of_two(maximum: int) -> tuple[int, ...]:
    values, b = [], 1
    while b <= maximum:
        values.append(b)
        b *= 2
    return tuple(values)


def _with(values: tuple[int, ...], required: int) -> tuple[int, ...]:
    return tuple(sorted({*values, required}))


def _closest(values: tuple[int, ...], target: int) -> int:
    return min(values, key=lambda v: abs(v - target))

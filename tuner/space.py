"""The search space of a study, resolved against what each runtime can run on the device.

A study of several runtimes (`space.backends`) searches the runtime as one more categorical
parameter, `backend`; a (runtime, precision) pair the runtime cannot run is `excluded`: never
proposed, never enqueued. A study of one runtime has no `backend` parameter, as before."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from harness.backends import get_backend
from harness.config import PRECISIONS
from harness.errors import ConfigError
from harness.precision import source_precision
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
    #: The runtime, where the study searches several; None: the study's one backend.
    backend: str | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Params:
        backend = values.get("backend")
        return cls(
            batch_size=int(values["batch_size"]),
            streams=int(values["streams"]),
            precision=str(values["precision"]),
            deque_timeout_us=int(values.get("deque_timeout_us", DEFAULT_DEQUE_TIMEOUT_US)),
            backend=str(backend) if backend is not None else None,
        )

    def label(self, deque: bool = False) -> str:
        """`batch 2, 2 stream(s), int8`; with `deque` (a Server study searches it), the deque
        timeout too, which tells apart trials that share the rest."""
        runtime = f"{self.backend}, " if self.backend is not None else ""
        text = f"{runtime}batch {self.batch_size}, {self.streams} stream(s), {self.precision}"
        return f"{text}, deque {self.deque_timeout_us} us" if deque else text


@dataclass(frozen=True)
class SearchSpace:
    batch_sizes: tuple[int, ...]
    streams: tuple[int, ...]
    precisions: tuple[str, ...]
    deque_timeout_us: tuple[int, ...] | None
    #: The runtimes searched (several), or None: the study's one backend, no `backend` param.
    backends: tuple[str, ...] | None = None
    #: (runtime, precision) pairs of the grid that the runtime cannot run.
    excluded: tuple[tuple[str, str], ...] = ()
    #: The study's one runtime where it searches one (its points name none); None: unknown.
    runtime: str | None = None

    @property
    def size(self) -> int:
        return len(self.points())

    def grid(self) -> dict[str, list[Any]]:
        grid: dict[str, list[Any]] = {}
        if self.backends:
            grid["backend"] = list(self.backends)
        grid["batch_size"] = list(self.batch_sizes)
        grid["streams"] = list(self.streams)
        grid["precision"] = list(self.precisions)
        if self.deque_timeout_us:
            grid["deque_timeout_us"] = list(self.deque_timeout_us)
        return grid

    def allows(self, point: Mapping[str, Any]) -> bool:
        """Whether the point's runtime runs its precision."""
        return (point.get("backend"), point.get("precision")) not in self.excluded

    def source(self, point: Mapping[str, Any]) -> tuple[str | None, str]:
        """The point's runtime and the precision of the ONNX file it loads there
        (harness.precision.source_precision): the points of one runtime that load one file
        fail alike where the runtime cannot read it."""
        runtime = point.get("backend") or self.runtime
        casts = runtime is not None and get_backend(runtime).casts_precision
        return runtime, source_precision(point["precision"], casts)

    def points(self) -> list[dict[str, Any]]:
        """Every point of the grid that a runtime can run, in a fixed order."""
        grid = self.grid()
        combos = itertools.product(*grid.values())
        points = [dict(zip(grid, combo, strict=True)) for combo in combos]
        return [p for p in points if self.allows(p)]

    def suggest(self, trial: optuna.Trial) -> Params:
        values = {name: trial.suggest_categorical(name, c) for name, c in self.grid().items()}
        return Params.from_mapping(values)

    def baseline(self) -> dict[str, Any]:
        point = dict(BASELINE)
        if self.backends:
            point = {"backend": self.backends[0], **point}
        if self.deque_timeout_us:
            point["deque_timeout_us"] = _closest(self.deque_timeout_us, DEFAULT_DEQUE_TIMEOUT_US)
        return point

    def screening(self) -> list[dict[str, Any]]:
        """Where the study searches several runtimes: one point per (runtime, precision) pair
        it runs, at the middle batch size and the most streams, lower precisions first, so
        that TPE and the climb start from a measured figure of every runtime and precision
        instead of drawing a few of them at random (a 60-point CPU space, 16 trials); none
        for one runtime."""
        if not self.backends:
            return []
        middle = {"batch_size": self.batch_sizes[len(self.batch_sizes) // 2]}
        middle["streams"] = self.streams[-1]
        points = [
            self.complete({"backend": backend, "precision": precision, **middle})
            for precision in reversed(self.precisions)
            for backend in self.backends
            if self.allows({"backend": backend, "precision": precision})
        ]
        return [p for p in points if p != self.baseline()]

    def server_openers(self) -> list[dict[str, Any]]:
        """A Server study that prunes opens with the configurations likeliest to set a high
        best at once, so that the Offline bound prunes from its first trials (a configuration
        of another precision whose Offline throughput lies far under that best stops there):
        one point per (runtime, precision) pair it runs, lower precisions first, at the
        smallest batch size above 1 and the most streams. A small batch keeps the wait for a
        batch short and two samples share a batch's fixed cost; every stream serves (on a
        2-vCPU EPYC, MobileNet int8 with 2 streams under p99 30 ms: batch 2 answered 414 QPS,
        batch 1 307, benchmarks/RESULTS.md)."""
        above_one = [b for b in self.batch_sizes if b > 1]
        opener = {"batch_size": above_one[0] if above_one else self.batch_sizes[0]}
        opener["streams"] = self.streams[-1]
        backends = self.backends or (None,)
        points = [
            self.complete({"precision": precision, **opener, **_named(backend)})
            for precision in reversed(self.precisions)
            for backend in backends
            if self.allows({"backend": backend, "precision": precision})
        ]
        return [p for p in points if p != self.baseline()]

    def complete(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """An enqueued point with the unset parameters filled from the baseline."""
        full = {**self.baseline(), **point}
        if not self.deque_timeout_us:
            full.pop("deque_timeout_us", None)
        if not self.backends:
            full.pop("backend", None)
        for name, choices in self.grid().items():
            if full[name] not in choices:
                raise ConfigError(
                    f"enqueue: {name}={full[name]!r} is outside the search space {choices}"
                )
        if not self.allows(full):
            raise ConfigError(
                f"enqueue: backend {full['backend']} does not run precision {full['precision']}"
            )
        return full

    def to_dict(self) -> dict[str, Any]:
        """The grid, and the excluded (runtime, precision) pairs where there are some."""
        data = self.grid()
        if self.excluded:
            data["excluded"] = [list(pair) for pair in self.excluded]
        return data

    @classmethod
    def from_dict(cls, grid: Mapping[str, Any]) -> SearchSpace:
        """The space `to_dict` wrote."""
        deque = grid.get("deque_timeout_us")
        backends = grid.get("backend")
        return cls(
            batch_sizes=tuple(int(b) for b in grid["batch_size"]),
            streams=tuple(int(s) for s in grid["streams"]),
            precisions=tuple(str(p) for p in grid["precision"]),
            deque_timeout_us=tuple(int(d) for d in deque) if deque else None,
            backends=tuple(str(b) for b in backends) if backends else None,
            excluded=tuple((str(b), str(p)) for b, p in grid.get("excluded", ())),
        )


def resolve_space(cfg: StudyConfig) -> SearchSpace:
    """The study's space; lists default to powers of two, 1..max streams, and every
    precision a runtime of the study runs on the device (each runtime proposed only with its
    own). The baseline point is always included."""
    space = cfg.space
    batch_sizes = space.batch_sizes or _powers_of_two(space.max_batch)
    streams = space.streams or tuple(range(1, space.max_streams + 1))
    runs = {name: get_backend(name).precisions(cfg.device) for name in cfg.runtimes}
    offered = tuple(sorted({p for ps in runs.values() for p in ps}, key=PRECISIONS.index))
    precisions = space.precisions or offered
    for p in precisions:
        if p not in offered:
            names = " or ".join(runs)
            notes = [get_backend(name).precision_note(p, cfg.device) for name in runs]
            note = next((f": {n}" for n in notes if n), "")
            raise ConfigError(
                f"space.precisions: {p} is not supported by backend {names} on "
                f"{cfg.device} (supported: {', '.join(offered)}){note}"
            )
    precisions = tuple(sorted({*precisions, "fp32"}, key=PRECISIONS.index))
    deque: tuple[int, ...] | None = None
    if cfg.scenario == "server":
        deque = space.deque_timeout_us or SERVER_DEQUE_TIMEOUTS_US
    several = cfg.space.backends
    excluded = tuple(
        (name, p) for name in several or () for p in precisions if p not in runs[name]
    )
    return SearchSpace(
        batch_sizes=_with(batch_sizes, 1),
        streams=_with(streams, 1),
        precisions=precisions,
        deque_timeout_us=deque,
        backends=several,
        excluded=excluded,
        runtime=None if several else cfg.backend,
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


def _named(backend: str | None) -> dict[str, str]:
    """The `backend` key of a point, where the study searches several runtimes."""
    return {"backend": backend} if backend is not None else {}

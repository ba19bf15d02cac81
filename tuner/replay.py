"""Replayed trials: answer a trial from a recorded landscape (`benchmarks/landscape.py`) instead
of running the harness, so the tuner's own study code (samplers, duplicate reuse, confirmation)
runs hundreds of times in minutes (`benchmarks/tuner_efficiency.py`).

Each answer is one of the configuration's recorded repeats, drawn at random: the landscape's own
noise, nothing invented. A landscape recorded in several sessions (a file resumed hours later,
each repeat tagged with its `session`) can hold a drift between them that no study sees: a
study takes minutes. With `noise="session"` (the default) a replayed study draws from one
session, picked by its seed; `noise="all"` draws from every repeat. Results are marked
`simulated` and their device `(replayed)`. The `replay` backend (harness/backends/replay.py)
is the other half: it replays a landscape's latencies through the real SUT and LoadGen, for
the Server search benchmark.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.backends.replay import read_landscape, session_of
from harness.config import RunConfig, ScenarioSpec
from harness.errors import ConfigError
from harness.scenarios import prune
from harness.scenarios.prune import Pruned
from tuner.child import ChildOutcome

#: A configuration as a landscape point names it: (precision, batch_size, streams, deque_us);
#: deque_us is None in landscapes whose space has no deque timeouts (Offline).
Key = tuple[str, int, int, int | None]


#: How a replay draws its noise: from one recording session per study, or from every repeat.
NOISE = ("session", "all")


class LandscapeReplay:
    """A `tuner.study.Measure` answering from `path`; `seed` drives the draws (and, with
    `noise="session"`, which recording session this replay draws from)."""

    def __init__(self, path: Path, seed: int = 0, noise: str = "session") -> None:
        if noise not in NOISE:
            raise ConfigError(f"replay: noise must be one of {', '.join(NOISE)}, got {noise!r}")
        self.path = Path(path)
        self.data = read_landscape(self.path)
        self.offline = self.data.get("scenario") == "offline"
        self.deque = "deque_timeout_us" in (self.data.get("space") or {})
        self.repeats: dict[Key, list[dict[str, Any]]] = {}
        for point in self.data["points"]:
            recorded = [r for r in point.get("repeats", []) if isinstance(r, dict)]
            if recorded:
                self.repeats[self.key(point["params"])] = recorded
        if not self.repeats:
            raise ConfigError(f"replay: landscape {self.path} has no recorded repeats")
        self._rng = random.Random(seed)
        #: The recording sessions of the landscape's repeats, and the one this replay draws
        #: from (None: every repeat).
        self.sessions = sorted({session_of(r) for found in self.repeats.values() for r in found})
        self.session = self._rng.choice(self.sessions) if noise == "session" else None
        #: (precision, batch size) of every engine a replayed trial has "built", and the
        #: number of measurements answered.
        self.engines: set[tuple[str, int]] = set()
        self.calls = 0
        #: The recorded seconds of every repeat drawn: what the measurements would have taken
        #: (less the LoadGen runs a pruned one skipped).
        self.seconds = 0.0
        #: The LoadGen seconds of the runs those measurements made (`run_seconds`), and the
        #: measurements pruned.
        self.loadgen_s = 0.0
        self.pruned = 0

    def key(self, params: Mapping[str, Any]) -> Key:
        deque = params.get("deque_timeout_us") if self.deque else None
        return (
            str(params["precision"]),
            int(params["batch_size"]),
            int(params["streams"]),
            None if deque is None else int(deque),
        )

    def truth(self, params: Mapping[str, Any], accuracy_floor: float = 0.0) -> float:
        """The configuration's true objective: the median over its recorded repeats of what a
        trial would score (0 for a failed or INVALID repeat, or one below the accuracy floor)."""
        found = self.repeats.get(self.key(params))
        if not found:
            raise ConfigError(f"replay: {dict(params)} is not in landscape {self.path}")
        return statistics.median(objective(r, accuracy_floor) for r in found)

    def best(self, accuracy_floor: float = 0.0) -> tuple[Key, float]:
        """The landscape's true best configuration and its value."""
        values = {k: self.truth(params_of(k), accuracy_floor) for k in self.repeats}
        key = max(values, key=lambda k: values[k])
        return key, values[key]

    def draw(self, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """One measurement of `params` outside a study (the benchmarks' peer strategies): a
        recorded repeat drawn as a replayed trial draws it, counted in `calls` and `engines`;
        None when the configuration is not in the landscape (a failed run)."""
        self.calls += 1
        found = self.repeats.get(self.key(params))
        if not found:
            return None
        repeat = self._rng.choice(drawable(found, self.session))
        self.seconds += float(repeat.get("seconds") or 0.0)
        if "score" in repeat:
            self.engines.add((str(params["precision"]), int(params["batch_size"])))
        return repeat

    def __call__(self, run: RunConfig, spec: ScenarioSpec, timeout_s: float) -> ChildOutcome:
        self.calls += 1
        params = {
            "precision": run.precision,
            "batch_size": run.batch_size,
            "streams": run.streams,
            "deque_timeout_us": run.deque_timeout_us,
        }
        found = self.repeats.get(self.key(params))
        if not found:
            return ChildOutcome(None, "error", f"not in landscape {self.path.name}: {params}")
        repeat = self._rng.choice(drawable(found, self.session))
        seconds = float(repeat.get("seconds") or 0.0)
        self.seconds += seconds
        if "score" not in repeat:
            failure = str(repeat.get("failure") or "error")
            return ChildOutcome(None, failure, str(repeat.get("reason", "")), seconds)
        engine = (run.precision, run.batch_size)
        cached = engine in self.engines
        self.engines.add(engine)
        runs = list(repeat.get("loadgen_runs") or ())
        pruned, kept = self._pruned(repeat, runs, spec.prune_below)
        skipped = sum(self.run_seconds(r) for r in runs[kept:])
        self.loadgen_s += sum(self.run_seconds(r) for r in runs[:kept])
        result = self._result(repeat, run, cached)
        if pruned is not None:
            self.pruned += 1
            self.seconds -= min(skipped, seconds)
            seconds -= min(skipped, seconds)
            result.update(score=0.0, valid=False, note=pruned.reason, pruned=pruned.to_dict())
        return ChildOutcome(result, seconds=seconds)

    def _pruned(
        self, repeat: Mapping[str, Any], runs: list[Mapping[str, Any]], best: float | None
    ) -> tuple[Pruned | None, int]:
        """Whether the harness would have pruned this recorded measurement below `best`, and
        how many of its LoadGen runs it would have made: the bounds in the harness's order
        (harness.scenarios.measure), an Offline measurement's warm-up estimate, a Server
        search's first Offline run and queueing-model guess, which the first Server probe
        stands for (it is that guess, within the search's range)."""
        if self.offline:
            warm = _rate(repeat, "warmup_samples_per_second")
            found = prune.check("warm-up estimate", warm, best)
            return found, 0 if found is not None else len(runs)
        offline = [i for i, r in enumerate(runs) if r.get("scenario") == "Offline"]
        if offline and runs[offline[0]].get("valid"):
            upper = _rate(runs[offline[0]], "samples_per_second")
            found = prune.check("Offline throughput", upper, best)
            if found is not None:
                return found, offline[0] + 1
            first = next((r for r in runs if r.get("scenario") == "Server"), None)
            if first is not None:
                found = prune.check("queueing model", _rate(first, "target_qps"), best)
                if found is not None:
                    return found, offline[0] + 1
        return None, len(runs)

    def run_seconds(self, run: Mapping[str, Any]) -> float:
        """A recorded run's LoadGen seconds, as the landscape's settings make them (its logs
        are not kept): a Server run lasts its minimum duration or its minimum query count at
        its target, an Offline run its minimum duration."""
        duration = float(self.data.get("duration_s") or 0.0)
        if run.get("scenario") != "Server":
            return duration
        queries = float(self.data.get("min_queries") or 0)
        target = _rate(run, "target_qps")
        return max(duration, queries / target) if target > 0 else duration

    def _result(self, repeat: Mapping[str, Any], run: RunConfig, cached: bool) -> dict[str, Any]:
        """A `harness.result.Result.to_dict()`-shaped record of one recorded repeat."""
        score = float(repeat["score"])
        top1 = repeat.get("agreement_top1")
        return {
            "score": score,
            "valid": bool(repeat["valid"]),
            "samples_per_second": score if self.offline else None,
            "qps": None if self.offline else score,
            "latency_ms": {"p50": repeat.get("p50_ms"), "p99": repeat.get("p99_ms")},
            "loadgen_runs": [],
            "engine_build_s": 0.0 if cached else float(repeat.get("engine_build_s") or 0.0),
            "warmup": {"batch_ms": repeat.get("warmup_batch_ms")},
            "device": f"{self.data.get('device', 'unknown device')} (replayed)",
            "backend": "replay",
            "versions": dict(self.data.get("versions") or {}),
            "simulated": True,
            "variant_sha256": None,
            "variant_path": None,
            "variant_build_s": 0.0,
            "engine_cached": cached,
            "note": f"replayed from {self.path.name}",
            "agreement": {"top1": top1} if top1 is not None else None,
            "precision": run.precision,
            "batch_size": run.batch_size,
            "streams": run.streams,
        }


def _rate(record: Mapping[str, Any], key: str) -> float:
    value = record.get(key)
    return float(value) if isinstance(value, (int, float)) else 0.0


def objective(repeat: Mapping[str, Any], accuracy_floor: float) -> float:
    """What a trial answered by this recorded repeat scores: 0 when it failed, was INVALID or
    fell below the accuracy floor."""
    if "score" not in repeat or not repeat.get("valid"):
        return 0.0
    top1 = repeat.get("agreement_top1")
    if top1 is not None and top1 < accuracy_floor:
        return 0.0
    return float(repeat["score"])


def drawable(found: list[dict[str, Any]], session: int | None) -> list[dict[str, Any]]:
    """The repeats of one configuration a draw picks from: those of `session`, or all of them
    where it has none in that session (or `session` is None: draw from all)."""
    if session is None:
        return found
    return [r for r in found if session_of(r) == session] or found


def params_of(key: Key) -> dict[str, Any]:
    precision, batch, streams, deque = key
    return {
        "precision": precision,
        "batch_size": batch,
        "streams": streams,
        "deque_timeout_us": deque,
    }

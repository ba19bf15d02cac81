"""A simulated backend that replays a recorded landscape (`benchmarks/landscape.py`): a batch
sleeps for the latency recorded for this configuration, jittered by the recorded repeats' spread,
times the `time_scale` option (default 1.0; e.g. 0.1 runs a landscape ten times faster). The
`session` option keeps to the repeats of one recording session of a resumed landscape (each
repeat's `session`, 0 where untagged); by default every repeat counts.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.backends.base import Backend, BackendInfo, BackendOptions
from harness.config import PRECISIONS
from harness.errors import ConfigError

#: A configuration as the landscape keys it: (precision, batch_size, streams).
Key = tuple[str, int, int]


@dataclass(frozen=True)
class Replay:
    """One configuration's latency model: the recorded full-batch median, the fitted cost
    `fixed + per_sample * n` of n samples (only its shape is used), and the noise."""

    batch_s: float
    fixed: float
    per_sample: float
    #: Relative standard deviation of the repeats, and the bounds of their ratio to the median.
    noise_sd: float
    noise_low: float
    noise_high: float

    def seconds(self, n: int, full: int, rng: np.random.Generator) -> float:
        """A batch of `n` samples of a `full`-sample configuration, with one noise draw."""
        share = (self.fixed + self.per_sample * n) / (self.fixed + self.per_sample * full)
        factor = 1.0
        if self.noise_sd > 0:
            factor = 1.0 + self.noise_sd * float(rng.standard_normal())
            factor = min(max(factor, self.noise_low), self.noise_high)
        return self.batch_s * share * factor


class ReplayBackend(Backend):
    """Sleeps for the latency a landscape recorded; never reads the model file. Streams sleep
    concurrently: a latency recorded with several streams already holds their contention."""

    name: ClassVar[str] = "replay"
    option_names: ClassVar[tuple[str, ...]] = ("landscape", "seed", "time_scale", "session")

    def __init__(self, model_path: Path, options: BackendOptions) -> None:
        super().__init__(model_path, options)
        landscape = options.extra.get("landscape")
        if not isinstance(landscape, (str, Path)) or not str(landscape):
            raise ConfigError(
                "backend replay: the landscape option must name a landscape JSON file "
                f"(benchmarks/landscape.py), got {landscape!r}"
            )
        seed = options.extra.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"backend replay: seed must be an integer >= 0, got {seed!r}")
        time_scale = options.extra.get("time_scale", 1.0)
        if not _positive(time_scale) or not math.isfinite(time_scale):
            raise ConfigError(
                f"backend replay: time_scale must be a number > 0, got {time_scale!r}"
            )
        session = options.extra.get("session")
        if session is not None and (
            isinstance(session, bool) or not isinstance(session, int) or session < 0
        ):
            raise ConfigError(f"backend replay: session must be an integer >= 0, got {session!r}")
        self.landscape = Path(landscape)
        self._seed = seed
        #: The recording session whose repeats are replayed (None: all of them).
        self.session: int | None = session
        #: Every replayed latency is multiplied by this.
        self.time_scale = float(time_scale)
        self._data: dict[str, Any] | None = None
        self.replay: Replay | None = None
        self._rngs: list[np.random.Generator] = []
        self._output = np.zeros((0, 1), np.float32)
        self._lock = threading.Lock()

    @classmethod
    def precisions(cls, device: str) -> tuple[str, ...]:
        """Any precision: whether the landscape recorded it is checked by `load()`."""
        return PRECISIONS

    def _read(self) -> dict[str, Any]:
        with self._lock:
            if self._data is None:
                self._data = read_landscape(self.landscape)
            return self._data

    def load(self) -> None:
        options = self.options
        key = (options.precision, options.max_batch, options.streams)
        self.replay = replay_model(self._read(), key, str(self.landscape), self.session)
        self._rngs = [np.random.default_rng([self._seed, s]) for s in range(options.streams)]
        self._output = np.zeros((options.max_batch, 1), np.float32)

    def batch_seconds(self, n: int, stream: int = 0) -> float:
        """The replayed time of a batch of `n` samples (with noise drawn for `stream`), times
        the time scale."""
        if self.replay is None:
            raise ConfigError("backend replay: infer() before load()")
        seconds = self.replay.seconds(n, self.options.max_batch, self._rngs[stream])
        return seconds * self.time_scale

    def _infer(self, inputs: Mapping[str, np.ndarray], stream: int) -> list[np.ndarray]:
        n = len(next(iter(inputs.values())))
        seconds = self.batch_seconds(n, stream)
        if seconds > 0:
            time.sleep(seconds)
        if n > len(self._output):
            return [np.zeros((n, 1), np.float32)]
        return [self._output[:n]]

    def close(self) -> None:
        self._rngs = []

    def info(self) -> BackendInfo:
        device = str(self._read().get("device") or "unknown device")
        return BackendInfo(
            backend=self.name,
            device=f"{device} (replayed)",
            versions={"replay": "1"},
            simulated=True,
            details={"replayed": str(self.landscape)},
        )


def read_landscape(path: Path) -> dict[str, Any]:
    """The landscape file's JSON object, or a ConfigError naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"backend replay: cannot read landscape {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise ConfigError(f"backend replay: {path} is not a landscape (no 'points' list)")
    return data


def session_of(repeat: Mapping[str, Any]) -> int:
    """The recording session of a landscape repeat (0 where the landscape does not say)."""
    return int(repeat.get("session") or 0)


def recorded_latencies(
    data: Mapping[str, Any], session: int | None = None
) -> dict[Key, list[float]]:
    """Every configuration's recorded full-batch latencies (seconds), repeats of points that
    differ only in deque timeout pooled (only those of recording `session`, when given). Each
    is the warm-up's median batch latency, or for an Offline repeat without one,
    streams x batch / score (which includes harness overhead)."""
    offline = data.get("scenario") == "offline"
    found: dict[Key, list[float]] = {}
    for point in data["points"]:
        params = point.get("params", {})
        try:
            key = (str(params["precision"]), int(params["batch_size"]), int(params["streams"]))
        except (KeyError, TypeError, ValueError):
            continue
        latencies = found.setdefault(key, [])
        for repeat in point.get("repeats", []):
            if session is not None and session_of(repeat) != session:
                continue
            batch_ms = repeat.get("warmup_batch_ms")
            score = repeat.get("score")
            if _positive(batch_ms):
                latencies.append(float(batch_ms) / 1000.0)
            elif offline and _positive(score):
                latencies.append(key[2] * key[1] / float(score))
    return found


def replay_model(
    data: Mapping[str, Any], key: Key, where: str, session: int | None = None
) -> Replay:
    """The latency model of configuration `key` (from recording `session`'s repeats, when
    given), or a ConfigError naming it."""
    found = recorded_latencies(data, session)
    precision, batch, streams = key
    if not found.get(key):
        recorded = sorted(k for k, v in found.items() if v)
        raise ConfigError(
            f"backend replay: precision={precision} batch_size={batch} streams={streams} has "
            f"no recorded latency in landscape {where} (recorded: "
            f"{', '.join(f'{p}/b{b}/s{s}' for p, b, s in recorded) or 'none'})"
        )
    latencies = np.asarray(found[key])
    median = float(np.median(latencies))
    ratios = latencies / median
    sizes = sorted(b for p, b, s in found if p == precision and s == streams and found[p, b, s])
    fixed, per_sample = 0.0, 1.0  # proportional with a single recorded batch size
    if len(sizes) >= 2:
        medians = [float(np.median(found[precision, b, streams])) for b in sizes]
        per_sample, fixed = (float(v) for v in np.polyfit(sizes, medians, 1))
        if per_sample <= 0:  # noise hides any growth: every batch costs the same
            fixed, per_sample = 1.0, 0.0
        elif fixed < 0:
            fixed = 0.0
    return Replay(
        batch_s=median,
        fixed=fixed,
        per_sample=per_sample,
        noise_sd=float(np.std(ratios, ddof=1)) if len(ratios) > 1 else 0.0,
        noise_low=float(ratios.min()),
        noise_high=float(ratios.max()),
    )


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0

"""What a scenario module returns: the score, its validity and every LoadGen run made."""

from __future__ import annotations

from dataclasses import dataclass

from harness.loadgen_log import LoadgenRun
from harness.scenarios.prune import Pruned


@dataclass(frozen=True)
class Outcome:
    """`score` is Offline samples/s or Server QPS; `primary` is the run it comes from;
    `pruned` says why the measurement stopped early (then `valid` is False and `score` 0)."""

    valid: bool
    score: float
    primary: LoadgenRun | None
    runs: tuple[LoadgenRun, ...]
    note: str = ""
    pruned: Pruned | None = None

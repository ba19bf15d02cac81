"""What a scenario module returns: the score, its validity and every LoadGen run made."""

from __future__ import annotations

from dataclasses import dataclass

from harness.loadgen_log import LoadgenRun


@dataclass(frozen=True)
class Outcome:
    """`score` is Offline samples/s or Server QPS; `primary` is the run it comes from."""

    valid: bool
    score: float
    primary: LoadgenRun | None
    runs: tuple[LoadgenRun, ...]
    note: str = ""

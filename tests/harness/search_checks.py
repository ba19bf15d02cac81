"""What every max-QPS search must satisfy, for LoadgenRun objects or their JSON dicts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _get(run: Any, key: str) -> Any:
    return run[key] if isinstance(run, dict) else getattr(run, key)


def answer_runs(runs: Sequence[Any]) -> list[Any]:
    """The runs at the search's answer: the largest target below every INVALID run's whose
    every run was VALID."""
    servers = [r for r in runs if _get(r, "scenario") == "Server"]
    lowest_invalid = min(
        (_get(r, "target_qps") for r in servers if not _get(r, "valid")), default=math.inf
    )
    by_target: dict[float, list[Any]] = {}
    for run in servers:
        by_target.setdefault(_get(run, "target_qps"), []).append(run)
    passing = [
        t
        for t, rs in by_target.items()
        if t < lowest_invalid and all(_get(r, "valid") for r in rs)
    ]
    return by_target[max(passing)] if passing else []


def check_answer(runs: Sequence[Any], score: float, confirmed: bool = True, need: int = 2) -> None:
    """The score is the answer's lowest scheduled QPS; a converged search ran it `need` times
    (the spec's answer_runs)."""
    answer = answer_runs(runs)
    assert answer, "no VALID target below every INVALID one"
    assert score == min(_get(r, "scheduled_qps") for r in answer)
    if confirmed:
        assert len(answer) >= need, f"the answer was run {len(answer)} time(s), not {need}"

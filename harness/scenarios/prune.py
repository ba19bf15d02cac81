"""Pruning: a measurement stops as soon as a bound on its score shows that it cannot reach the
score it must beat (`ScenarioSpec.prune_below`, the study's best so far), instead of measuring
in full a configuration that cannot win.

Each bound comes with a noise margin: the measurement is pruned only when the bound, raised by
its margin, still falls short. The margins come from the recorded landscapes
(benchmarks/landscapes, 692 Offline readings with their warm-ups, 20 Server searches):

- the warm-up's estimate (0.5 s, all streams) against the Offline run that follows it: the
  run read up to 1.95x the estimate (a stall during the warm-up; 1% of readings over 1.5x),
  so an estimate is a bound only doubled: WARMUP_MARGIN 1.0 (a score "far under the best").
  It prunes Offline measurements only: a Server search runs its Offline run first, a bound
  for sure and cheap beside the search;
- the Offline throughput against the Server search that follows it: every recorded answer lay
  at 0.30-0.82x the trial's own Offline reading (the search never probes over it), and a reading
  can itself fall under its configuration's figure (4% of repeated readings fell over 22%
  under their median, 1.2% over 40%): OFFLINE_MARGIN 0.5, so a wrong prune needs a reading
  60% or less of the configuration's own;
- the queueing model's first guess (from the warm-up's batch latencies and the Offline bound)
  against the answer: answers lay at 0.82-1.19x the first probe: MODEL_MARGIN 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WARMUP_MARGIN = 1.0
OFFLINE_MARGIN = 0.5
MODEL_MARGIN = 0.5

#: Bound name -> its margin, in the order a measurement meets them.
MARGINS = {
    "warm-up estimate": WARMUP_MARGIN,
    "Offline throughput": OFFLINE_MARGIN,
    "queueing model": MODEL_MARGIN,
}


@dataclass(frozen=True)
class Pruned:
    """Why a measurement stopped: the `bound` it reached (`value`, in the scenario's unit), the
    `margin` it was raised by, and the `best` it could not reach."""

    bound: str
    value: float
    margin: float
    best: float

    @property
    def reason(self) -> str:
        """`pruned: its Offline throughput, 218.6 (+50% margin: 327.9), cannot reach the
        study's best, 372.1`."""
        reach = self.value * (1 + self.margin)
        return (
            f"pruned: its {self.bound}, {self.value:,.1f} (+{self.margin:.0%} margin: "
            f"{reach:,.1f}), cannot reach the study's best, {self.best:,.1f}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "bound": self.bound,
            "value": round(self.value, 4),
            "margin": self.margin,
            "best": round(self.best, 4),
        }


def check(bound: str, value: float, best: float | None) -> Pruned | None:
    """A `Pruned` when `value` (the bound named `bound`, a key of MARGINS) raised by its margin
    is under `best`; None when there is no best to beat, no bound (`value` not positive: not
    measured) or the bound may still reach it."""
    margin = MARGINS[bound]
    if best is None or not best > 0 or not value > 0 or value * (1 + margin) >= best:
        return None
    return Pruned(bound, value, margin, best)

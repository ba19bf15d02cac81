"""Where a study's time went: each `optimize` run appends a session to the study (the study
attribute `sessions`): its wall time, how many processes measured, and the seconds spent inside
LoadGen runs (the measured spans LoadGen logs: `duration_s` of each run), for its trials and its
confirmation runs. The measuring share is LoadGen seconds over wall seconds times processes:
what is left is starting processes, loading models, checking agreement, warming up and
bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.child import ChildOutcome
from tuner.lifetime import Owner
from tuner.loop import OWNER
from tuner.results import TrialRecord, is_copy

#: Study attribute: the list of sessions, oldest first.
SESSIONS = "sessions"
#: Sessions kept per study (the oldest are dropped; a study resumed hundreds of times).
KEEP = 100


@dataclass(frozen=True)
class Session:
    """One `optimize` run on a study."""

    started: str  # ISO 8601, UTC
    wall_s: float
    #: Processes measuring at once (--workers N, one per GPU with --gpus; 1 otherwise).
    processes: int
    trials: int
    trials_measuring_s: float
    confirm_runs: int
    confirm_measuring_s: float

    @property
    def measuring_s(self) -> float:
        return self.trials_measuring_s + self.confirm_measuring_s

    @property
    def share(self) -> float | None:
        capacity = self.wall_s * self.processes
        return self.measuring_s / capacity if capacity > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"measuring_s": self.measuring_s, "measuring_share": self.share}


def loadgen_seconds(runs: Iterable[Mapping[str, Any]] | None) -> float:
    """Seconds inside LoadGen runs: the sum of their logged measured spans."""
    return sum(float(r.get("duration_s") or 0.0) for r in runs or ())


def outcome_seconds(outcome: ChildOutcome) -> float:
    """LoadGen seconds of one measurement (0 when it failed)."""
    return loadgen_seconds((outcome.result or {}).get("loadgen_runs"))


def trials_since(
    study: optuna.Study, started: datetime, owner: Owner | None = None
) -> list[FrozenTrial]:
    """The trials measured (not copied) that finished at or after `started`; with `owner`,
    only those that process measured (a queue worker's share of a study others serve too)."""
    return [
        t
        for t in study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        )
        if t.datetime_complete is not None
        and t.datetime_complete >= started
        and not is_copy(t)
        and (owner is None or owner.same_process(Owner.from_dict(t.user_attrs.get(OWNER))))
    ]


def session_of(
    study: optuna.Study,
    started: datetime,
    wall_s: float,
    processes: int,
    confirm: Sequence[ChildOutcome],
    owner: Owner | None = None,
) -> Session:
    """The session that began at `started` (local naive time, as Optuna stores trials' times);
    with `owner`, of that process's trials only."""
    trials = trials_since(study, started, owner)
    return Session(
        started=started.astimezone().isoformat(timespec="seconds"),
        wall_s=round(wall_s, 2),
        processes=processes,
        trials=len(trials),
        trials_measuring_s=round(
            sum(loadgen_seconds(TrialRecord.from_trial(t).loadgen_runs) for t in trials), 2
        ),
        confirm_runs=len(confirm),
        confirm_measuring_s=round(sum(outcome_seconds(o) for o in confirm), 2),
    )


def store(study: optuna.Study, session: Session) -> None:
    kept = [*study.user_attrs.get(SESSIONS, []), session.to_dict()][-KEEP:]
    study.set_user_attr(SESSIONS, kept)


def sessions(attrs: Mapping[str, Any]) -> list[Session]:
    names = Session.__dataclass_fields__
    return [
        Session(**{k: v for k, v in s.items() if k in names}) for s in attrs.get(SESSIONS) or ()
    ]


def measuring_share(attrs: Mapping[str, Any]) -> float | None:
    """The share of all sessions' capacity (wall time x processes) spent in LoadGen runs."""
    recorded = sessions(attrs)
    capacity = sum(s.wall_s * s.processes for s in recorded)
    return sum(s.measuring_s for s in recorded) / capacity if capacity > 0 else None


def measuring_line(attrs: Mapping[str, Any]) -> str:
    """`measuring share: 69% (52.5 s inside LoadGen runs of 76 s, 2 sessions)`."""
    recorded = sessions(attrs)
    share = measuring_share(attrs)
    if not recorded or share is None:
        return "measuring share: not recorded (a study run before sessions were kept)"
    capacity = sum(s.wall_s * s.processes for s in recorded)
    measured = sum(s.measuring_s for s in recorded)
    count = f"{len(recorded)} session{'' if len(recorded) == 1 else 's'}"
    return (
        f"measuring share: {share:.0%} ({measured:.1f} s inside LoadGen runs of {capacity:.0f} s"
        f" of process time, {count})"
    )


def share_line(session: Session) -> str:
    """The summary's line on this `optimize` run."""
    if not session.trials and not session.confirm_runs:
        return "measuring share: nothing measured in this run"
    share = session.share
    percent = "n/a" if share is None else f"{share:.0%}"
    confirm = f", {session.confirm_runs} confirmation run(s)" if session.confirm_runs else ""
    where = f" x {session.processes} processes" if session.processes > 1 else ""
    return (
        f"measuring share: {percent} of {session.wall_s:.0f} s{where} inside LoadGen runs "
        f"({session.measuring_s:.1f} s; {session.trials} trial(s){confirm})"
    )

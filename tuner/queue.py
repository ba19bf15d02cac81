"""The tuner as a service: studies submitted to a queue, workers on any host serving it.

`submit` checks a study as `optimize` does, stores its model (with external weights) and
`--data` in the artifact store (tuner.artifacts), creates the study with its starting points
and marks it queued (the `queue` study attribute, written last: a study is served only once
everything it needs is stored). `serve` is a worker without `--study`: it takes the oldest
unfinished queued study it can run (every runtime it searches installed here and naming the
study's device), fetches its files by hash, runs its trials with the guarantees every worker
has (exact budget, kills recovered: tuner.loop), uploads each trial's LoadGen logs to the
store, and whichever worker ends the last trial confirms the best and writes the summary.
Then the next study; with nothing left it waits, backing off, or with `once` returns.

A study's state is read from the database alone (`state_of`): queued, running (trials RUNNING,
done of budget), confirming, done, failed (with the reason a worker stored: a file altered in
the store, a model that no longer loads), cancelled (`cancel`: no new trials handed out, the
running ones finish).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.backends import BackendOptions, get_backend
from harness.errors import ConfigError, TunerError
from harness.models import BUILTIN_MODELS, resolve_model
from harness.models.inspect import external_files
from tuner import artifacts
from tuner import optuna_compat as compat
from tuner.artifacts import StoredFile
from tuner.child import ChildOutcome
from tuner.config import StudyConfig, from_stored
from tuner.confirm import CONFIRMED_AT, confirm
from tuner.lifetime import this_process
from tuner.loop import budget_used, committed, exclusive
from tuner.pipeline import metered
from tuner.results import TrialRecord
from tuner.sessions import session_of
from tuner.sessions import store as store_session
from tuner.storage import HEARTBEAT_S, MAX_WAIT_S, MIN_WAIT_S, open_storage
from tuner.study import Measure, Prepared, join, load, prepare, work
from tuner.summary import render_summary

#: The study attribute that makes a study part of the queue (see module docstring).
QUEUE = "queue"
CANCELLED_AT = "cancelled_at"
FAILED = "queue_failed"
FINISHED_AT = "finished_at"
SUMMARY = "summary"


@dataclass(frozen=True)
class Submission:
    """What `submit` made: the study's name and the files it stored (new or already there)."""

    study: str
    files: int
    stored_bytes: int


def submit(cfg: StudyConfig, store_at: str | None, device: str | None = None) -> Submission:
    """Check `cfg` as `optimize` does, store its files, create the study and queue it.

    `store_at` is --artifacts (None: $TUNER_ARTIFACTS, else beside an SQLite database);
    `device` names the device class the study is for (None: this host's, as `optimize`)."""
    where = artifacts.location(store_at, cfg.storage)
    store = artifacts.open_store(where, create=True)
    model = resolve_model(cfg.model, cfg.cache_dir, cfg.dims, cfg.shapes)
    model_files: list[StoredFile] = []
    if cfg.model not in BUILTIN_MODELS:  # a built-in name wins over a file of that name
        paths = [model.path, *external_files(model.path)]
        model_files = artifacts.put_set(store, paths, model.path.parent)
    data_files: list[StoredFile] = []
    data_name = None
    if cfg.data_dir is not None:
        data = Path(cfg.data_dir).expanduser()
        if data.is_file():
            data_files, data_name = [artifacts.put(store, data, data.name)], data.name
        else:
            found = sorted(p for p in data.rglob("*") if p.suffix in (".npy", ".npz"))
            if not found:
                raise ConfigError(f"--data: {data} holds no .npy or .npz files")
            data_files = artifacts.put_set(store, found, data)
    prepared = prepare(cfg, device=device)  # the same checks as optimize; creates the study
    study = prepared.study
    if QUEUE in study.user_attrs:
        raise ConfigError(
            f"study {study.study_name!r} is already in the queue (see `python -m tuner "
            "studies`); name another with --study"
        )
    artifacts.record(study, [*model_files, *data_files])
    queued = {
        "submitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "artifacts": where,
        "model": {"file": model.path.name, "files": [f.to_dict() for f in model_files]},
        "data": {"file": data_name, "files": [f.to_dict() for f in data_files]},
    }
    study.set_user_attr(QUEUE, queued)  # last: from now on workers may take it
    files = [*model_files, *data_files]
    return Submission(study.study_name, len(files), sum(f.size for f in files))


def cancel(storage: str, name: str) -> str:
    """Stop handing out the study's trials (running ones finish); mark it cancelled."""
    study = load(storage, name)
    if FINISHED_AT in study.user_attrs:
        raise ConfigError(f"study {name!r} is done already; nothing to cancel")
    if CANCELLED_AT not in study.user_attrs:
        study.set_user_attr(CANCELLED_AT, datetime.now(UTC).isoformat(timespec="seconds"))
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return f"study {name} cancelled" + (f"; {running} running trial(s) finish" if running else "")


@dataclass(frozen=True)
class State:
    """A study's state and what to say of it (`running`: `2 workers, 5 of 12 trials`)."""

    name: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.name} ({self.detail})" if self.detail else self.name


def state_of(study: optuna.Study) -> State:
    """The study's state, read from the database (see the module docstring)."""
    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    cfg = attrs.get("config") or {}
    budget = cfg.get("trials") if isinstance(cfg, dict) else None
    done = budget_used(study)
    of = f"{done} of {budget} trials" if budget else f"{done} trials"
    if FAILED in attrs:
        return State("failed", str(attrs[FAILED]))
    if CANCELLED_AT in attrs:
        return State("cancelled", f"{of}, {running} running" if running else of)
    if FINISHED_AT in attrs or (QUEUE not in attrs and CONFIRMED_AT in attrs):
        return State("done", of)
    if running:
        return State("running", f"{running} worker(s), {of}")
    if budget and done >= budget:
        return State("confirming" if QUEUE in attrs else "done", of)
    if QUEUE in attrs and not trials_measured(trials):
        return State("queued", f"submitted {attrs[QUEUE].get('submitted_at', '?')}")
    return State("running" if QUEUE in attrs else "stopped", of)


def trials_measured(trials: list[FrozenTrial]) -> bool:
    return any(t.state != TrialState.WAITING for t in trials)


# ----------------------------------------------------------------------------- serving


@dataclass(frozen=True)
class Local:
    """This worker's own settings: its artifact store override, cache and runs folders, the
    trial timeout (None: the study's), heartbeat and how it measures."""

    cache_dir: Path
    runs_dir: Path | None = None
    trial_timeout_s: float | None = None
    artifacts: str | None = None
    heartbeat_s: int = HEARTBEAT_S
    measure: Measure | None = None


def serve(
    storage: str,
    local: Local,
    say: Callable[[str], None],
    once: bool = False,
    owner: str = "worker",
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Serve the queue: run the oldest study this worker can run, then the next; with nothing
    left return (`once`) or wait, backing off from MIN_WAIT_S to MAX_WAIT_S. Returns the
    number of trials run here."""
    ran = 0
    wait = MIN_WAIT_S
    said_idle = False
    skipped: dict[str, str] = {}
    while True:
        name = next_study(storage, local, skipped, say)
        if name is None:
            if once:
                return ran
            if not said_idle:
                say(f"nothing in the queue this worker can run; waiting (up to {MAX_WAIT_S:g} s)")
                said_idle = True
            sleep(wait)
            wait = min(wait * 2, MAX_WAIT_S)
            skipped.clear()  # a device or runtime may have changed: look again
            continue
        wait, said_idle = MIN_WAIT_S, False
        ran += run_queued(storage, name, local, say, owner)


def next_study(
    storage: str, local: Local, skipped: dict[str, str], say: Callable[[str], None]
) -> str | None:
    """The oldest queued, unfinished study this worker can run whose budget still has trials
    to hand out; else the oldest whose trials are all handed out but not finished (to wait
    for them, retry one whose worker died, and confirm); None if neither. Studies it cannot
    run are remembered in `skipped` (with why, said once)."""
    store = open_storage(storage, create=False)
    summaries = [
        s
        for s in optuna.get_all_study_summaries(store, include_best_trial=False)
        if isinstance(s.user_attrs.get(QUEUE), dict)
    ]
    summaries.sort(key=lambda s: str(s.user_attrs[QUEUE].get("submitted_at", "")))
    handed_out: list[str] = []
    for summary in summaries:
        attrs = summary.user_attrs
        name = summary.study_name
        if name in skipped or any(k in attrs for k in (CANCELLED_AT, FAILED, FINISHED_AT)):
            continue
        why = why_not_here(attrs, local)
        if why is not None:
            skipped[name] = why
            say(f"study {name}: skipped, {why}")
            continue
        study = optuna.load_study(study_name=name, storage=store)
        budget = (attrs.get("config") or {}).get("trials")
        if isinstance(budget, int) and committed(study) >= budget:
            handed_out.append(name)
            continue
        return name
    return handed_out[0] if handed_out else None


def why_not_here(attrs: Mapping[str, Any], local: Local) -> str | None:
    """Why this worker cannot run a study (a runtime not installed, another device), or None."""
    stored = attrs.get("config")
    if not isinstance(stored, dict):
        return "it has no stored configuration"
    try:
        cfg = from_stored(stored, cache_dir=local.cache_dir)
    except (TunerError, TypeError, ValueError) as exc:
        return f"its stored configuration does not load here ({_first_line(exc)})"
    for runtime in cfg.runtimes:
        try:
            options = BackendOptions(device=cfg.device, extra=cfg.backend_options_for(runtime))
            info = get_backend(runtime)(Path("probe.onnx"), options).info()
        except (TunerError, OSError, ImportError) as exc:
            return f"runtime {runtime} cannot run here ({_first_line(exc)})"
        if info.device != attrs.get("device"):
            return f"it is for {attrs.get('device')!r}, this worker's device is {info.device!r}"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def run_queued(
    storage: str, name: str, local: Local, say: Callable[[str], None], owner: str
) -> int:
    """Run a queued study's trials here, then (once its budget is spent) confirm it and write
    its summary; returns the trials run here. A study whose files cannot be fetched intact or
    whose model does not load is marked failed with the reason."""
    study = load(storage, name, local.heartbeat_s)
    queued = study.user_attrs[QUEUE]
    store_at = local.artifacts or str(queued.get("artifacts") or "")
    try:
        store = artifacts.open_store(artifacts.location(store_at, storage))
        overrides = fetch_inputs(store, queued, local.cache_dir)
        prepared = join(
            storage,
            name,
            local.heartbeat_s,
            cache_dir=local.cache_dir,
            runs_dir=local.runs_dir,
            trial_timeout_s=local.trial_timeout_s,
            **overrides,
        )
    except TunerError as exc:
        reason = _first_line(exc)
        study.set_user_attr(FAILED, reason)
        say(f"study {name}: failed, {reason}")
        return 0
    cfg, joined = prepared.cfg, prepared.study
    prepared = replace(
        prepared,
        measure=local.measure,
        before_tell=lambda s, t, state: _upload_trial(store, s, t, state, cfg),
        stop=lambda: CANCELLED_AT in joined.user_attrs,
    )
    say(f"study {name}: serving ({study.user_attrs.get('model')})")
    started, clock = datetime.now(), time.monotonic()
    confirmed: list[ChildOutcome] = []
    try:
        ran = work(prepared, say, owner=owner)
        finish(metered(prepared, confirmed), say)
    finally:  # this worker's share of the study's time, as `optimize` records its own
        me = this_process(owner)
        session = session_of(joined, started, time.monotonic() - clock, 1, confirmed, me)
        if session.trials or session.confirm_runs:
            with contextlib.suppress(Exception):  # the record matters less than the work
                store_session(joined, session)
    return ran


def fetch_inputs(store: artifacts.Store, queued: Mapping[str, Any], cache: Path) -> dict[str, Any]:
    """The model (and data) of a queued study fetched here, as StudyConfig overrides."""
    overrides: dict[str, Any] = {}
    model = queued.get("model") or {}
    files = [StoredFile.from_dict(f) for f in model.get("files") or []]
    if files:
        folder = artifacts.fetch_set(store, files, cache)
        overrides["model"] = str(folder / str(model["file"]))
    data = queued.get("data") or {}
    data_files = [StoredFile.from_dict(f) for f in data.get("files") or []]
    if data_files:
        folder = artifacts.fetch_set(store, data_files, cache)
        overrides["data_dir"] = folder / str(data["file"]) if data.get("file") else folder
    return overrides


def _upload_trial(
    store: artifacts.Store,
    study: optuna.Study,
    trial: optuna.Trial,
    state: TrialState,
    cfg: StudyConfig,
) -> None:
    """A trial's LoadGen logs and, if it failed, its error, into the store and onto it."""
    record = TrialRecord.from_trial(compat.frozen(study, trial))
    folder = cfg.runs_dir / study.study_name / f"trial-{trial.number:04d}"
    error = None
    if state == TrialState.FAIL or record.failure is not None:
        error = f"{record.failure or 'failed'}: {record.fail_reason or ''}".strip()
    with contextlib.suppress(OSError, TunerError):  # a lost log must not lose the trial
        artifacts.upload_logs(store, study, trial, folder, error)


def finish(prepared: Prepared, say: Callable[[str], None]) -> None:
    """Confirm the best and write the summary, once the budget is spent and nothing runs."""
    study, cfg = prepared.study, prepared.cfg
    if CANCELLED_AT in study.user_attrs or budget_used(study) < cfg.trials:
        return
    if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return  # the worker that ends the last one finishes the study
    confirm(prepared, say)
    with exclusive(study, "summary"):
        if FINISHED_AT in study.user_attrs:
            return
        study.set_user_attr(SUMMARY, render_summary(study, cfg))
        study.set_user_attr(FINISHED_AT, datetime.now(UTC).isoformat(timespec="seconds"))
    say(f"study {study.study_name}: done")

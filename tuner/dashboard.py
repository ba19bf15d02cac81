"""optuna-dashboard against the study storage, bound to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import optuna

from harness.errors import BackendUnavailable
from tuner.artifacts import ARTIFACTS_ENV, default_location, open_store
from tuner.storage import open_storage, redact


def serve(
    storage_url: str, host: str = "127.0.0.1", port: int = 8080, artifacts_at: str | None = None
) -> None:
    """Serve the dashboard until interrupted (blocks), with the artifact store (--artifacts,
    $TUNER_ARTIFACTS, the one the submitted studies recorded, or the folder beside an SQLite
    database) where there is one, so its artifact view shows each trial's LoadGen logs and
    each submitted study's files."""
    try:
        import optuna_dashboard
    except ModuleNotFoundError:
        raise BackendUnavailable(
            "the dashboard needs optuna-dashboard (pip install 'batch-tuner[dashboard]')"
        ) from None
    storage = open_storage(storage_url, create=False)
    store = None
    where = artifacts_at or os.environ.get(ARTIFACTS_ENV) or _recorded(storage)
    where = where or default_location(storage_url)
    if where is not None and (artifacts_at is not None or Path(where).is_dir()):
        store = open_store(where)
    shown = f", artifacts in {where}" if store is not None else ""
    print(
        f"optuna-dashboard for {redact(storage_url)}{shown} on http://{host}:{port}/ "
        "(Ctrl-C stops)",
        flush=True,
    )
    optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)


def _recorded(storage: optuna.storages.BaseStorage) -> str | None:
    """The artifact store the submitted studies recorded, where they all name one."""
    found = {
        str(s.user_attrs["queue"].get("artifacts"))
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        if isinstance(s.user_attrs.get("queue"), dict) and s.user_attrs["queue"].get("artifacts")
    }
    return found.pop() if len(found) == 1 else None

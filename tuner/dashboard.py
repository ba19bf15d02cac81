"""optuna-dashboard against the study storage, bound to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

from harness.errors import BackendUnavailable
from tuner.storage import open_storage, redact


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the dashboard until interrupted (blocks)."""
    try:
        import optuna_dashboard
    except ModuleNotFoundError:
        raise BackendUnavailable(
            "the dashboard needs optuna-dashboard (pip install 'batch-tuner[dashboard]')"
        ) from None
    storage = open_storage(storage_url, create=False)
    print(
        f"optuna-dashboard for {redact(storage_url)} on http://{host}:{port}/ (Ctrl-C stops)",
        flush=True,
    )
    optuna_dashboard.run_server(storage, host=host, port=port)

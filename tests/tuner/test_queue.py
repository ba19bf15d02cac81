"""The tuner as a service: `submit` queues studies with their files in the artifact store,
`worker` without --study serves the queue, `report --logs` reads every trial's LoadGen logs
from the store, `cancel` stops a study, and a file altered in the store is refused.

The end-to-end test runs real worker processes on the session's private PostgreSQL server
(skipped where PostgreSQL is not installed); the others run the CLI in this process on SQLite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from tests.conftest import make_mlp
from tests.tuner.cli_checks import one_error_line, run
from tuner.loop import budget_used
from tuner.queue import FAILED, FINISHED_AT, QUEUE, SUMMARY, state_of
from tuner.results import is_copy
from tuner.storage import open_storage

NULL = ["--model", "tiny", "--backend", "null", "--backend-option", "latency_ms=1"]
QUICK = ["--duration-s", "0.2", "--confirm-runs", "0", "--prune", "off", "--quiet"]


def _env() -> dict[str, str]:
    drop = ("TUNER_STORAGE", "TUNER_ARTIFACTS", "PYTHONWARNINGS")
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(autouse=True)
def _no_shared_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TUNER_STORAGE", "TUNER_ARTIFACTS"):
        monkeypatch.delenv(name, raising=False)


def _studies(storage: str) -> dict[str, optuna.Study]:
    store = open_storage(storage, create=False)
    return {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=store)
        for s in optuna.get_all_study_summaries(store)
    }


def _submit(storage: str, store: Path, cache: Path, *argv: str) -> list[str]:
    return [
        "submit",
        *("--storage", storage, "--artifacts", str(store), "--cache-dir", str(cache)),
        *argv,
    ]


def _worker(storage: str, store: Path | None, cache: Path, runs: Path, *argv: str) -> list[str]:
    where = ["--artifacts", str(store)] if store is not None else []
    return [
        "worker",
        *("--storage", storage, *where, "--cache-dir", str(cache), "--runs-dir", str(runs)),
        *argv,
    ]


def test_submitted_studies_are_served_by_two_workers_and_reported_from_the_store(
    postgres_server,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three studies (two on the null backend, one a real ONNX model with --data) submitted
    from one folder, whose model and data are then deleted; two worker processes with no
    --study in another folder serve them all; `report --logs` in a third folder reads every
    trial's LoadGen logs from the store."""
    storage = postgres_server.create_database()
    submitter, workers, reader = (tmp_path / n for n in ("submitter", "workers", "reader"))
    for folder in (submitter, workers, reader):
        folder.mkdir()
    store = tmp_path / "store"
    model = make_mlp(submitter / "mlp.onnx")
    np.savez(submitter / "data.npz", input=np.ones((40, 16), np.float32))
    monkeypatch.chdir(submitter)
    budgets = {"first": 3, "second": 2, "mlp": 2}
    submit = _submit(storage, store, tmp_path / "c1", *QUICK)
    assert run([*submit, *NULL, "--study", "first", "--trials", "3"]) == 0
    assert run([*submit, *NULL, "--study", "second", "--trials", "2"]) == 0
    mlp = ["--model", str(model), "--data", "data.npz", "--backends", "onnxruntime"]
    mlp += ["--precisions", "fp32", "--batch-sizes", "1,2"]
    assert run([*submit, *mlp, "--study", "mlp", "--trials", "2"]) == 0
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(submitter)  # the workers have only the database and the store
    assert {n: str(state_of(s)) for n, s in _studies(storage).items()}["mlp"].startswith("queued")

    # No --artifacts: the workers find the store where the study recorded it.
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "tuner"),
                *_worker(storage, None, tmp_path / f"cache-{i}", workers / "runs", "--once"),
                *("--worker-name", f"w{i}"),
            ],
            cwd=workers,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (1, 2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    studies = _studies(storage)
    assert set(studies) == set(budgets)
    for name, study in studies.items():
        assert str(state_of(study)).startswith("done"), (name, state_of(study))
        assert budget_used(study) == budgets[name]
        trials = study.get_trials()
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        assert FINISHED_AT in study.user_attrs and study.user_attrs[SUMMARY]
        # Each worker records its own share of the study's time: no trial counted twice.
        sessions = study.user_attrs["sessions"]
        measured = [t for t in trials if t.state != TrialState.WAITING and not is_copy(t)]
        assert sum(s["trials"] for s in sessions) == len(measured), (name, sessions)
        for trial in trials:
            names = {m.filename for m in get_all_artifact_meta(trial, storage=study._storage)}
            assert any(n.endswith("mlperf_log_summary.txt") for n in names), (name, trial.number)
            assert any(n.endswith("mlperf_log_detail.txt") for n in names), (name, trial.number)
    study_files = get_all_artifact_meta(studies["mlp"], storage=studies["mlp"]._storage)
    assert sorted(m.filename for m in study_files) == ["data.npz", "mlp.onnx"]
    both = "\n".join(err for _, err in outputs)
    assert "w1: " in both and "w2: " in both

    monkeypatch.chdir(reader)
    assert run(["report", "--storage", storage, "--study", "mlp", "--logs", "logs"]) == 0
    summaries = sorted((reader / "logs").rglob("mlperf_log_summary.txt"))
    assert len(summaries) >= 2  # a run or more per trial, each trial's own folder
    assert {p.relative_to(reader / "logs").parts[0] for p in summaries} == {
        "trial-0000",
        "trial-0001",
    }
    assert "Result is : VALID" in summaries[0].read_text()


def test_bad_input_is_one_line_and_stores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage, store = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "store"
    argv = _submit(storage, store, tmp_path / "cache", *NULL, *QUICK, "--trials", "0")
    assert run(argv) == 2
    assert "trials" in one_error_line(capsys.readouterr().err)
    missing = _submit(storage, store, tmp_path / "cache", "--model", "nowhere.onnx", *QUICK)
    assert run(missing) != 0
    assert "model file not found: nowhere.onnx" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "s.db").exists() or not _studies(storage)
    assert not store.exists() or not any(store.iterdir())


def test_identical_models_are_stored_once_and_a_served_study_is_not_resubmitted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage, store, cache = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "store", tmp_path / "c"
    model = make_mlp(tmp_path / "mlp.onnx")
    for name in ("a", "b"):
        argv = _submit(storage, store, cache, "--model", str(model), *QUICK, "--study", name)
        assert run(argv) == 0
        assert capsys.readouterr().out.strip() == name
    assert len(list(store.iterdir())) == 1  # one blob: the model, by content
    again = _submit(storage, store, cache, "--model", str(model), *QUICK, "--study", "a")
    assert run(again) == 2
    assert "already in the queue" in one_error_line(capsys.readouterr().err)


def test_a_file_altered_in_the_store_is_refused_and_the_study_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage, store, cache = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "store", tmp_path / "c"
    model = make_mlp(tmp_path / "mlp.onnx")
    assert run(_submit(storage, store, cache, "--model", str(model), *QUICK, "--study", "m")) == 0
    (blob,) = store.iterdir()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")  # one byte changed, same size
    worker_cache = tmp_path / "worker-cache"
    assert run(_worker(storage, store, worker_cache, tmp_path / "runs", "--once")) == 0
    study = _studies(storage)["m"]
    assert "refused (the store was altered)" in study.user_attrs[FAILED]
    assert str(state_of(study)).startswith("failed")
    assert not study.get_trials(states=(TrialState.COMPLETE, TrialState.RUNNING))
    assert not list((worker_cache / "artifacts").rglob("mlp.onnx"))  # never left to load


def test_cancel_and_another_device_keep_a_worker_away(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage, store, cache = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "store", tmp_path / "c"
    base = _submit(storage, store, cache, *NULL, *QUICK, "--trials", "2")
    assert run([*base, "--study", "stopped"]) == 0
    assert run([*base, "--study", "elsewhere", "--for-device", "NVIDIA T4"]) == 0
    assert run(["cancel", "--storage", storage, "--study", "stopped"]) == 0
    assert "study stopped cancelled" in capsys.readouterr().out
    assert run(_worker(storage, None, cache, tmp_path / "runs", "--once")) == 0
    err = capsys.readouterr().err
    assert "study elsewhere: skipped, it is for 'NVIDIA T4'" in err
    studies = _studies(storage)
    assert str(state_of(studies["stopped"])).startswith("cancelled")
    assert str(state_of(studies["elsewhere"])).startswith("queued")
    assert not studies["stopped"].get_trials(states=(TrialState.COMPLETE,))
    assert run(["studies", "--storage", storage]) == 0
    listing = capsys.readouterr().out
    assert "cancelled" in listing and "queued (submitted" in listing


def test_a_worker_for_one_queued_study_fetches_its_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`worker --study NAME` on a submitted study, from another folder, after the model file
    is gone: the store has it (`optimize`-made studies would say 'model file not found')."""
    storage, store, cache = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "store", tmp_path / "c"
    made = tmp_path / "made"
    made.mkdir()
    model = make_mlp(made / "m.onnx")
    monkeypatch.chdir(made)
    argv = _submit(storage, store, cache, "--model", "m.onnx", *QUICK, "--backends", "onnxruntime")
    assert run([*argv, "--study", "svc", "--trials", "1", "--precisions", "fp32"]) == 0
    model.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run(_worker(storage, None, tmp_path / "c2", tmp_path / "runs", "--study", "svc")) == 0
    study = _studies(storage)["svc"]
    assert QUEUE in study.user_attrs and str(state_of(study)).startswith("done")
    assert study.get_trials(states=(TrialState.COMPLETE,))


def test_the_dashboard_serves_a_trials_loadgen_log_from_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """optuna-dashboard's artifact view: the log a worker uploaded is downloadable from it,
    byte for byte, by the study's and trial's ids."""
    pytest.importorskip("optuna_dashboard")
    from tests.tuner.test_cli import _free_port

    storage, store, cache = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "store", tmp_path / "c"
    assert run([*_submit(storage, store, cache, *NULL, *QUICK), "--trials", "1"]) == 0
    assert run(_worker(storage, None, cache, tmp_path / "runs", "--once")) == 0
    (study,) = _studies(storage).values()
    (trial,) = study.get_trials()
    metas = get_all_artifact_meta(trial, storage=study._storage)
    summary = next(m for m in metas if m.filename.endswith("mlperf_log_summary.txt"))
    port = _free_port()
    argv = ["dashboard", "--storage", storage, "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner", *argv],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/artifacts/{study._study_id}/{trial._trial_id}/"
    try:
        body = _get(url + summary.artifact_id, proc)
    finally:
        proc.terminate()
        out, _err = proc.communicate(timeout=15)
    assert body == (store / summary.artifact_id).read_bytes()
    assert b"Result is : VALID" in body
    assert f"artifacts in {store}" in out  # found beside the database, as the workers did


def _get(url: str, proc: subprocess.Popen[str], timeout: float = 30) -> bytes:
    """The body at `url` once the server answers (it takes a moment to start)."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the dashboard exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body: bytes = response.read()
                return body
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    pytest.fail(f"no answer from {url} within {timeout} s")

"""tuner.report on real Optuna studies in SQLite: the CSV, the table, the PNGs, the summary."""

from __future__ import annotations

import builtins
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from harness.errors import TunerError
from tuner import report
from tuner.results import TrialRecord, speed_up

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FLOOR = 0.99


def _offline_specs() -> list[dict[str, Any]]:
    return [
        _spec(1, 1, "fp32", 100.0),
        _spec(8, 1, "fp32", 400.0),
        _spec(32, 2, "fp16", 1500.0),
        _spec(64, 2, "int8", 5000.0, top1=0.90),  # infeasible: below the accuracy floor
        {
            "params": {"batch_size": 128, "streams": 1, "precision": "fp32"},
            "fail": "out of memory",
        },
        _spec(16, 2, "fp16", 2000.0, valid=False),  # infeasible: INVALID
        {**_spec(32, 2, "fp16", 1500.0), "duplicate_of": 2},
        _spec(8, 2, "fp16", 1234.5),
    ]


def _server_specs() -> list[dict[str, Any]]:
    def runs(bound: float, server: list[tuple[float, float, bool]]) -> list[dict[str, Any]]:
        offline = {
            "scenario": "Offline",
            "target_qps": None,
            "valid": True,
            "p99_ms": 3.0,
            "samples_per_second": bound,
        }
        return [offline] + [
            {
                "scenario": "Server",
                "target_qps": q,
                "valid": v,
                "p99_ms": p,
                "scheduled_qps": q,
                "completed_qps": q,
                "invalid_reasons": [] if v else ["p99"],
                "log_dir": "/tmp/x",
            }
            for q, p, v in server
        ]

    return [
        _spec(
            1,
            1,
            "fp32",
            80.0,
            deque=2000,
            runs=runs(120, [(102.0, 25.0, False), (61.2, 8.0, True), (80.0, 9.0, True)]),
        ),
        _spec(
            8,
            2,
            "fp16",
            640.0,
            deque=2000,
            runs=runs(900, [(765.0, 40.0, False), (459.0, 7.0, True), (640.0, 12.0, True)]),
        ),
        _spec(
            16,
            2,
            "fp16",
            0.0,
            deque=500,
            valid=False,
            runs=runs(1000, [(850.0, 90.0, False), (510.0, 60.0, False)]),
        ),
        {
            "params": {
                "batch_size": 32,
                "streams": 1,
                "precision": "fp32",
                "deque_timeout_us": 8000,
            },
            "fail": "timed out after 600 s",
        },
        _spec(
            8,
            1,
            "fp32",
            300.0,
            deque=8000,
            runs=runs(500, [(425.0, 30.0, False), (300.0, 11.0, True)]),
        ),
    ]


def _multi_specs() -> list[dict[str, Any]]:
    return [
        _spec(1, 1, "fp32", 100.0, p99=10.0),
        _spec(8, 1, "fp32", 400.0, p99=12.0),
        _spec(32, 2, "fp16", 1500.0, p99=40.0),
        _spec(16, 1, "fp16", 1200.0, p99=50.0),  # dominated by trial 2
        _spec(64, 2, "int8", 5000.0, p99=5.0, top1=0.5),  # would dominate all, but infeasible
        {"params": {"batch_size": 128, "streams": 2, "precision": "int8"}, "fail": "engine build"},
    ]


def _spec(
    batch: int,
    streams: int,
    precision: str,
    score: float,
    *,
    valid: bool = True,
    top1: float = 1.0,
    p99: float = 5.0,
    deque: int | None = None,
    runs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"batch_size": batch, "streams": streams, "precision": precision}
    if deque is not None:
        params["deque_timeout_us"] = deque
    return {
        "params": params,
        "score": score,
        "valid": valid,
        "top1": top1,
        "p99": p99,
        "runs": runs or [],
    }


def _objective(specs: list[dict[str, Any]], scenario: str, multi: bool) -> Any:
    space = {
        name: sorted({s["params"][name] for s in specs if name in s["params"]})
        for name in report.PARAMS
        if any(name in s["params"] for s in specs)
    }

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        spec = specs[trial.number]
        for name, choices in space.items():
            trial.suggest_categorical(name, choices)
        if "fail" in spec:
            TrialRecord(trial_seconds=12.5, failure="error", fail_reason=spec["fail"]).store(trial)
            raise RuntimeError(spec["fail"])
        key = "qps" if scenario == "server" else "samples_per_second"
        record = TrialRecord(
            trial_seconds=12.5,
            score=spec["score"],
            valid=spec["valid"],
            p50_ms=spec["p99"] / 2,
            p90_ms=spec["p99"] * 0.8,
            p99_ms=spec["p99"],
            latency_ms={"p50": spec["p99"] / 2, "p90": spec["p99"] * 0.8, "p99": spec["p99"]},
            loadgen_runs=spec["runs"],
            engine_build_s=1.25,
            warmup_batch_ms=2.0,
            device="Test CPU",
            backend="onnxruntime",
            simulated=True,
            note="",
            agreement_top1=spec["top1"],
            agreement_max_abs_error=0.01,
            duplicate_of=spec.get("duplicate_of"),
        )
        # Written as the tuner writes it (tuner.results): a reader that drifts fails here.
        replace(record, **{key: spec["score"]}).store(trial)
        trial.set_constraint("accuracy", max(0.0, FLOOR - spec["top1"]))
        trial.set_constraint("valid", 0.0 if spec["valid"] else 1.0)
        value = spec["score"] if spec["valid"] else 0.0
        return (value, spec["p99"]) if multi else value

    return objective


def build_study(
    tmp: Path,
    scenario: str,
    specs: list[dict[str, Any]],
    multi: bool = False,
    percentile: float = 99.0,
) -> optuna.Study:
    """A study in SQLite whose trial n measures `specs[n]`."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = f"sqlite:///{tmp / 'studies.db'}"
    name = f"tiny-{scenario}{'-multi' if multi else ''}"
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=["maximize", "minimize"] if multi else ["maximize"],
    )
    objectives = ["throughput", "p99"] if multi else ["throughput"]
    attrs = {
        "model": "tiny-mlp",
        "model_sha256": "0" * 64,
        "backend": "onnxruntime",
        "device": "Test CPU",
        "simulated": True,
        "scenario": scenario,
        "latency_ms": 15.0 if scenario == "server" else None,
        "percentile": percentile if scenario == "server" else None,
        "objectives": objectives,
        "accuracy_floor": FLOOR,
        "space": {},
        "trials_budget": 10,
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for spec in specs:
        study.enqueue_trial(spec["params"], skip_if_exists=False)
    study.optimize(_objective(specs, scenario, multi), n_trials=len(specs), catch=(RuntimeError,))
    # Read it back as a user of the storage would.
    return optuna.load_study(study_name=name, storage=storage)


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    return build_study(tmp_path_factory.mktemp("offline"), "offline", _offline_specs())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    return build_study(tmp_path_factory.mktemp("server"), "server", _server_specs())


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> optuna.Study:
    return build_study(tmp_path_factory.mktemp("multi"), "offline", _multi_specs(), multi=True)


def _assert_png(path: Path) -> None:
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5000, path
    height, width = imread(path).shape[:2]
    assert width >= 600 and height >= 400, (path, width, height)


def _names(paths: list[Path]) -> set[str]:
    return {p.name for p in paths}


# ---------------------------------------------------------------------------- the frame / CSV


def test_offline_csv_holds_every_trial(offline: optuna.Study, tmp_path: Path) -> None:
    paths = report.write_report(offline, tmp_path / "out")
    assert all(p.exists() and p.parent == tmp_path / "out" for p in paths)
    csv = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert list(csv["number"]) == list(range(8))
    assert list(csv["state"]) == ["COMPLETE"] * 4 + ["FAIL"] + ["COMPLETE"] * 3
    assert list(csv["batch_size"]) == [1, 8, 32, 64, 128, 16, 32, 8]
    assert list(csv["precision"]) == [
        "fp32",
        "fp32",
        "fp16",
        "int8",
        "fp32",
        "fp16",
        "fp16",
        "fp16",
    ]
    assert csv["value"][2] == 1500.0 and csv["value"][5] == 0.0 and pd.isna(csv["value"][4])
    assert csv["samples_per_second"][5] == 2000.0 and csv["score"][7] == 1234.5
    assert list(csv["feasible"]) == [True, True, True, False, False, False, True, True]
    assert csv["fail_reason"][4] == "out of memory" and pd.isna(csv["fail_reason"][0])
    assert csv["duplicate_of"][6] == 2 and csv["duplicate_of"].isna().sum() == 7
    assert csv["agreement_top1"][3] == pytest.approx(0.90)
    assert csv["trial_seconds"].eq(12.5).all() and csv["p99_ms"][0] == 5.0
    assert "qps" not in csv.columns and "deque_timeout_us" not in csv.columns


def test_frame_columns_follow_the_study(server: optuna.Study, multi: optuna.Study) -> None:
    frame = report.trials_frame(server)
    assert list(frame["deque_timeout_us"]) == [2000, 2000, 500, 8000, 8000]
    assert "qps" in frame.columns and "samples_per_second" not in frame.columns
    assert frame["qps"][1] == 640.0
    mframe = report.trials_frame(multi)
    assert "value" not in mframe.columns
    assert list(mframe["value_throughput"][:3]) == [100.0, 400.0, 1500.0]
    assert list(mframe["value_p99"][:3]) == [10.0, 12.0, 40.0]
    assert frame["number"].is_monotonic_increasing


# ---------------------------------------------------------------------------- the PNGs


def test_offline_pngs(offline: optuna.Study, tmp_path: Path) -> None:
    paths = report.write_report(offline, tmp_path)
    assert _names(paths) == {
        "trials.csv",
        "throughput_vs_batch.png",
        "history.png",
        "best_vs_baseline.png",
    }
    for path in paths:
        if path.suffix == ".png":
            _assert_png(path)


def test_server_pngs_include_latency_plot(server: optuna.Study, tmp_path: Path) -> None:
    paths = report.write_report(server, tmp_path)
    assert _names(paths) == {
        "trials.csv",
        "throughput_vs_batch.png",
        "p99_vs_target_qps.png",
        "history.png",
        "best_vs_baseline.png",
    }
    for path in paths[1:]:
        _assert_png(path)
    assert len(pd.read_csv(tmp_path / "trials.csv")) == 5


def test_why_infeasible(offline: optuna.Study) -> None:
    trials = offline.get_trials()
    assert report.why_infeasible(trials[3]) == "top1 0.900"
    assert report.why_infeasible(trials[5]) == "INVALID"
    assert report.why_infeasible(trials[0]) == ""


def test_server_points_are_every_server_run(server: optuna.Study) -> None:
    points = report.server_points(server)
    assert len(points) == 3 + 3 + 2 + 2  # the Offline bound runs are left out
    assert (102.0, 25.0, False) in points and (640.0, 12.0, True) in points
    assert sum(valid for _, _, valid in points) == 5


def test_multi_objective_pngs_include_pareto(multi: optuna.Study, tmp_path: Path) -> None:
    paths = report.write_report(multi, tmp_path)
    assert "pareto_front.png" in _names(paths)
    assert "p99_vs_target_qps.png" not in _names(paths)
    for path in paths[1:]:
        _assert_png(path)
    assert sorted(t.number for t in multi.best_trials) == [0, 1, 2]


# ---------------------------------------------------------------------------- the table


def _rows(table: str) -> list[str]:
    return table.splitlines()[2:]


def test_table_lists_every_trial(offline: optuna.Study) -> None:
    table = report.trials_table(offline)
    rows = _rows(table)
    assert len(rows) == 8
    for number, row in enumerate(rows):
        assert re.match(rf"^\*?\s*{number}\s+(COMPLETE|FAIL)\b", row), row
    assert rows[2].startswith("*")  # the best trial
    assert not any(r.startswith("*") for i, r in enumerate(rows) if i != 2)
    assert "1,500.0" in rows[2] and "1,234.5" in rows[7]
    assert "out of memory" in rows[4] and " - " in rows[4]
    header = table.splitlines()[0]
    assert all(
        row.index("COMPLETE" if "COMPLETE" in row else "FAIL") == header.index("state")
        for row in rows
    )  # fixed columns


def test_table_for_server_and_multi(server: optuna.Study, multi: optuna.Study) -> None:
    table = report.trials_table(server)
    assert "deque us" in table.splitlines()[0] and "QPS" in table.splitlines()[0]
    assert "2,000" in table and "timed out after 600 s" in table
    mrows = _rows(report.trials_table(multi))
    assert [r.startswith("*") for r in mrows] == [True, True, True, False, False, False]


# ---------------------------------------------------------------------------- the summary


def test_offline_summary(offline: optuna.Study) -> None:
    lines = report.summary_lines(offline)
    assert "8 trials (7 complete, 2 infeasible, 1 failed)" in lines[0]
    assert "(simulated)" in lines[0] and "tiny-mlp" in lines[0]
    assert lines[1].startswith("best: trial 2, batch 32, 2 streams, fp16: 1,500.0 samples/s")
    assert lines[2].startswith("baseline: trial 0, batch 1, 1 stream, fp32: 100.0 samples/s")
    assert "speed-up: 15.00x over the baseline" in lines
    assert speed_up(offline) == pytest.approx(15.0)


def test_server_summary(server: optuna.Study) -> None:
    lines = report.summary_lines(server)
    assert "best: trial 1, batch 8, 2 streams, fp16, deque 2,000 us: 640.0 QPS" in lines[1]
    assert "speed-up: 8.00x over the baseline" in lines


def test_a_p90_study_is_reported_at_p90(tmp_path: Path) -> None:
    """The bound's percentile throughout: the summary's latency, a table column, the plotted
    runs (each run's `percentile_ms`, what LoadGen judged it on) and the plot's name."""
    specs = _server_specs()
    for spec in specs:
        for run in spec.get("runs", []):
            if run["scenario"] == "Server":
                run["percentile_ms"] = run["p99_ms"] * 0.7
    study = build_study(tmp_path, "server", specs, percentile=90.0)
    lines = report.summary_lines(study)
    assert "640.0 QPS, p90 4.00 ms" in lines[1]  # the trial's p90: 0.8 x its p99 of 5
    assert "p99" not in lines[1]
    header = report.trials_table(study).splitlines()[0].split()
    assert header[header.index("p90") + 2] == "p99"  # "p90 ms" beside "p99 ms"
    assert (640.0, pytest.approx(12.0 * 0.7), True) in report.server_points(study)
    names = _names(report.write_report(study, tmp_path / "out"))
    assert "p90_vs_target_qps.png" in names and "p99_vs_target_qps.png" not in names


def test_multi_summary(multi: optuna.Study) -> None:
    lines = report.summary_lines(multi)
    assert lines[1].startswith("best: trial 2,")
    assert "speed-up: 15.00x over the baseline" in lines
    assert lines[-1] == "Pareto front: trials 0, 1, 2"


def test_summary_without_baseline(tmp_path: Path) -> None:
    specs = [_spec(8, 1, "fp32", 400.0), _spec(16, 1, "fp32", 700.0)]
    study = build_study(tmp_path, "offline", specs)
    lines = report.summary_lines(study)
    assert "not measured" in lines[2] and lines[3] == "speed-up: n/a"
    names = _names(report.write_report(study, tmp_path / "out"))
    assert "best_vs_baseline.png" not in names and "history.png" in names


# ---------------------------------------------------------------------------- no matplotlib


def _hide_with_sys_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def _hide_with_import(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


@pytest.mark.parametrize("hide", [_hide_with_sys_modules, _hide_with_import])
def test_missing_matplotlib_still_writes_csv(
    offline: optuna.Study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hide: Any
) -> None:
    hide(monkeypatch)
    with pytest.raises(TunerError, match=re.escape("pip install 'batch-tuner[report]'")) as err:
        report.write_report(offline, tmp_path)
    assert "\n" not in str(err.value)
    assert len(pd.read_csv(tmp_path / "trials.csv")) == 8
    assert not list(tmp_path.glob("*.png"))

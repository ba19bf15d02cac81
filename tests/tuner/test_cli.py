"""`python -m tuner` through `main([...])`: export, report, studies, dashboard, study files,
bad input and multi-objective studies, on studies made by `optimize` (null backend, tiny
model, real LoadGen, real SQLite)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlperf_loadgen as lg
import onnx
import optuna
import pandas as pd
import pytest
from onnx import TensorProto, helper
from optuna.trial import TrialState, create_trial

from harness.errors import ConfigError, ModelError
from tests.tuner.cli_checks import NULL_SERVER, one_error_line, run, sha256
from tuner import config
from tuner.cli import main
from tuner.export import FORMATS
from tuner.results import best_trial, robust_value, speed_up, study_setting
from tuner.storage import open_storage

if TYPE_CHECKING:
    from tests.tuner.conftest import MadeStudy

REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "studies"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PG_URL = "postgresql+psycopg://u:secret@127.0.0.1:1/x"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


# ---------------------------------------------------------------------------- 1. export


@pytest.mark.parametrize("fmt", sorted(FORMATS))  # a new format fails below until checked
def test_export_every_format_of_an_optimized_study(
    fmt: str, tmp_path: Path, offline_study: MadeStudy, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sha256(offline_study.db)
    out = tmp_path / "deploy" / f"best.{fmt}"
    argv = ["export", "--storage", offline_study.url, "--study", offline_study.name]
    assert main([*argv, "--format", fmt, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert sha256(offline_study.db) == before  # export only reads the study
    text = out.read_text()
    study = offline_study.load()
    best = best_trial(study)  # the confirmed winner
    assert best is not None
    p = best.params
    if fmt == "json":
        doc = json.loads(text)
        assert doc["study"]["name"] == offline_study.name
        assert doc["trial"]["number"] == best.number
        assert doc["trial"]["params"] == best.params
        assert doc["trial"]["values"] == pytest.approx(best.values)
        median = robust_value(best, study.user_attrs)
        assert doc["trial"]["value"] == pytest.approx(median)
        assert doc["trial"]["state"] == "COMPLETE" and doc["trial"]["feasible"] is True
    elif fmt == "user.conf":
        settings = lg.TestSettings()
        assert settings.FromConfig(str(out), "tiny", "Offline") == 0
        assert settings.offline_expected_qps == pytest.approx(robust_value(best, study.user_attrs))
    elif fmt == "triton":
        assert f"max_batch_size: {p['batch_size']}\n" in text
        assert f"count: {p['streams']}\n" in text
        assert 'platform: "onnxruntime_onnx"' in text and 'name: "tiny"' in text
    elif fmt == "trtexec":
        (command,) = [line for line in text.splitlines() if not line.startswith("#")]
        args = shlex.split(command)
        assert args[0] == "trtexec"
        assert f"--infStreams={p['streams']}" in args
        assert f"--shapes=input:{p['batch_size']}x16" in args
    elif fmt == "benchmark_app":
        (command,) = [line for line in text.splitlines() if not line.startswith("#")]
        args = shlex.split(command)
        assert args[0] == "benchmark_app"
        assert args[args.index("-nstreams") + 1] == str(p["streams"])
        assert args[args.index("-shape") + 1] == f"input[{p['batch_size']},16]"
        assert "# trial" in text and "ran on null" in text  # not an OpenVINO trial: said so
    elif fmt == "nvidia":
        doc = json.loads(text)
        assert doc["benchmark"] == "tiny" and doc["scenario"] == "Offline"
        assert doc["tiny"]["gpu_batch_size"] == p["batch_size"]
        assert doc["tiny"]["gpu_inference_streams"] == p["streams"]
        assert doc["tiny"]["precision"] == p["precision"]
    else:
        pytest.fail(f"export format {fmt!r} has no check of its output here: add one")


def test_export_a_chosen_trial(
    tmp_path: Path, offline_study: MadeStudy, capsys: pytest.CaptureFixture[str]
) -> None:
    trials = offline_study.load().get_trials()
    last = trials[-1]
    out = tmp_path / "t.json"
    argv = ["export", "--storage", offline_study.url, "--study", offline_study.name]
    assert main([*argv, "--trial", str(last.number), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["trial"]["number"] == last.number and doc["trial"]["params"] == last.params


def test_export_takes_the_storage_from_the_environment(
    tmp_path: Path, offline_study: MadeStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNER_STORAGE", offline_study.url)
    out = tmp_path / "best.json"
    assert main(["export", "--study", offline_study.name, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["study"]["name"] == offline_study.name


# ---------------------------------------------------------------------------- 2. report


def test_report_prints_every_trial_and_writes_csv_and_pngs(
    tmp_path: Path, offline_study: MadeStudy, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sha256(offline_study.db)
    out_dir = tmp_path / "report"
    argv = ["report", "--storage", offline_study.url, "--study", offline_study.name]
    assert main([*argv, "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert sha256(offline_study.db) == before
    study = offline_study.load()
    trials = study.get_trials()
    assert len(trials) == offline_study.trials
    lines = out.splitlines()
    for trial in trials:
        row = re.compile(rf"^[* ]\s*{trial.number}\s+COMPLETE\s")
        assert any(row.match(line) for line in lines), f"trial {trial.number} missing:\n{out}"
    best_rows = [line for line in lines if line.startswith("*")]
    best = best_trial(study)
    assert best is not None
    assert len(best_rows) == 1 and re.match(rf"^\*\s+{best.number}\s", best_rows[0])
    frame = pd.read_csv(out_dir / "trials.csv")
    assert frame["number"].tolist() == [t.number for t in trials]
    assert frame["state"].tolist() == ["COMPLETE"] * offline_study.trials
    pngs = sorted(out_dir.glob("*.png"))
    assert {p.name for p in pngs} >= {"throughput_vs_batch.png", "history.png"}
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f"wrote {png}" in out
    assert f"wrote {out_dir / 'trials.csv'}" in out


# ---------------------------------------------------------------------------- 3. studies


def test_studies_lists_the_study_and_its_best_value(
    offline_study: MadeStudy, capsys: pytest.CaptureFixture[str]
) -> None:
    before = sha256(offline_study.db)
    assert main(["studies", "--storage", offline_study.url]) == 0
    out = capsys.readouterr().out
    assert sha256(offline_study.db) == before
    study = offline_study.load()
    best = best_trial(study)
    assert best is not None
    (row,) = [line for line in out.splitlines() if line.startswith(offline_study.name)]
    cells = re.split(r"\s{2,}", row)
    trials = offline_study.trials
    assert cells[:6] == [
        offline_study.name,
        f"done ({trials} of {trials} trials)",  # an optimize study, confirmed
        "tiny",
        "offline",
        "null",
        "simulated (cpu)",
    ]
    assert cells[6] == str(trials)
    pruned = len(study.get_trials(states=(TrialState.PRUNED,)))
    assert cells[7] == str(pruned)
    assert cells[8] == f"{robust_value(best, study.user_attrs):,.2f}"
    ratio = speed_up(study)
    assert ratio is not None and cells[9:11] == ["samples/s", f"{ratio:.2f}x"]
    assert f"batch_size={best.params['batch_size']}" in cells[11]


def test_studies_shows_the_best_feasible_trial(
    tmp_path: Path, offline_study: MadeStudy, capsys: pytest.CaptureFixture[str]
) -> None:
    """An infeasible trial (an int8 variant below the accuracy floor) is never listed as the
    best, just as export never picks it."""
    copy = offline_study.copy_to(tmp_path)
    study = copy.load()
    best = best_trial(study)
    assert best is not None
    study.add_trial(
        create_trial(
            value=best.values[0] * 10,
            params=best.params,
            distributions=best.distributions,
            user_attrs=best.user_attrs,
            constraints={"accuracy": 0.2, "valid": 0.0},
        )
    )
    assert main(["studies", "--storage", copy.url]) == 0
    (row,) = [r for r in capsys.readouterr().out.splitlines() if r.startswith(copy.name)]
    cells = re.split(r"\s{2,}", row)
    assert cells[6] == str(offline_study.trials + 1)
    assert cells[8] == f"{robust_value(best, study.user_attrs):,.2f}"


def test_studies_on_an_empty_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = sqlite_url(tmp_path / "empty.db")
    open_storage(url)  # a new database with Optuna's tables and no study
    assert main(["studies", "--storage", url]) == 0
    assert capsys.readouterr().out.strip() == "no studies"


def test_studies_on_a_missing_database_does_not_create_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "sub" / "absent.db"
    assert main(["studies", "--storage", sqlite_url(db)]) == 1
    assert "absent.db" in one_error_line(capsys.readouterr().err)
    assert not db.exists() and not db.parent.exists()


# ---------------------------------------------------------------------------- 4. dashboard


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append(address)
    return found


def test_dashboard_serves_the_study_on_loopback_only(
    tmp_path: Path, offline_study: MadeStudy
) -> None:
    pytest.importorskip("optuna_dashboard")
    copy = offline_study.copy_to(tmp_path)
    port = _free_port()
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if k != "TUNER_STORAGE"}
    argv = ["dashboard", "--storage", copy.url, "--port", str(port)]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tuner", *argv], stdout=out, stderr=err, cwd=tmp_path, env=env
        )
    try:
        body = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"dashboard exited: {stderr.read_text()}"
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/studies", timeout=2
                ) as response:
                    assert response.status == 200
                    body = json.loads(response.read())
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        assert body is not None, f"no answer within 30 s: {stderr.read_text()}"
        names = [s["study_name"] for s in body["study_summaries"]]
        assert names == [copy.name]
        assert f"http://127.0.0.1:{port}/" in stdout.read_text()
        addresses = _listening_addresses(port)
        if Path("/proc/net/tcp").exists():
            assert addresses == ["0100007F"], addresses  # 127.0.0.1 only, no IPv6 wildcard
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("the dashboard did not exit on SIGTERM")
    assert proc.returncode == -signal.SIGTERM  # ended by the SIGTERM sent, not before it
    assert "Traceback" not in stderr.read_text()


def test_dashboard_refuses_a_missing_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("optuna_dashboard")
    db = tmp_path / "absent.db"
    assert main(["dashboard", "--storage", sqlite_url(db), "--port", str(_free_port())]) == 1
    assert "absent.db" in one_error_line(capsys.readouterr().err)
    assert not db.exists()


# ---------------------------------------------------------------------------- 5. study files


STUDY_FILES = sorted(STUDIES.glob("*.toml"))


def test_the_shipped_study_files_are_there() -> None:
    names = {p.stem for p in STUDY_FILES}
    assert names >= {
        "resnet50-offline-cpu",
        "resnet50-server-cpu",
        "mobilenet-server-cpu",
        "resnet50-t4",
    }


@pytest.mark.parametrize("path", STUDY_FILES, ids=[p.stem for p in STUDY_FILES])
def test_every_study_file_builds(path: Path) -> None:
    raw = tomllib.loads(path.read_text())
    cfg = config.build(path)
    assert cfg.model == raw["model"]["name"]
    assert cfg.backend == raw["backend"]["name"]
    assert cfg.scenario == raw["scenario"]["name"]
    assert cfg.trials == raw["study"]["trials"]
    if "batch_sizes" in raw.get("space", {}):
        assert cfg.space.batch_sizes == tuple(raw["space"]["batch_sizes"])


def test_answer_runs_reaches_every_trials_search(tmp_path: Path) -> None:
    """scenario.answer_runs (file) and --answer-runs (flag) end up in each trial's ScenarioSpec,
    which the max-QPS search reads; the default is the harness's."""
    from harness.config import ScenarioSpec
    from tuner.space import Params
    from tuner.study import trial_configs

    path = tmp_path / "server.toml"
    path.write_text('[scenario]\nname = "server"\nanswer_runs = 3\n')
    point = Params(batch_size=1, streams=1, precision="fp32", deque_timeout_us=0)
    _, spec = trial_configs(config.build(path), point, "s", 0)
    assert spec.find_max_qps and spec.answer_runs == 3
    _, spec = trial_configs(config.build(path, answer_runs=1), point, "s", 0)
    assert spec.answer_runs == 1  # the flag over the file
    _, spec = trial_configs(config.build(scenario="server"), point, "s", 0)
    assert spec.answer_runs == ScenarioSpec.answer_runs == 2


def test_study_file_values() -> None:
    server = config.build(STUDIES / "resnet50-server-cpu.toml")
    # CPU study files use bounds a 2-core CPU meets; MLPerf's 15 ms stays in the GPU file.
    assert (server.scenario, server.latency_ms, server.percentile) == ("server", 200.0, 99.0)
    assert server.min_queries is not None and server.min_queries >= 600
    mobilenet = config.build(STUDIES / "mobilenet-server-cpu.toml")
    assert (mobilenet.model, mobilenet.latency_ms, mobilenet.percentile) == ("mobilenet", 30, 99)
    t4 = config.build(STUDIES / "resnet50-t4.toml")
    assert t4.backend == "tensorrt" and t4.scenario == "server" and t4.latency_ms == 15.0
    assert t4.enqueue[0] == {
        "batch_size": 26,
        "streams": 2,
        "precision": "int8",
        "deque_timeout_us": 2000,
    }
    assert t4.space.batch_sizes is not None and 26 in t4.space.batch_sizes
    assert t4.space.streams is not None and 2 in t4.space.streams
    assert t4.space.precisions is not None and "int8" in t4.space.precisions


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[study]\ntrails = 3\n", "study.trails"),
        ("[modle]\nname = 'tiny'\n", "[modle]"),
        ("[space]\nbatch = [1, 2]\n", "space.batch"),
        ("[scenario]\nlatency = 5\n", "scenario.latency"),
        ("[[enqueue]]\nbatch = 2\n", "unknown key batch"),
        ("[study]\ntrials = 0\n", "study.trials"),
        ("[study]\nclimb = -1\n", "study.climb"),
        ("[scenario]\nanswer_runs = 0\n", "scenario.answer_runs"),
        ("[study]\nobjectives = 3\n", "study.objectives"),
        ("[study\n", "bad.toml"),
    ],
    ids=[
        "unknown-key",
        "unknown-section",
        "unknown-space-key",
        "unknown-scenario-key",
        "unknown-enqueue-key",
        "bad-value",
        "climb-negative",
        "answer-runs-0",
        "objectives-not-a-list",
        "not-toml",
    ],
)
def test_a_bad_study_file_is_one_line_and_exit_2(
    text: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], cache_dir: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    db = tmp_path / "study.db"
    argv = ["optimize", "--config", str(path), "--storage", sqlite_url(db)]
    assert run([*argv, "--cache-dir", str(cache_dir)]) == 2
    assert needle in one_error_line(capsys.readouterr().err)
    assert not db.exists()


def test_flags_override_the_study_file(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text(
        "[study]\n"
        'name = "from-file"\n'
        "trials = 50\n"
        'sampler = "random"\n'
        "[model]\n"
        'name = "tiny"\n'
        "[backend]\n"
        'name = "null"\n'
        "options = { latency_ms = 1, per_sample_ms = 0.05 }\n"
        "[scenario]\n"
        'name = "offline"\n'
        "duration_s = 30.0\n"
        "[space]\n"
        "batch_sizes = [1, 2]\n"
        "streams = [1]\n"
        'precisions = ["fp32"]\n'
    )
    db = tmp_path / "study.db"
    argv = [
        "optimize",
        "--config",
        str(path),
        "--storage",
        sqlite_url(db),
        "--cache-dir",
        str(cache_dir),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--trials",
        "1",
        "--duration-s",
        "0.3",
        "--batch-sizes",
        "1,4",
        "--quiet",
    ]
    assert main(argv) == 0
    study = optuna.load_study(study_name="from-file", storage=sqlite_url(db))  # file's name
    assert len(study.get_trials()) == 1  # --trials 1, not the file's 50
    attrs = study.user_attrs
    assert study_setting(attrs, "duration_s") == 0.3  # flags
    assert study_setting(attrs, "trials_budget") == 1
    assert attrs["space"]["batch_size"] == [1, 4]  # --batch-sizes replaces the file's list ...
    assert attrs["space"]["streams"] == [1]  # ... and the file's other keys stay
    assert attrs["space"]["precision"] == ["fp32"]
    assert study_setting(attrs, "backend") == "null" and attrs["model"] == "tiny"


# ---------------------------------------------------------------------------- 6. bad input


@dataclass(frozen=True)
class Bad:
    id: str
    argv: list[str]
    code: int
    needle: str


OPTIMIZE = [
    "optimize",
    "--model",
    "tiny",
    "--backend",
    "null",
    "--storage",
    "sqlite:///{db}",
    "--cache-dir",
    "{cache}",
    "--runs-dir",
    "{tmp}/runs",
    "--duration-s",
    "0.3",
    "--trials",
    "1",
]
EXPORT = ["export", "--storage", "sqlite:///{db}", "--study", "{study}", "--out", "{out}"]
REPORT = ["report", "--storage", "sqlite:///{db}", "--study", "{study}", "--out", "{tmp}/report"]

BAD = [
    Bad("missing-model", [*OPTIMIZE, "--model", "{tmp}/missing.onnx"], 1, "missing.onnx"),
    Bad("not-onnx", [*OPTIMIZE, "--model", "{notes}"], 1, "notes.onnx"),
    Bad("fixed-batch", [*OPTIMIZE, "--model", "{fixed}"], 1, "fixed batch size 4"),
    Bad("batch-0", [*OPTIMIZE, "--batch-sizes", "0"], 2, "space.batch_sizes"),
    Bad("batch-negative", [*OPTIMIZE, "--batch-sizes", "-1"], 2, "got -1"),
    Bad("batch-word", [*OPTIMIZE, "--batch-sizes", "x"], 2, "got 'x'"),
    Bad("streams-0", [*OPTIMIZE, "--streams", "0"], 2, "space.streams"),
    Bad(
        "fp16-on-onnxruntime-cpu",
        [*OPTIMIZE, "--backend", "onnxruntime", "--device", "cpu", "--precisions", "fp16"],
        2,
        "fp16 is not supported",
    ),
    Bad("unknown-backend", [*OPTIMIZE, "--backend", "tensorflow"], 2, "'tensorflow'"),
    Bad("unknown-scenario", [*OPTIMIZE, "--scenario", "singlestream"], 2, "'singlestream'"),
    Bad(
        "latency-0",
        [*OPTIMIZE, "--scenario", "server", "--latency-ms", "0"],
        2,
        "scenario.latency_ms",
    ),
    Bad("percentile-0", [*OPTIMIZE, "--percentile", "0"], 2, "scenario.percentile"),
    Bad("answer-runs-0", [*OPTIMIZE, "--answer-runs", "0"], 2, "scenario.answer_runs"),
    Bad("percentile-100", [*OPTIMIZE, "--percentile", "100"], 2, "scenario.percentile"),
    Bad("unknown-sampler", [*OPTIMIZE, "--sampler", "cmaes"], 2, "'cmaes'"),
    Bad("p99-objective-offline", [*OPTIMIZE, "--objectives", "throughput,p99"], 2, "p99"),
    Bad("malformed-storage", [*OPTIMIZE, "--storage", "notaurl"], 2, "'notaurl'"),
    Bad("unreachable-storage", [*OPTIMIZE, "--storage", PG_URL], 1, "127.0.0.1:1"),
    Bad("corrupt-storage", [*OPTIMIZE, "--storage", "sqlite:///{junk}"], 1, "junk.db"),
    Bad("export-unknown-study", [*EXPORT, "--study", "no-such-study"], 1, "'no-such-study'"),
    Bad("export-no-complete-trial", [*EXPORT, "--study", "only-failed"], 1, "no complete"),
    Bad("export-unknown-format", [*EXPORT, "--format", "onnx"], 2, "'onnx'"),
    Bad("export-no-such-trial", [*EXPORT, "--trial", "99"], 1, "no trial 99"),
    Bad("export-malformed-storage", [*EXPORT, "--storage", "notaurl"], 2, "'notaurl'"),
    Bad("export-unreachable-storage", [*EXPORT, "--storage", PG_URL], 1, "127.0.0.1:1"),
    Bad("export-corrupt-storage", [*EXPORT, "--storage", "sqlite:///{junk}"], 1, "junk.db"),
    Bad("export-missing-db", [*EXPORT, "--storage", "sqlite:///{absent}"], 1, "absent.db"),
    Bad("export-foreign-sqlite", [*EXPORT, "--storage", "sqlite:///{foreign}"], 1, "foreign.db"),
    Bad("export-out-is-a-folder", [*EXPORT, "--out", "{tmp}"], 1, "{tmp}"),
    Bad("report-out-is-a-file", [*REPORT, "--out", "{notes}"], 1, "notes.onnx"),
]


def _fixed_batch_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])],
        "fixed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [4, 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def bad_env(tmp_path: Path, offline_study: MadeStudy) -> dict[str, str]:
    """Placeholders of the BAD table: a copy of the shared study (plus a study whose only
    trial failed), a text file, a fixed-batch model, random bytes and a foreign SQLite file."""
    copy = offline_study.copy_to(tmp_path)
    failed = optuna.create_study(study_name="only-failed", storage=copy.url)
    failed.add_trial(create_trial(state=TrialState.FAIL))
    notes = tmp_path / "notes.onnx"
    notes.write_text("not a model\n")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00junk" + os.urandom(4096))
    foreign = tmp_path / "foreign.db"

    with sqlite3.connect(foreign) as conn:
        conn.execute("create table notes (text)")
    return {
        "tmp": str(tmp_path),
        "db": str(copy.db),
        "study": copy.name,
        "cache": str(offline_study.cache_dir),
        "out": str(tmp_path / "out" / "best.json"),
        "notes": str(notes),
        "fixed": str(_fixed_batch_model(tmp_path / "fixed.onnx")),
        "junk": str(junk),
        "foreign": str(foreign),
        "absent": str(tmp_path / "absent.db"),
    }


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_input_is_one_line_and_leaves_the_database_alone(
    bad: Bad, bad_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    watched = [Path(bad_env[k]) for k in ("db", "junk", "foreign", "absent")]
    before = [sha256(p) for p in watched]
    assert before[-1] is None  # absent.db does not exist
    argv = [arg.format(**bad_env) for arg in bad.argv]
    assert run(argv) == bad.code
    out, err = capsys.readouterr()
    line = one_error_line(err)
    assert bad.needle.format(**bad_env) in line
    assert "Traceback" not in out
    assert "secret" not in out + err
    assert [sha256(p) for p in watched] == before  # byte for byte; absent.db still absent
    assert not Path(bad_env["out"]).exists()


def test_debug_shows_the_exception(bad_env: dict[str, str]) -> None:
    argv = [arg.format(**bad_env) for arg in OPTIMIZE]
    with pytest.raises(ConfigError, match=r"space\.streams"):
        main([*argv, "--streams", "0", "--debug"])
    with pytest.raises(ModelError, match=r"notes\.onnx"):
        main([*argv, "--model", bad_env["notes"], "--debug"])


@pytest.mark.parametrize("command", ["export", "optimize"])
def test_a_real_process_prints_one_line(command: str, bad_env: dict[str, str]) -> None:
    """`python -m tuner` itself: nothing but the error line on stderr (no warnings)."""
    if command == "export":
        argv = [*EXPORT, "--study", "no-such-study"]
        code = 1
    else:
        argv = [*OPTIMIZE, "--streams", "0"]
        code = 2
    env = {k: v for k, v in os.environ.items() if k not in ("TUNER_STORAGE", "PYTHONWARNINGS")}
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", *[a.format(**bad_env) for a in argv]],
        capture_output=True,
        text=True,
        env=env,
        cwd=bad_env["tmp"],
        timeout=120,
    )
    assert proc.returncode == code
    one_error_line(proc.stderr)


def test_quiet_optimize_prints_only_the_summary(tmp_path: Path, cache_dir: Path) -> None:
    """A real `python -m tuner optimize -q`: the summary on stdout, nothing on stderr (no
    Optuna INFO log, no ExperimentalWarning)."""
    db = tmp_path / "quiet.db"
    argv = [a.format(db=db, cache=cache_dir, tmp=tmp_path) for a in OPTIMIZE]
    env = {k: v for k, v in os.environ.items() if k not in ("TUNER_STORAGE", "PYTHONWARNINGS")}
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", *argv, "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("study tiny-offline-null-simulated-cpu (simulated")
    assert "1 trials, 1 complete, 0 failed" in proc.stdout


# ---------------------------------------------------------------------------- 7. multi-objective


def test_multi_objective_server_study_exports_its_pareto_front(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "mo.db"
    argv = [
        *NULL_SERVER,
        "--objectives",
        "throughput,p99",
        "--trials",
        "1",
        "--backend-option",
        "latency_ms=1",
        "--backend-option",
        "per_sample_ms=0.05",
        "--storage",
        sqlite_url(db),
        "--cache-dir",
        str(cache_dir),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--duration-s",
        "0.3",
        "--quiet",
    ]
    assert main(argv) == 0
    (summary,) = optuna.get_all_study_summaries(sqlite_url(db))
    name = summary.study_name
    study = optuna.load_study(study_name=name, storage=sqlite_url(db))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["valid"] is True
    capsys.readouterr()
    assert main(["studies", "--storage", sqlite_url(db)]) == 0
    (row,) = [r for r in capsys.readouterr().out.splitlines() if r.startswith(name)]
    assert re.split(r"\s{2,}", row)[8] == f"{trial.values[0]:,.2f}"  # the front's throughput

    export = ["export", "--storage", sqlite_url(db), "--study", name]
    out = tmp_path / "front.json"
    assert main([*export, "--out", str(out)]) == 0  # a front of one needs no --trial
    doc = json.loads(out.read_text())
    assert doc["trial"]["number"] == trial.number
    assert doc["study"]["directions"] == ["maximize", "minimize"]
    conf = tmp_path / "user.conf"
    assert main([*export, "--format", "user.conf", "--out", str(conf)]) == 0
    assert "tiny.Server.target_latency = 20\n" in conf.read_text()

    # A second Pareto-optimal trial: faster but with a worse p99.
    throughput, p99 = trial.values
    study.add_trial(
        create_trial(
            values=[throughput * 2, p99 * 2],
            params={**trial.params, "batch_size": 4},
            distributions=trial.distributions,
            user_attrs={**trial.user_attrs, "qps": throughput * 2},
            constraints=trial.constraints,
        )
    )
    capsys.readouterr()
    ambiguous = tmp_path / "ambiguous.json"
    assert main([*export, "--out", str(ambiguous)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "--trial" in line and "2 Pareto-optimal" in line
    assert not ambiguous.exists()
    assert main([*export, "--trial", "1", "--out", str(ambiguous)]) == 0
    assert json.loads(ambiguous.read_text())["trial"]["params"]["batch_size"] == 4


def test_a_server_summary_shows_the_latency_at_the_bounds_percentile(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A p90 bound: the summary's latency column is the trial's p90, not its p99."""
    db = tmp_path / "p90.db"
    argv = [
        *NULL_SERVER,
        "--percentile",
        "90",
        "--trials",
        "1",
        "--confirm-runs",
        "0",
        "--backend-option",
        "latency_ms=1",
        "--storage",
        sqlite_url(db),
        "--cache-dir",
        str(cache_dir),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--duration-s",
        "0.3",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    (header,) = [line for line in out.splitlines() if line.startswith(" ") and "trial" in line]
    assert "p90 ms" in header and "p99 ms" not in header
    (summary,) = optuna.get_all_study_summaries(sqlite_url(db))
    (trial,) = optuna.load_study(study_name=summary.study_name, storage=sqlite_url(db)).trials
    (best,) = [line for line in out.splitlines() if line.startswith("best ")]
    assert f"{trial.user_attrs['p90_ms']:,.2f}" in best.split()

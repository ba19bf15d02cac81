"""`optimize --gpus` and `system` on simulated GPUs: fake NVML discoveries, the null backend
standing in for a GPU backend, real worker processes, real LoadGen, real SQLite."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from harness import gpus
from harness.errors import ConfigError, TunerError
from harness.gpus import Discovery, GpuInfo
from tests.harness.test_system import check_spread
from tests.tuner.cli_checks import one_error_line, run, sha256
from tuner import config
from tuner.system import SYSTEM_RESULT
from tuner.workers import (
    Command,
    GpuGroup,
    gpu_commands,
    group_by_model,
    run_processes,
    select_gpus,
    visible_devices,
)

T4 = "Tesla T4"
A100 = "NVIDIA A100-SXM4-40GB"
FAKE = (
    GpuInfo(0, T4, "GPU-aaaa-0000", 15360, "7.5"),
    GpuInfo(1, T4, "GPU-bbbb-1111", 15360, "7.5"),
    GpuInfo(2, A100, "GPU-cccc-2222", 40960, "8.0"),
)
T4_STUDY = "tiny-offline-null-tesla-t4"
A100_STUDY = "tiny-offline-null-nvidia-a100-sxm4-40gb"


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> tuple[GpuInfo, ...]:
    monkeypatch.setattr(gpus, "discover", lambda *a, **k: Discovery(FAKE))
    return FAKE


def optimize_argv(db: Path, folder: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [
        "optimize",
        "--model",
        "tiny",
        "--backend",
        "null",
        "--batch-sizes",
        "1,2,4",
        "--streams",
        "1",
        "--backend-option",
        "latency_ms=1",
        "--backend-option",
        "per_sample_ms=0.05",
        "--prune",  # every trial measured in full: the tests count them per GPU
        "off",
        "--duration-s",
        "0.3",
        "--storage",
        f"sqlite:///{db}",
        "--cache-dir",
        str(cache_dir),
        "--runs-dir",
        str(folder / "runs"),
        *extra,
    ]


# ------------------------------------------------------------------ selection and grouping


def test_gpu_selection() -> None:
    assert select_gpus("all", FAKE) == list(FAKE)
    assert select_gpus("2,0", FAKE) == [FAKE[2], FAKE[0]]
    assert select_gpus(" 1 ", FAKE) == [FAKE[1]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5", "--gpus: no GPU 5 (found: 0, 1, 2)"),
        ("0,7", "--gpus: no GPU 7 (found: 0, 1, 2)"),
        ("x", "--gpus: 'x' is not a GPU index (found: 0, 1, 2)"),
        ("-1", "--gpus: '-1' is not a GPU index (found: 0, 1, 2)"),
        ("0,,1", "--gpus: expected 'all' or indices like 0,2, got '0,,1'"),
        ("", "--gpus: expected 'all' or indices like 0,2, got ''"),
        ("1,1", "--gpus: GPU 1 is given twice"),
    ],
)
def test_bad_gpu_selections_name_the_value(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        select_gpus(text, FAKE)
    assert str(caught.value) == message


def test_no_gpu_found_says_why() -> None:
    with pytest.raises(TunerError, match=r"^--gpus: no NVIDIA GPU found: NVML is not available"):
        select_gpus("all", (), "NVML is not available: Driver Not Loaded")


def test_gpus_of_one_model_share_a_group() -> None:
    groups = group_by_model([FAKE[2], FAKE[0], FAKE[1]])
    assert [(g.model, [x.index for x in g.gpus]) for g in groups] == [(A100, [2]), (T4, [0, 1])]
    assert groups[1].visible == "GPU-aaaa-0000,GPU-bbbb-1111"


def test_one_worker_per_gpu_sees_only_its_gpu(tmp_path: Path) -> None:
    groups = [GpuGroup(T4, FAKE[:2], "t4-study"), GpuGroup(A100, FAKE[2:], "a100-study")]
    storage = "postgresql+psycopg://u:secret@127.0.0.1:1/x"
    commands = gpu_commands(
        groups, storage, tmp_path / "cache", tmp_path / "runs", 7, True, environ={"KEEP": "1"}
    )
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in commands] == [g.uuid for g in FAKE]
    assert all(c.env["TUNER_STORAGE"] == storage and c.env["KEEP"] == "1" for c in commands)
    assert all(storage not in " ".join(c.argv) for c in commands)  # never on a command line
    studies = [c.argv[c.argv.index("--study") + 1] for c in commands]
    assert studies == ["t4-study", "t4-study", "a100-study"]
    names = [c.argv[c.argv.index("--worker-name") + 1] for c in commands]
    assert names == [f"gpu 0 ({T4})", f"gpu 1 ({T4})", f"gpu 2 ({A100})"]
    first = commands[0].argv
    assert first[1:4] == ["-m", "tuner", "worker"] and "--quiet" in first
    assert first[first.index("--heartbeat-s") + 1] == "7"


class FakeProcess:
    def __init__(self, code: int) -> None:
        self.code = code

    def wait(self) -> int:
        return self.code

    def poll(self) -> int:
        return self.code


@pytest.mark.parametrize(("codes", "expected"), [([0, 0], 0), ([0, 3], 3), ([-9, 0], 137)])
def test_run_processes_reports_the_worst_exit(codes: list[int], expected: int) -> None:
    started: list[tuple[list[str], dict[str, str]]] = []
    remaining = list(codes)

    def popen(argv: list[str], env: dict[str, str], preexec_fn: Callable[[], None]) -> FakeProcess:
        assert callable(preexec_fn)  # the parent-death signal, armed in the started process
        started.append((argv, env))
        return FakeProcess(remaining.pop(0))

    commands = [Command(["w", str(i)], {"N": str(i)}) for i in range(len(codes))]
    assert run_processes(commands, popen) == expected
    assert started == [(c.argv, c.env) for c in commands]


def test_visible_devices_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with visible_devices("GPU-aaaa-0000"):
        import os

        assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa-0000"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with visible_devices("0"):
        pass
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("extra", "code", "fragment"),
    [
        (["--gpus", "5"], 2, "--gpus: no GPU 5 (found: 0, 1, 2)"),
        (["--gpus", "0,x"], 2, "--gpus: 'x' is not a GPU index"),
        (["--gpus", "all", "--backend", "onnxruntime"], 2, "needs a GPU backend"),
        (["--gpus", "all", "--workers", "2"], 2, "--workers: --gpus starts one worker per GPU"),
        (["--gpus", "all", "--device", "cuda:1"], 2, "--device: each --gpus worker runs on"),
        (["--gpus", "all", "--study", "mine"], 2, "--study: one name for GPUs of 2 models"),
        # Raised while the study is prepared in a child process: still one line, exit 2.
        (["--gpus", "0", "--backend-option", "jitter=-1"], 2, "backend null: jitter must be"),
    ],
)
def test_bad_optimize_gpus_input_is_one_line_and_writes_nothing(
    extra: list[str],
    code: int,
    fragment: str,
    fake_gpus: Any,
    tmp_path: Path,
    cache_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "study.db"
    assert run(optimize_argv(db, tmp_path, cache_dir, *extra)) == code
    assert fragment in one_error_line(capsys.readouterr().err)
    assert not db.exists()


def test_optimize_gpus_without_a_gpu_says_why(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cache_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reason = "NVML is not available: NVML Shared Library Not Found"
    monkeypatch.setattr(gpus, "discover", lambda *a, **k: Discovery((), reason))
    db = tmp_path / "study.db"
    assert run(optimize_argv(db, tmp_path, cache_dir, "--gpus", "all")) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == f"tuner: error: --gpus: no NVIDIA GPU found: {reason}"
    assert not db.exists()


def _infeasible_study(db: Path, cache_dir: Path) -> str:
    """A study as `optimize --gpus` makes it, whose only trial failed."""
    cfg = config.build(
        model="tiny",
        backend="null",
        device="cuda:0",
        backend_options={"device_name": T4},
        cache_dir=cache_dir,
    )
    study = optuna.create_study(study_name=T4_STUDY, storage=f"sqlite:///{db}")
    study.set_user_attr("config", config.to_stored(cfg))
    study.set_user_attr("device", f"simulated {T4} (cuda:0)")
    study.set_user_attr("backend", "null")
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)
    return T4_STUDY


@pytest.mark.parametrize(
    ("extra", "code", "fragment"),
    [
        ([], 1, f"study {T4_STUDY!r} has no feasible trial"),
        (["--gpus", "9"], 1, "has no feasible trial"),  # the study is checked first
    ],
)
def test_system_on_a_study_without_a_feasible_trial(
    extra: list[str],
    code: int,
    fragment: str,
    fake_gpus: Any,
    tmp_path: Path,
    cache_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "study.db"
    name = _infeasible_study(db, cache_dir)
    before = sha256(db)
    argv = ["system", "--study", name, "--storage", f"sqlite:///{db}", *extra]
    assert run(argv) == code
    assert fragment in one_error_line(capsys.readouterr().err)
    assert sha256(db) == before


def test_system_on_a_missing_study(
    fake_gpus: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "study.db"
    _infeasible_study(db, tmp_path)
    assert run(["system", "--study", "nope", "--storage", f"sqlite:///{db}"]) == 1
    assert "study 'nope' not found" in one_error_line(capsys.readouterr().err)


def test_system_rejects_a_cpu_backend_study(
    fake_gpus: Any,
    offline_study: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The shared study is null on the CPU: its device is no GPU of the selection."""
    made = offline_study.copy_to(tmp_path)
    before = sha256(made.db)
    argv = ["system", "--study", made.name, "--storage", made.url, "--gpus", "0"]
    assert run(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "was tuned on 'simulated (cpu)', not on 'Tesla T4'" in line
    assert sha256(made.db) == before


# ------------------------------------------------------------------------------ end to end


def test_optimize_on_three_gpus_of_two_models_then_a_system_run(
    fake_gpus: Any,
    tmp_path: Path,
    cache_dir: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """2 x T4 share one study, 1 x A100 gets its own; each spends its budget exactly; then
    the T4 study's best configuration runs on both T4s as one system."""
    db = tmp_path / "study.db"
    flags = ["--gpus", "all", "--trials", "3", "--confirm-runs", "1", "--confirm-top", "1"]
    argv = optimize_argv(db, tmp_path, cache_dir, *flags)
    assert run(argv) == 0
    out, err = capfd.readouterr()
    assert "Traceback" not in err
    storage = f"sqlite:///{db}"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == sorted([T4_STUDY, A100_STUDY])
    for name, model in ((T4_STUDY, T4), (A100_STUDY, A100)):
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, name
        assert study.user_attrs["device"] == f"simulated {model} (cuda:0)"
        assert study.user_attrs["config"]["device"] == "cuda:0"
        assert study.user_attrs["config"]["backend_options"]["device_name"] == model
        assert study.user_attrs.get("confirmed_best") is not None  # confirmed on its model
        assert all("gpu" not in t.user_attrs for t in trials)  # simulated: no telemetry
        assert f"study {name}" in out
    # Each worker said how many trials it ran: the T4 pair shares its study's 3.
    ran = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"(gpu \d \([^)]*\)): done: ran (\d+) trial", err)
    }
    assert set(ran) == {f"gpu 0 ({T4})", f"gpu 1 ({T4})", f"gpu 2 ({A100})"}, err
    assert ran[f"gpu 0 ({T4})"] + ran[f"gpu 1 ({T4})"] == 3
    assert ran[f"gpu 2 ({A100})"] == 3

    # Mixed models cannot run one study's configuration as a system.
    base = ["system", "--study", T4_STUDY, "--storage", storage, "--cache-dir", str(cache_dir)]
    assert run([*base, "--gpus", "all"]) == 2
    assert "GPUs are of 2 models" in one_error_line(capfd.readouterr().err)
    assert run([*base, "--gpus", "2"]) == 2
    assert "not on 'NVIDIA A100-SXM4-40GB'" in one_error_line(capfd.readouterr().err)

    runs_dir = tmp_path / "system-runs"
    assert run([*base, "--gpus", "0,1", "--runs-dir", str(runs_dir), "--quiet"]) == 0
    out, err = capfd.readouterr()
    assert "Traceback" not in err
    study = optuna.load_study(study_name=T4_STUDY, storage=storage)
    result = study.user_attrs[SYSTEM_RESULT]
    assert result["valid"] and result["scenario"] == "offline" and result["simulated"]
    assert result["trial"] == study.user_attrs["confirmed_best"]
    assert [d["gpu_index"] for d in result["devices"]] == [0, 1]
    assert [d["device"] for d in result["devices"]] == ["cuda:0", "cuda:1"]
    assert [g["uuid"] for g in result["gpus"]] == [FAKE[0].uuid, FAKE[1].uuid]
    issued = sum(r["sample_count"] for r in result["loadgen_runs"])
    assert sum(d["samples"] for d in result["devices"]) == issued
    check_spread(result)  # in proportion to each T4's warm-up rate
    assert Path(result["log_dir"]).is_relative_to(runs_dir / T4_STUDY)
    assert f"system run of study {T4_STUDY}" in out and "[simulated]" in out
    assert re.search(r"^all\s", out, re.M) and "samples/s VALID" in out


def test_a_system_run_keeps_every_study_setting_of_its_trial() -> None:
    """`tuner system` maps the study the way trials do (it used to drop `answer_runs`)."""
    from tuner import config
    from tuner.space import Params
    from tuner.study import trial_configs
    from tuner.system import SystemRequest, system_configs

    cfg = config.build(scenario="server", answer_runs=3, latency_ms=30.0, min_queries=900)
    point = Params(batch_size=4, streams=2, precision="int8", deque_timeout_us=500)
    request = SystemRequest(storage="sqlite://", study="s", duration_s=7.0)
    run, spec = system_configs(cfg, request, point, 5)
    trial_run, trial_spec = trial_configs(cfg, point, "s", 5)
    assert run == trial_run
    assert (spec.answer_runs, spec.latency_ms, spec.min_queries) == (3, 30.0, 900)
    assert spec.percentile == trial_spec.percentile and spec.find_max_qps
    assert spec.duration_s == 7.0 and spec.out_dir.name.startswith("system-server-")
    offline = system_configs(cfg, SystemRequest("sqlite://", "s", scenario="offline"), point, 5)
    assert offline[1].scenario == "offline" and not offline[1].find_max_qps
    assert offline[1].duration_s == cfg.duration_s

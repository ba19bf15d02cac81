"""The runtime as a searched dimension (`--backends`, `space.backends`, `--backend auto`):
how a study's settings resolve to runtimes, the space each runtime's precisions make, the
sampler never proposing a pair a runtime cannot run, and studies of one runtime resuming as
they were stored."""

from __future__ import annotations

import shlex
from pathlib import Path

import optuna
import pytest
from google.protobuf import text_format
from optuna.trial import TrialState

from harness.backends import default_runtimes
from harness.errors import ConfigError
from tests.tuner.test_export import _triton_pb2
from tests.tuner.test_optimize import common
from tuner.cli import main
from tuner.config import Space, StudyConfig, build, from_stored, to_stored
from tuner.results import TrialRecord
from tuner.sampling import NoRepeatSampler
from tuner.space import Params, SearchSpace, resolve_space
from tuner.study import prepare, probe_device, runtime_label, study_name, trial_configs

BOTH = ("onnxruntime", "openvino")


def test_auto_on_a_cpu_searches_every_cpu_runtime_installed() -> None:
    cfg = StudyConfig()
    assert cfg.runtimes == default_runtimes("cpu") == BOTH
    assert cfg.backend == "onnxruntime"  # the baseline's runtime
    assert cfg.space.backends == BOTH
    assert runtime_label(cfg) == "onnxruntime,openvino"
    assert study_name("resnet50", "offline", runtime_label(cfg), "AMD EPYC (2 cores)") == (
        "resnet50-offline-onnxruntime+openvino-amd-epyc-2-cores"
    )


@pytest.mark.parametrize("name", ["onnxruntime", "openvino", "null"])
def test_one_named_backend_is_a_study_of_one_runtime(name: str) -> None:
    cfg = StudyConfig(backend=name)
    assert cfg.runtimes == (name,) and cfg.space.backends is None
    assert "backend" not in resolve_space(cfg).grid()


def test_a_list_of_one_is_a_study_of_one_runtime() -> None:
    cfg = build(backends=["openvino"])
    assert cfg.backend == "openvino" and cfg.space.backends is None


def test_backends_keep_their_order_and_a_named_backend_leads_them() -> None:
    """`--backend` names the baseline's runtime: it joins `--backends`, first."""
    assert build(backends=["openvino", "onnxruntime"]).runtimes == ("openvino", "onnxruntime")
    named = build(backend="onnxruntime", backends=["openvino", "onnxruntime"])
    assert named.runtimes == ("onnxruntime", "openvino") and named.backend == "onnxruntime"
    joined = build(backend="null", backends=["openvino"])
    assert joined.runtimes == ("null", "openvino")


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        (["onnxruntime", "tensorflow"], r"space.backends: unknown backend 'tensorflow' \(valid:"),
        (["openvino", "openvino"], r"space.backends: must be a list of distinct names"),
    ],
)
def test_bad_backends_name_the_key_and_the_value(backends: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(backends=backends)


def test_an_option_no_runtime_of_the_study_takes_is_refused(tmp_path: Path) -> None:
    cfg = build(backends=list(BOTH), backend_options={"latency_ms": 1})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['latency_ms'\] for onnxruntime"):
        probe_device(cfg, tmp_path / "m.onnx")
    cfg = build(backends=list(BOTH), backend_options={"batch_shape": "dynamic"})
    assert cfg.backend_options_for("openvino") == {"batch_shape": "dynamic"}
    assert cfg.backend_options_for("onnxruntime") == {}
    assert probe_device(cfg, tmp_path / "m.onnx").backend == "onnxruntime"


def test_the_space_pairs_each_runtime_with_its_own_precisions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("harness.backends.openvino.cpu_flags", lambda: ["avx512_bf16"])
    cfg = StudyConfig(space=Space(batch_sizes=(1, 4), streams=(1, 2)))
    space = resolve_space(cfg)
    assert space.grid()["backend"] == list(BOTH)
    assert space.precisions == ("fp32", "bf16", "int8")
    assert space.excluded == (("onnxruntime", "bf16"),)
    points = space.points()
    assert len(points) == space.size == 2 * 2 * (2 + 3)
    assert not any(p["backend"] == "onnxruntime" and p["precision"] == "bf16" for p in points)
    assert space.baseline() == {
        "backend": "onnxruntime",
        "batch_size": 1,
        "streams": 1,
        "precision": "fp32",
    }
    with pytest.raises(ConfigError, match="backend onnxruntime does not run precision bf16"):
        space.complete({"backend": "onnxruntime", "precision": "bf16"})
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_screening_measures_every_runtime_and_precision_once_lowest_precision_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("harness.backends.openvino.cpu_flags", lambda: ["avx2"])
    cfg = StudyConfig(space=Space(batch_sizes=(1, 2, 4, 8), streams=(1, 2)))
    space = resolve_space(cfg)
    assert space.screening() == [
        {"backend": b, "batch_size": 4, "streams": 2, "precision": p}
        for p in ("int8", "fp32")
        for b in BOTH
    ]
    assert resolve_space(StudyConfig(backend="onnxruntime")).screening() == []


def test_the_sampler_never_proposes_a_pair_a_runtime_cannot_run() -> None:
    """Random sampling over a space where most pairs are excluded: every proposal is
    runnable and new until the space is spent."""
    space = SearchSpace(
        batch_sizes=(1, 2),
        streams=(1,),
        precisions=("fp32", "bf16", "int8"),
        deque_timeout_us=None,
        backends=BOTH,
        excluded=(("onnxruntime", "bf16"), ("onnxruntime", "int8"), ("openvino", "bf16")),
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=NoRepeatSampler(optuna.samplers.RandomSampler(seed=1), space, seed=1),
    )
    seen = []
    for _ in range(space.size):
        trial = study.ask()
        params = space.suggest(trial)
        seen.append(dict(trial.params))
        study.tell(trial, float(params.batch_size))
    assert len(space.points()) == 6
    assert sorted(map(str, seen)) == sorted(map(str, space.points()))


def _study_of(space: SearchSpace) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = NoRepeatSampler(optuna.samplers.RandomSampler(seed=3), space, seed=3)
    return optuna.create_study(direction="maximize", sampler=sampler)


def _told(
    study: optuna.Study, space: SearchSpace, params: dict[str, object], **how: object
) -> None:
    """Enqueue `params` and tell it: infeasible (`on`: the runtime that cannot read the file,
    None: the file cannot be made) or, with `failed`, a FAIL of that reason."""
    study.enqueue_trial(params)
    trial = study.ask()
    space.suggest(trial)
    if "failed" in how:
        trial.set_user_attr("failure", "error")
        trial.set_user_attr("fail_reason", how["failed"])
        study.tell(trial, state=TrialState.FAIL)
        return
    TrialRecord.infeasible("cannot", 1.0, on=how.get("on")).store(trial)  # type: ignore[arg-type]
    study.tell(trial, 0.0)


def _proposed(study: optuna.Study, space: SearchSpace, n: int) -> list[dict[str, object]]:
    seen = []
    for _ in range(n):
        trial = study.ask()
        params = space.suggest(trial)
        seen.append(dict(trial.params))
        study.tell(trial, float(params.batch_size))
    assert len({str(p) for p in seen}) == n  # each proposal new
    return seen


CPU_SPACE = SearchSpace(
    batch_sizes=(1, 2, 4),
    streams=(1, 2),
    precisions=("fp32", "bf16", "int8"),
    deque_timeout_us=None,
    backends=BOTH,
    excluded=(("onnxruntime", "bf16"),),
)


def test_a_file_a_runtime_cannot_read_takes_out_its_configurations_that_load_that_file() -> None:
    """A trial infeasible on OpenVINO (its frontend refused the model file, harness
    ModelUnreadable) takes out every OpenVINO configuration that loads that file: fp32 and
    bf16 both load the model itself, int8 its variant stays, as does ONNX Runtime on the same
    file. A failure of another kind (a compile failure at one batch) takes out only itself."""
    space = CPU_SPACE
    assert space.size == 12 + 18
    study = _study_of(space)
    unreadable = {"backend": "openvino", "precision": "bf16", "batch_size": 2, "streams": 2}
    _told(study, space, unreadable, on="openvino")
    other = {"backend": "openvino", "precision": "int8", "batch_size": 4, "streams": 2}
    _told(study, space, other, failed="openvino: cannot load m.onnx: cannot compile batch 4")
    seen = _proposed(study, space, space.size - 12 - 1)
    pairs = {(p["backend"], p["precision"]) for p in seen}
    assert pairs == {("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "int8")}
    assert other not in seen


def test_a_precision_file_that_cannot_be_made_takes_out_that_precision_on_every_runtime() -> None:
    """An infeasible trial whose precision's file cannot be made (harness VariantUnavailable:
    no runtime named) takes out every configuration that loads that file, on both runtimes."""
    space = CPU_SPACE
    study = _study_of(space)
    _told(study, space, {"backend": "onnxruntime", "precision": "int8", "batch_size": 1})
    seen = _proposed(study, space, space.size - 12)
    assert {p["precision"] for p in seen} == {"fp32", "bf16"}


def test_a_precision_under_the_accuracy_floor_on_a_runtime_takes_out_that_pair_alone() -> None:
    """OpenVINO's bf16 under the accuracy floor takes out OpenVINO bf16 only: OpenVINO fp32
    loads the same file but is judged apart, and ONNX Runtime's precisions stay."""
    space = CPU_SPACE
    study = _study_of(space)
    study.enqueue_trial({"backend": "openvino", "precision": "bf16", "batch_size": 1})
    trial = study.ask()
    space.suggest(trial)
    trial.set_constraint("accuracy", 0.3)
    study.tell(trial, 50.0)
    seen = _proposed(study, space, space.size - 6)
    pairs = {(p["backend"], p["precision"]) for p in seen}
    assert ("openvino", "bf16") not in pairs and ("openvino", "fp32") in pairs
    assert len(pairs) == 4


def test_the_file_a_configuration_loads_follows_its_runtime() -> None:
    """fp32 and bf16 load the model itself, other precisions their variant; a runtime that
    casts the model itself (torch) loads the model itself at every precision; a study of one
    runtime names it once, for every point."""
    assert CPU_SPACE.source({"backend": "openvino", "precision": "bf16"}) == ("openvino", "fp32")
    assert CPU_SPACE.source({"backend": "onnxruntime", "precision": "int8"}) == (
        "onnxruntime",
        "int8",
    )
    one = resolve_space(StudyConfig(backend="torch"))
    assert one.runtime == "torch" and one.source({"precision": "int8"}) == ("torch", "fp32")
    assert resolve_space(build(backends=list(BOTH))).runtime is None


def test_each_trial_runs_on_its_runtime_with_that_runtimes_options() -> None:
    cfg = build(backends=list(BOTH), backend_options={"batch_shape": "static"})
    params = Params(batch_size=4, streams=2, precision="int8", backend="openvino")
    run, _ = trial_configs(cfg, params, "s", 3)
    assert (run.backend, run.backend_options) == ("openvino", {"batch_shape": "static"})
    base = Params(batch_size=1, streams=1, precision="fp32", backend="onnxruntime")
    assert trial_configs(cfg, base, "s", 0)[0].backend_options == {}
    assert params.label() == "openvino, batch 4, 2 stream(s), int8"


def test_a_study_stored_with_one_backend_resumes_with_that_backend_alone() -> None:
    """A study made before runtimes were searched stored `backend` and no `space.backends`:
    it resumes as a study of that runtime, its trials' parameters unchanged."""
    stored = to_stored(StudyConfig(backend="onnxruntime"))
    assert stored["backend"] == "onnxruntime" and stored["space"]["backends"] is None
    del stored["space"]["backends"]  # as the code before stored it
    again = from_stored(stored)
    assert again.runtimes == ("onnxruntime",)
    assert list(resolve_space(again).grid()) == ["batch_size", "streams", "precision"]
    several = from_stored(to_stored(StudyConfig()))
    assert several.runtimes == BOTH


# --- end to end: a study of both CPU runtimes, its summary, listing, report and exports ------


def test_a_study_of_both_cpu_runtimes_end_to_end(
    tmp_path: Path, cache_dir: Path, mlp_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real ONNX Runtime and OpenVINO under real LoadGen: the baseline and the four screening
    points (each runtime at int8 and fp32) are the five trials; every view names each trial's
    runtime, and the exports follow the runtime of the trial they export."""
    db = f"sqlite:///{tmp_path / 'study.db'}"  # common()'s
    args = [
        "optimize",
        "--model",
        str(mlp_model),
        "--backends",
        "onnxruntime,openvino",
        "--batch-sizes",
        "1,4",
        "--streams",
        "1",
        "--precisions",
        "fp32,int8",
        "--trials",
        "5",
        "--prune",  # every screening point measured in full: each view names its runtime
        "off",
        *common(tmp_path, cache_dir),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    (summary,) = optuna.get_all_study_summaries(db)
    assert summary.study_name.startswith("mlp-offline-onnxruntime+openvino-")
    study = optuna.load_study(study_name=summary.study_name, storage=db)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    measured = {
        (t.params["backend"], t.params["precision"], t.params["batch_size"]) for t in trials
    }
    assert measured == {
        ("onnxruntime", "fp32", 1),
        ("onnxruntime", "int8", 4),
        ("openvino", "int8", 4),
        ("onnxruntime", "fp32", 4),
        ("openvino", "fp32", 4),
    }
    for t in trials:  # each measured by the runtime its parameters name
        assert t.user_attrs["backend"] == t.params["backend"]
        assert t.params["backend"] in t.user_attrs["versions"]
    ov = [t for t in trials if t.params["backend"] == "openvino"]
    assert all(t.user_attrs["backend_details"]["num_streams"] == 1 for t in ov)
    assert "runtime" in out.split("speed-up")[0]  # the summary table has the column
    assert "on onnxruntime,openvino" in out
    assert "best on onnxruntime: trial" in out and "best on openvino: trial" in out

    assert main(["studies", "--storage", db]) == 0
    assert "onnxruntime,openvino" in capsys.readouterr().out

    report = tmp_path / "report.json"
    assert (
        main(["report", "--storage", db, "--study", summary.study_name, "--json", str(report)])
        == 0
    )
    assert "onnxruntime,openvino" in report.read_text()
    capsys.readouterr()
    folder = tmp_path / "report"
    assert (
        main(["report", "--storage", db, "--study", summary.study_name, "--out", str(folder)]) == 0
    )
    table = capsys.readouterr().out
    assert "runtime" in table and "openvino" in table

    pb2 = _triton_pb2()
    ov_trial = next(t for t in ov if t.params["precision"] == "fp32")  # int8: infeasible here
    base = ["export", "--storage", db, "--study", summary.study_name, "--trial"]
    config = tmp_path / "config.pbtxt"
    assert main([*base, str(ov_trial.number), "--format", "triton", "--out", str(config)]) == 0
    parsed = text_format.Parse(config.read_text(), pb2.ModelConfig())
    assert parsed.backend == "openvino" and not parsed.platform
    assert parsed.default_model_filename == "model.onnx"
    assert parsed.max_batch_size == ov_trial.params["batch_size"]
    assert parsed.parameters["NUM_STREAMS"].string_value == "1"
    assert parsed.parameters["ENABLE_BATCH_PADDING"].string_value == "YES"
    ort_trial = next(t for t in trials if t.params["backend"] == "onnxruntime")
    assert main([*base, str(ort_trial.number), "--format", "triton", "--out", str(config)]) == 0
    parsed = text_format.Parse(config.read_text(), pb2.ModelConfig())
    assert parsed.platform == "onnxruntime_onnx" and not parsed.backend

    command = tmp_path / "bench.sh"
    fmt = ["--format", "benchmark_app", "--out", str(command)]
    assert main([*base, str(ov_trial.number), *fmt]) == 0
    (line,) = [x for x in command.read_text().splitlines() if not x.startswith("#")]
    argv = shlex.split(line)
    assert argv[:2] == ["benchmark_app", "-m"]
    assert Path(argv[2]) == Path(ov_trial.user_attrs["variant_path"])
    assert argv[argv.index("-shape") + 1] == f"input[{ov_trial.params['batch_size']},16]"
    assert argv[argv.index("-nstreams") + 1] == "1"


@pytest.mark.parametrize(("trials", "sampler", "waiting"), [(3, "tpe", 3), (9, "tpe", 5)])
def test_screening_points_fit_the_budget(
    tmp_path: Path, mlp_model: Path, trials: int, sampler: str, waiting: int
) -> None:
    """The baseline and the screening points are enqueued, never more than the budget."""
    cfg = build(
        model=str(mlp_model),
        backends=list(BOTH),
        precisions=["fp32", "int8"],
        trials=trials,
        sampler=sampler,
        storage=f"sqlite:///{tmp_path / 's.db'}",
        cache_dir=tmp_path / "cache",
    )
    study = prepare(cfg).study
    enqueued = study.get_trials(states=(TrialState.WAITING,))
    assert len(enqueued) == waiting
    assert enqueued[0].system_attrs["fixed_params"]["backend"] == "onnxruntime"

"""tuner.export: every format is checked by its real consumer (LoadGen FromConfig, protobuf
text_format into Triton's ModelConfig, json, shlex)."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path
from types import ModuleType
from typing import Any

import mlperf_loadgen as lg
import optuna
import pytest
from google.protobuf import text_format
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from harness.errors import ConfigError, TunerError
from tuner.export import FORMATS, choose_trial, export
from tuner.results import study_setting

INPUTS = [{"name": "input", "dtype": "float32", "sample_shape": [3, 224, 224]}]
OUTPUTS = [{"name": "logits", "dtype": "float32", "sample_shape": [1000]}]
DISTS: dict[str, BaseDistribution] = {
    "batch_size": CategoricalDistribution([1, 2, 4, 8, 16, 26, 32, 256]),
    "streams": CategoricalDistribution([1, 2, 3]),
    "precision": CategoricalDistribution(["fp32", "fp16", "int8"]),
}


def _triton_pb2() -> ModuleType:
    """Triton's model_config_pb2 from tritonclient, loaded by path (no grpcio needed)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _attrs(scenario: str, **over: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "model": "resnet50",
        "model_path": "/models/resnet50.onnx",
        "model_sha256": "ab" * 32,
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "backend": "onnxruntime",
        "device": "Tesla T4",
        "simulated": False,
        "scenario": scenario,
        "latency_ms": 15.0 if scenario == "server" else None,
        "percentile": 99.0 if scenario == "server" else None,
        "objectives": ["throughput"],
        "accuracy_floor": 0.99,
    }
    attrs.update(over)
    return attrs


def _study(
    tmp_path: Path, scenario: str = "offline", directions: int = 1, **attrs: Any
) -> optuna.Study:
    study = optuna.create_study(
        study_name=f"s-{scenario}",
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        directions=[StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE][:directions],
    )
    for key, value in _attrs(scenario, **attrs).items():
        study.set_user_attr(key, value)
    return study


def _add(
    study: optuna.Study,
    batch: int,
    streams: int,
    precision: str,
    rate: float,
    *,
    valid: bool = True,
    p99: float = 10.0,
    deque: int | None = None,
    top1: float = float("nan"),
) -> None:
    params: dict[str, Any] = {"batch_size": batch, "streams": streams, "precision": precision}
    dists = dict(DISTS)
    if deque is not None:
        params["deque_timeout_us"] = deque
        dists["deque_timeout_us"] = CategoricalDistribution([500, 2000, 8000])
    offline = study_setting(study.user_attrs, "scenario") == "offline"
    score = rate if valid else 0.0
    values = [score, p99] if len(study.directions) == 2 else [score]
    study.add_trial(
        create_trial(
            params=params,
            distributions=dists,
            values=values,
            user_attrs={
                "score": rate,
                "valid": valid,
                "samples_per_second": rate if offline else None,
                "qps": None if offline else rate,
                "p99_ms": p99,
                "latency_ms": {"p50": p99 / 2, "p99": p99},
                "agreement_top1": top1,
                "variant_sha256": "cd" * 32,
                "device": "Tesla T4",
            },
            constraints={"accuracy": 0.0, "valid": 0.0 if valid else 1.0},
        )
    )


def _load_settings(path: Path, model: str, scenario: str) -> Any:
    settings = lg.TestSettings()
    assert settings.FromConfig(str(path), model, scenario) == 0
    return settings


# --------------------------------------------------------------------------- user.conf


def test_user_conf_offline_loads_in_loadgen(tmp_path: Path) -> None:
    study = _study(tmp_path, "offline")
    _add(study, 8, 2, "int8", 5527.25)
    _add(study, 1, 1, "fp32", 900.5)
    path = export(study, "user.conf", tmp_path / "out" / "user.conf")
    settings = _load_settings(path, "resnet50", "Offline")
    assert settings.offline_expected_qps == 5527.25


def test_user_conf_server_loads_in_loadgen(tmp_path: Path) -> None:
    study = _study(tmp_path, "server", latency_ms=12.0, percentile=97.0)
    _add(study, 4, 2, "fp16", 1234.5678, deque=2000)
    path = export(study, "user.conf", tmp_path / "user.conf")
    settings = _load_settings(path, "resnet50", "Server")
    assert settings.server_target_qps == 1234.5678
    assert settings.server_target_latency_ns == 12_000_000
    assert settings.server_target_latency_percentile == pytest.approx(0.97)


def test_user_conf_fractional_latency_is_the_stricter_whole_ms(tmp_path: Path) -> None:
    study = _study(tmp_path, "server", model="my.net", latency_ms=12.5)
    _add(study, 4, 1, "fp32", 300.0, deque=500)
    path = export(study, "user.conf", tmp_path / "user.conf")
    assert "stricter 12 ms" in path.read_text()
    settings = _load_settings(path, "my.net", "Server")
    assert settings.server_target_latency_ns == 12_000_000
    assert settings.server_target_qps == 300.0


def test_user_conf_rejects_model_names_with_spaces(tmp_path: Path) -> None:
    study = _study(tmp_path, "offline", model="my net")
    _add(study, 4, 1, "fp32", 300.0)
    with pytest.raises(TunerError, match="whitespace"):
        export(study, "user.conf", tmp_path / "user.conf")


# --------------------------------------------------------------------------- triton


def test_triton_config_parses_as_model_config(tmp_path: Path) -> None:
    pb2 = _triton_pb2()
    study = _study(tmp_path, "server")
    _add(study, 16, 3, "int8", 2000.0, deque=8000)
    path = export(study, "triton", tmp_path / "config.pbtxt")
    config = text_format.Parse(path.read_text(), pb2.ModelConfig())
    assert config.name == "resnet50"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input", pb2.TYPE_FP32, [3, 224, 224])
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("logits", pb2.TYPE_FP32, [1000])
    ]
    assert len(config.instance_group) == 1
    assert config.instance_group[0].count == 3
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    assert list(config.dynamic_batching.preferred_batch_size) == [16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 8000


def test_triton_config_cpu_tensorrt_and_scalar_inputs(tmp_path: Path) -> None:
    pb2 = _triton_pb2()
    inputs = [
        {"name": "ids", "dtype": "int64", "sample_shape": [128]},
        {"name": "scale", "dtype": "float16", "sample_shape": []},
    ]
    study = _study(tmp_path, "offline", device="AMD EPYC 9454 (2 cores)", inputs=inputs)
    _add(study, 8, 2, "fp32", 100.0)
    config = text_format.Parse(
        export(study, "triton", tmp_path / "a.pbtxt").read_text(), pb2.ModelConfig()
    )
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    assert config.input[0].data_type == pb2.TYPE_INT64
    assert list(config.input[1].dims) == [1]
    assert list(config.input[1].reshape.shape) == []
    assert config.input[1].HasField("reshape")
    assert not config.dynamic_batching.max_queue_delay_microseconds  # Offline: no deque

    (tmp_path / "trt").mkdir()
    study_trt = _study(tmp_path / "trt", "offline", backend="tensorrt", device="NVIDIA H200")
    _add(study_trt, 8, 2, "fp16", 100.0)
    config = text_format.Parse(
        export(study_trt, "triton", tmp_path / "b.pbtxt").read_text(), pb2.ModelConfig()
    )
    assert config.platform == "tensorrt_plan"
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU


def test_triton_config_other_backend_falls_back_with_comment(tmp_path: Path) -> None:
    pb2 = _triton_pb2()
    study = _study(tmp_path, "offline", backend="null", device="simulated (cpu)")
    _add(study, 2, 1, "fp32", 50.0)
    text = export(study, "triton", tmp_path / "c.pbtxt").read_text()
    assert "# backend 'null' has no Triton platform" in text
    config = text_format.Parse(text, pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx"
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU


# --------------------------------------------------------------------------- json


def test_json_has_trial_and_study_and_no_nan(tmp_path: Path) -> None:
    study = _study(tmp_path, "offline")
    _add(study, 8, 2, "int8", 5527.25, top1=float("nan"))
    text = export(study, "json", tmp_path / "best.json").read_text()
    assert "NaN" not in text
    doc = json.loads(text)
    assert doc["optuna_version"] == optuna.__version__
    assert doc["exported_at"].endswith("+00:00")
    assert doc["study"]["name"] == "s-offline"
    assert doc["study"]["directions"] == ["maximize"]
    assert doc["study"]["user_attrs"]["model"] == "resnet50"
    assert doc["study"]["user_attrs"]["inputs"] == INPUTS
    trial = doc["trial"]
    assert trial["number"] == 0
    assert trial["state"] == "COMPLETE"
    assert trial["params"] == {"batch_size": 8, "streams": 2, "precision": "int8"}
    assert trial["values"] == [5527.25]
    assert trial["constraints"] == {"accuracy": 0.0, "valid": 0.0}
    assert trial["feasible"] is True
    assert trial["user_attrs"]["samples_per_second"] == 5527.25
    assert trial["user_attrs"]["agreement_top1"] is None


# --------------------------------------------------------------------------- nvidia


def test_nvidia_server_keys(tmp_path: Path) -> None:
    study = _study(tmp_path, "server")
    _add(study, 26, 2, "int8", 4650.9, deque=2000)
    doc = json.loads(export(study, "nvidia", tmp_path / "config.json").read_text())
    assert doc["benchmark"] == "resnet50"
    assert doc["scenario"] == "Server"
    assert doc["system_id"] == "T4x1"
    assert doc["config_name"] == "T4x1_resnet50_Server"
    assert doc["resnet50"] == {
        "deque_timeout_us": 2000,
        "gpu_batch_size": 26,
        "gpu_inference_streams": 2,
        "input_dtype": "fp32",
        "input_format": "linear",
        "precision": "int8",
        "server_target_latency_ns": 15_000_000,
        "server_target_latency_percentile": 0.99,
        "server_target_qps": 4650,
        "use_deque_limit": True,
    }


def test_nvidia_offline_keys(tmp_path: Path) -> None:
    study = _study(tmp_path, "offline")
    _add(study, 256, 1, "fp16", 5528.04)
    doc = json.loads(export(study, "nvidia", tmp_path / "config.json").read_text())
    settings = doc["resnet50"]
    assert doc["scenario"] == "Offline"
    assert settings["gpu_offline_expected_qps"] == 5528.0
    assert settings["gpu_batch_size"] == 256
    assert settings["gpu_inference_streams"] == 1
    assert settings["precision"] == "fp16"
    assert "server_target_qps" not in settings
    assert "deque_timeout_us" not in settings


# --------------------------------------------------------------------------- trtexec


def _command(text: str) -> dict[str, str]:
    """The trtexec flags of the exported text as {flag: value} ('' for switches)."""
    args = shlex.split(text, comments=True)
    assert args[0] == "trtexec"
    flags: dict[str, str] = {}
    for arg in args[1:]:
        key, _, value = arg.partition("=")
        flags[key] = value
    return flags


def test_trtexec_flags(tmp_path: Path) -> None:
    study = _study(tmp_path, "offline")
    _add(study, 8, 2, "fp32", 500.0)
    text = export(study, "trtexec", tmp_path / "build.sh").read_text()
    flags = _command(text)
    assert flags["--onnx"] == "/models/resnet50.onnx"
    assert flags["--minShapes"] == "input:1x3x224x224"
    assert flags["--optShapes"] == "input:8x3x224x224"
    assert flags["--maxShapes"] == "input:8x3x224x224"
    assert flags["--shapes"] == "input:8x3x224x224"
    assert flags["--infStreams"] == "2"
    assert flags["--stronglyTyped"] == ""
    assert "--fp16" not in flags and "--int8" not in flags and "--best" not in flags
    assert "# precision fp32" in text


def test_trtexec_reduced_precision_uses_the_variant(tmp_path: Path) -> None:
    inputs = [*INPUTS, {"name": "mask:0", "dtype": "int64", "sample_shape": [16]}]
    study = _study(tmp_path, "offline", inputs=inputs)
    _add(study, 4, 3, "int8", 500.0)
    text = export(study, "trtexec", tmp_path / "build.sh").read_text()
    flags = _command(text)
    assert flags["--onnx"] == "/models/resnet50.int8.onnx"
    assert flags["--maxShapes"] == "input:4x3x224x224,'mask:0':4x16"
    assert flags["--infStreams"] == "3"
    assert "--int8" not in flags
    assert "precision int8" in text and "cd" * 32 in text


# --------------------------------------------------------------------------- choosing


def test_infeasible_best_is_never_exported(tmp_path: Path) -> None:
    study = _study(tmp_path, "offline")
    _add(study, 8, 2, "int8", 9000.0, valid=False)  # highest raw rate, but INVALID
    _add(study, 4, 1, "fp32", 700.0)
    study.add_trial(
        create_trial(
            params={"batch_size": 16, "streams": 1, "precision": "int8"},
            distributions=DISTS,
            value=8000.0,  # above the feasible one, but fails the accuracy floor
            user_attrs={"samples_per_second": 8000.0},
            constraints={"accuracy": 0.05, "valid": 0.0},
        )
    )
    assert choose_trial(study).number == 1
    doc = json.loads(export(study, "json", tmp_path / "best.json").read_text())
    assert doc["trial"]["number"] == 1
    settings = _load_settings(
        export(study, "user.conf", tmp_path / "u.conf"), "resnet50", "Offline"
    )
    assert settings.offline_expected_qps == 700.0
    with pytest.raises(TunerError, match=r"trial 2 .* infeasible \(accuracy=0.05\)"):
        choose_trial(study, 2)


def test_trials_found_by_optimize(tmp_path: Path) -> None:
    """A study filled by study.optimize, its objective storing attrs and constraints."""
    study = _study(tmp_path, "server")
    rates = {1: 100.0, 2: 180.0, 4: 260.0}

    def objective(trial: optuna.Trial) -> float:
        batch = trial.suggest_categorical("batch_size", [1, 2, 4])
        trial.suggest_categorical("streams", [1])
        trial.suggest_categorical("precision", ["fp32"])
        trial.suggest_categorical("deque_timeout_us", [500])
        valid = batch != 4  # the biggest batch misses the latency bound
        trial.set_user_attr("qps", rates[batch])
        trial.set_user_attr("valid", valid)
        trial.set_constraint("accuracy", 0.0)
        trial.set_constraint("valid", 0.0 if valid else 1.0)
        return rates[batch] if valid else 0.0

    for batch in (1, 2, 4):  # every configuration once, whatever the sampler would draw
        study.enqueue_trial(
            {"batch_size": batch, "streams": 1, "precision": "fp32", "deque_timeout_us": 500}
        )
    study.optimize(objective, n_trials=3)
    assert sorted(t.params["batch_size"] for t in study.trials) == [1, 2, 4]
    best = choose_trial(study)
    assert best.params["batch_size"] == 2
    settings = _load_settings(
        export(study, "user.conf", tmp_path / "u.conf"), "resnet50", "Server"
    )
    assert settings.server_target_qps == 180.0


def test_explicit_trial_number(tmp_path: Path) -> None:
    study = _study(tmp_path, "offline")
    _add(study, 8, 2, "int8", 5000.0)
    _add(study, 4, 1, "fp32", 700.0)
    assert choose_trial(study, 1).number == 1
    flags = _command(export(study, "trtexec", tmp_path / "t.sh", number=1).read_text())
    assert flags["--infStreams"] == "1"
    with pytest.raises(TunerError, match="has no trial 7"):
        choose_trial(study, 7)


def test_explicit_trial_must_be_complete(tmp_path: Path) -> None:
    study = _study(tmp_path, "offline")
    study.add_trial(create_trial(state=TrialState.FAIL))
    with pytest.raises(TunerError, match="trial 0 of study 's-offline' is FAIL, not COMPLETE"):
        choose_trial(study, 0)


def test_pareto_front_of_two_requires_trial(tmp_path: Path) -> None:
    study = _study(tmp_path, "server", directions=2, objectives=["throughput", "p99"])
    _add(study, 8, 2, "fp16", 2000.0, p99=12.0, deque=2000)
    _add(study, 2, 1, "fp32", 800.0, p99=4.0, deque=500)
    _add(study, 2, 1, "fp32", 700.0, p99=6.0, deque=2000)  # dominated
    with pytest.raises(
        TunerError,
        match=r"2 Pareto-optimal trials: #0 \(2000, 12\), #1 "
        r"\(800, 4\); choose one with --trial N",
    ):
        export(study, "json", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
    path = export(study, "user.conf", tmp_path / "u.conf", number=1)
    assert _load_settings(path, "resnet50", "Server").server_target_qps == 800.0


def test_pareto_front_of_one_is_used(tmp_path: Path) -> None:
    study = _study(tmp_path, "server", directions=2, objectives=["throughput", "p99"])
    _add(study, 8, 2, "fp16", 2000.0, p99=4.0, deque=2000)
    _add(study, 2, 1, "fp32", 800.0, p99=6.0, deque=500)
    _add(study, 4, 1, "fp32", 3000.0, p99=1.0, deque=500, valid=False)  # infeasible
    assert choose_trial(study).number == 0


@pytest.mark.parametrize("directions", [1, 2])
def test_no_complete_trial_errors_clearly(tmp_path: Path, directions: int) -> None:
    study = _study(tmp_path, "offline", directions=directions)
    study.add_trial(create_trial(state=TrialState.FAIL))
    with pytest.raises(TunerError, match="study 's-offline' has no complete feasible trial"):
        export(study, "json", tmp_path / "x.json")


def test_only_infeasible_trials_error(tmp_path: Path) -> None:
    study = _study(tmp_path, "offline")
    _add(study, 8, 2, "int8", 9000.0, valid=False)
    with pytest.raises(TunerError, match="no complete feasible trial"):
        choose_trial(study)


def test_unknown_format_lists_formats(tmp_path: Path) -> None:
    study = _study(tmp_path, "offline")
    _add(study, 8, 2, "int8", 5000.0)
    with pytest.raises(
        ConfigError,
        match=r"unknown export format 'yaml' \(valid: json, "
        r"user.conf, triton, trtexec, benchmark_app, nvidia\)",
    ):
        export(study, "yaml", tmp_path / "x.yaml")
    assert set(FORMATS) == {"json", "user.conf", "triton", "trtexec", "benchmark_app", "nvidia"}


def test_export_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    study = _study(tmp_path, "offline")
    _add(study, 8, 2, "int8", 5000.0)
    out = tmp_path / "out" / "best.json"
    out.parent.mkdir()
    out.write_text("old")
    assert export(study, "json", out) == out
    assert json.loads(out.read_text())["trial"]["number"] == 0
    assert [p.name for p in out.parent.iterdir()] == ["best.json"]


def test_error_messages_are_one_line(tmp_path: Path) -> None:
    study = _study(tmp_path, "server", directions=2, objectives=["throughput", "p99"])
    _add(study, 8, 2, "fp16", 2000.0, p99=12.0, deque=2000)
    _add(study, 2, 1, "fp32", 800.0, p99=4.0, deque=500)
    with pytest.raises(TunerError) as info:
        choose_trial(study)
    assert "\n" not in str(info.value)

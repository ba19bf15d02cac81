"""`python -m harness run` end to end, with the real LoadGen, on tiny models and short runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from harness.cli import build_parser, main, run_config, scenario_spec
from harness.config import RunConfig, ScenarioSpec
from harness.errors import ConfigError
from tests.harness.search_checks import check_answer
from tuner.config import StudyConfig

FAST = ["--duration-s", "0.3", "--samples", "64"]
NULL_FAST = ["--backend", "null", "--backend-option", "latency_ms=1", "--model", "tiny"]


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_offline_tiny_onnxruntime(
    harness: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, result = tmp_path / "logs", tmp_path / "result" / "r.json"
    code = harness(
        "--model",
        "tiny",
        "--backend",
        "onnxruntime",
        *FAST,
        "--out",
        str(out),
        "--json",
        str(result),
    )
    assert code == 0
    data = read_json(result)
    assert data["scenario"] == "offline"
    assert data["valid"] is True
    assert data["samples_per_second"] > 0 and data["score"] == data["samples_per_second"]
    assert data["qps"] is None
    assert {"p50", "p90", "p99"} <= set(data["latency_ms"])
    assert data["latency_ms"]["p50"] <= data["latency_ms"]["p90"] <= data["latency_ms"]["p99"]
    assert data["loadgen_runs"] and data["loadgen_runs"][-1]["scenario"] == "Offline"
    assert (data["backend"], data["precision"], data["batch_size"], data["streams"]) == (
        "onnxruntime",
        "fp32",
        1,
        1,
    )
    assert data["device"] and data["simulated"] is False
    assert data["model"] == "tiny" and len(data["model_sha256"]) == 64
    assert (out / "offline-1" / "mlperf_log_summary.txt").is_file()
    assert (out / "offline-1" / "mlperf_log_detail.txt").is_file()
    stdout = capsys.readouterr().out
    # The result table's one row: scenario, then LoadGen's verdict as its own cell (a bare
    # substring test would also pass on "INVALID").
    rows = [line.split() for line in stdout.splitlines() if line.startswith("offline ")]
    assert [row[:2] for row in rows] == [["offline", "VALID"]], stdout
    assert f"LoadGen logs: {out}\n" in stdout and f"result: {result}\n" in stdout


def test_server_at_a_target_qps_with_the_null_backend(
    harness: Callable[..., int], tmp_path: Path
) -> None:
    result = tmp_path / "r.json"
    code = harness(
        *NULL_FAST,
        "--scenario",
        "server",
        "--target-qps",
        "400",
        "--min-queries",
        "600",
        "--latency-ms",
        "50",
        *FAST,
        "--out",
        str(tmp_path / "logs"),
        "--json",
        str(result),
    )
    assert code == 0
    data = read_json(result)
    assert data["scenario"] == "server" and data["simulated"] is True
    assert data["valid"] is True
    assert data["qps"] == data["score"] > 0 and data["samples_per_second"] is None
    assert data["latency_bound_ms"] == 50 and data["percentile"] == 99
    [run] = data["loadgen_runs"]
    assert run["scenario"] == "Server" and run["target_qps"] == 400
    assert run["query_count"] >= 600
    assert (tmp_path / "logs" / "server" / "mlperf_log_summary.txt").is_file()


def test_find_max_qps_reports_every_run(
    harness: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = tmp_path / "r.json"
    code = harness(
        *NULL_FAST,
        "--scenario",
        "server",
        "--find-max-qps",
        "--batch-size",
        "4",
        "--streams",
        "2",
        *FAST,
        "--out",
        str(tmp_path / "logs"),
        "--json",
        str(result),
    )
    assert code == 0
    data = read_json(result)
    runs = data["loadgen_runs"]
    # The Offline run that bounds the search, then the Server probes.
    assert runs[0]["scenario"] == "Offline"
    server_runs = runs[1:]
    assert server_runs and all(r["scenario"] == "Server" for r in server_runs)
    assert data["valid"] is True and data["qps"] > 0
    check_answer(server_runs, data["qps"], confirmed=False)  # MLPerf's Server metric
    assert data["qps"] <= runs[0]["samples_per_second"]
    stdout = capsys.readouterr().out
    assert stdout.count("\nServer ") == len(server_runs)  # one table row per probe
    assert "Offline " in stdout


def test_int8_reports_agreement_with_fp32(
    harness: Callable[..., int],
    tmp_path: Path,
    mlp_model: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = tmp_path / "r.json"
    code = harness(
        "--model",
        str(mlp_model),
        "--precision",
        "int8",
        *FAST,
        "--out",
        str(tmp_path / "logs"),
        "--json",
        str(result),
    )
    assert code == 0
    data = read_json(result)
    assert data["precision"] == "int8" and data["model"] == "mlp"
    assert data["variant_sha256"] != data["model_sha256"]
    agreement = data["agreement"]
    # A count of samples whose top-1 class int8 keeps, at least the tuner's default floor
    # (StudyConfig.accuracy_floor, 0.8); the logits moved (a quantized graph, not the fp32 one).
    assert agreement["samples"] == 32
    assert (agreement["top1"] * 32).is_integer()
    assert agreement["top1"] >= StudyConfig().accuracy_floor == 0.8
    assert agreement["max_abs_error"] > 0
    assert "agreement with fp32" in capsys.readouterr().out


# --- bad input: one line on stderr, the right exit code, no traceback ---------------------


def _fixed_batch_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "fixed", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _no_input_model(path: Path) -> Path:
    value = helper.make_tensor("value", TensorProto.FLOAT, [1, 2], [1.0, 2.0])
    node = helper.make_node("Constant", [], ["y"], value=value)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([node], "constant", [], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _text_file(path: Path) -> Path:
    path.write_text("this is not an ONNX model\n")
    return path


MODEL_FILES: dict[str, Callable[[Path], Path]] = {
    "fixed.onnx": _fixed_batch_model,
    "noinputs.onnx": _no_input_model,
    "notonnx.onnx": _text_file,
}

BAD_INPUTS = [
    # (args, exit code, text the one-line message must contain)
    pytest.param(["--model", "missing.onnx"], 1, "missing.onnx", id="missing-model"),
    pytest.param(["--model", "{tmp}/notonnx.onnx"], 1, "not an ONNX model", id="not-onnx"),
    pytest.param(["--model", "{tmp}/fixed.onnx"], 1, "fixed batch size 4", id="fixed-batch"),
    pytest.param(["--model", "{tmp}/noinputs.onnx"], 1, "no inputs", id="no-inputs"),
    pytest.param(
        ["--batch-size", "0"], 2, "batch_size: must be an integer >= 1, got 0", id="batch-0"
    ),
    pytest.param(["--batch-size", "-3"], 2, "got -3", id="batch-negative"),
    pytest.param(["--batch-size", "x"], 2, "'x'", id="batch-not-int"),
    pytest.param(["--streams", "0"], 2, "streams: must be an integer >= 1, got 0", id="streams-0"),
    pytest.param(["--precision", "fp16"], 2, "fp16 is not supported", id="fp16-on-cpu"),
    pytest.param(["--precision", "int4"], 2, "'int4'", id="unknown-precision"),
    pytest.param(["--backend", "tensorflow"], 2, "'tensorflow'", id="unknown-backend"),
    pytest.param(["--scenario", "multistream"], 2, "'multistream'", id="unknown-scenario"),
    pytest.param(["--device", "tpu"], 2, "'tpu'", id="bad-device"),
    pytest.param(
        ["--scenario", "server", "--target-qps", "10", "--latency-ms", "0"],
        2,
        "latency_ms: must be > 0, got 0.0",
        id="latency-0",
    ),
    pytest.param(
        ["--scenario", "server", "--find-max-qps", "--percentile", "100"],
        2,
        "percentile: must be between 0 and 100 (exclusive), got 100.0",
        id="percentile-100",
    ),
    pytest.param(
        ["--scenario", "server", "--find-max-qps", "--percentile", "0"],
        2,
        "got 0.0",
        id="percentile-0",
    ),
    pytest.param(["--find-max-qps"], 2, "find_max_qps", id="find-max-qps-offline"),
    pytest.param(
        ["--scenario", "server", "--find-max-qps", "--answer-runs", "0"],
        2,
        "answer_runs: must be an integer >= 1, got 0",
        id="answer-runs-0",
    ),
    pytest.param(
        ["--scenario", "server"], 2, "target_qps or find_max_qps", id="server-without-target"
    ),
    pytest.param(["--backend-option", "latency_ms"], 2, "'latency_ms'", id="option-no-value"),
    pytest.param(
        ["--backend", "null", "--backend-option", "oom_batch=big"],
        2,
        "'big'",
        id="null-bad-option-value",
    ),
    pytest.param(
        ["--backend", "null", "--backend-option", "turbo=1"], 2, "turbo", id="null-unknown-option"
    ),
    pytest.param(
        ["--backend", "null", "--backend-option", "oom_batch=1", "--batch-size", "2"],
        1,
        "out of memory",
        id="null-oom",
    ),
    pytest.param(["--device", "cuda"], 1, "CUDAExecutionProvider", id="no-cuda-provider"),
]


@pytest.mark.parametrize(("args", "code", "text"), BAD_INPUTS)
def test_bad_input(
    harness: Callable[..., int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    text: str,
) -> None:
    if "--device" in args and "cuda" in args:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            pytest.skip("this onnxruntime has the CUDA provider")
    for name, build in MODEL_FILES.items():
        build(tmp_path / name)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--model" not in args:
        args = ["--model", "tiny", *args]
    out = tmp_path / "logs"
    actual = harness(*args, *FAST, "--out", str(out))
    captured = capsys.readouterr()
    assert actual == code, captured.err
    assert captured.err.endswith("\n") and captured.err.count("\n") == 1, captured.err
    assert "error:" in captured.err and text in captured.err
    assert "Traceback" not in captured.err
    assert not out.exists()  # nothing was measured


def test_debug_raises_instead(harness: Callable[..., int]) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        harness("--model", "tiny", "--batch-size", "0", "--debug")


def test_usage_error_without_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main([])
    assert exit.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_run_flags_default_to_the_dataclass_defaults(tmp_path: Path) -> None:
    """`python -m harness run` with no flags measures RunConfig() under ScenarioSpec()."""
    args = build_parser().parse_args(["run"])
    assert run_config(args) == RunConfig()
    assert scenario_spec(args, tmp_path) == ScenarioSpec(out_dir=tmp_path)

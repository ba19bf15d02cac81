"""Export a study's chosen trial for deployment: json, a LoadGen user.conf, a Triton
config.pbtxt, a trtexec command line, or NVIDIA MLPerf (v0.5) harness config.json keys.

Every renderer takes the study context (`study_context`: the study's user attributes plus its
name, directions and metric names) and a trial, and returns the file's text. Formats checked
against:

- user.conf: LoadGen `TestSettings::FromConfig` (loadgen/test_settings_internal.cc): lines
  `model.Scenario.key = value`, a line whose first token is `#` is a comment; `target_qps` is a
  double, Server `target_latency` is whole milliseconds (strtoull, then x 1e6 ns) and
  `target_latency_percentile` is a percentage (x 0.01).
- triton: Triton `model_config.proto` (`ModelConfig`, `DataType`, `ModelInstanceGroup.Kind`,
  `ModelDynamicBatching`) in protobuf text format.
- trtexec: TensorRT 10 `trtexec --help` (`--onnx`, `--minShapes/--optShapes/--maxShapes`,
  `--shapes`, `--infStreams`, `--stronglyTyped`, `--saveEngine`) and the TensorRT 11 migration
  guide (precision flags removed, networks always strongly typed).
- nvidia: inference_results_v0.5 closed/NVIDIA measurements/<system>/<bench>/<Scenario>/
  config.json and code/common/arguments.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.errors import ConfigError, TunerError
from tuner.results import (
    TrialRecord,
    best_trial,
    confirm_scores,
    confirmed_value,
    rate,
    robust_value,
    study_settings,
)

Renderer = Callable[[Mapping[str, Any], FrozenTrial], str]

#: Keys `study_context` adds to the study's user attributes.
_CONTEXT_KEYS = ("study_name", "directions", "metric_names")

_SCENARIOS = {"offline": "Offline", "server": "Server"}

#: NumPy dtype name -> Triton DataType (model_config.proto).
_TRITON_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}

#: NumPy dtype name -> NVIDIA harness `input_dtype` (v0.5 offered fp32 and int8).
_NVIDIA_DTYPES = {"float32": "fp32", "float16": "fp16", "int8": "int8"}

_GPU_WORDS = re.compile(
    r"cuda|gpu|nvidia|tesla|geforce|quadro|rtx|\b(?:t4|l4|l40s?|[abh]\d{2,3}|[vp]100)\b"
)


# --------------------------------------------------------------------------- choosing a trial


def choose_trial(study: optuna.Study, number: int | None = None) -> FrozenTrial:
    """Trial `number`, else the best feasible trial (the confirmed winner where the study has
    one, see tuner.confirm), else the single Pareto-optimal one."""
    name = study.study_name
    if number is not None:
        return _numbered(study, number)
    if len(study.directions) == 1:
        best = best_trial(study)
        if best is None:
            raise TunerError(f"study {name!r} has no complete feasible trial")
        return best
    front = sorted(study.best_trials, key=lambda t: t.number)
    if not front:
        raise TunerError(f"study {name!r} has no complete feasible trial")
    if len(front) == 1:
        return front[0]
    listing = ", ".join(f"#{t.number} ({', '.join(f'{v:.6g}' for v in t.values)})" for t in front)
    raise TunerError(
        f"study {name!r} has {len(front)} Pareto-optimal trials: {listing}; "
        "choose one with --trial N"
    )


def _numbered(study: optuna.Study, number: int) -> FrozenTrial:
    name = study.study_name
    found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not found:
        raise TunerError(f"study {name!r} has no trial {number}")
    trial = found[0]
    if trial.state != TrialState.COMPLETE:
        raise TunerError(f"trial {number} of study {name!r} is {trial.state.name}, not COMPLETE")
    violated = {k: v for k, v in trial.constraints.items() if v > 0}
    if violated:
        what = ", ".join(f"{k}={v:g}" for k, v in sorted(violated.items()))
        raise TunerError(f"trial {number} of study {name!r} is infeasible ({what})")
    return trial


# --------------------------------------------------------------------------- export


def study_context(study: optuna.Study) -> dict[str, Any]:
    """The study's user attributes plus its name, directions and metric names."""
    return {
        **study_settings(study.user_attrs),
        "study_name": study.study_name,
        "directions": [d.name.lower() for d in study.directions],
        "metric_names": study.metric_names,
    }


def export(study: optuna.Study, fmt: str, out: Path, number: int | None = None) -> Path:
    """Render the chosen trial of `study` as `fmt` and write it to `out` atomically."""
    renderer = FORMATS.get(fmt)
    if renderer is None:
        raise ConfigError(f"unknown export format {fmt!r} (valid: {', '.join(FORMATS)})")
    trial = choose_trial(study, number)
    text = renderer(study_context(study), trial)
    return write_atomic(Path(out), text)


def write_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` whole or not at all (a TunerError naming the path)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise TunerError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise TunerError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    return path


# --------------------------------------------------------------------------- json


def render_json(attrs: Mapping[str, Any], trial: FrozenTrial) -> str:
    """Everything about the trial and its study, JSON-safe (NaN and infinities become null)."""
    user_attrs = {k: v for k, v in attrs.items() if k not in _CONTEXT_KEYS}
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    doc = {
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "optuna_version": optuna.__version__,
        "study": {
            "name": attrs.get("study_name"),
            "directions": attrs.get("directions"),
            "metric_names": attrs.get("metric_names"),
            "user_attrs": user_attrs,
        },
        "trial": {
            "number": trial.number,
            "state": trial.state.name,
            "params": trial.params,
            # the throughput this export stands for: the confirmed median where there is one
            "value": robust_value(trial, attrs) if trial.values else None,
            "confirmed": _confirmation(trial, attrs),
            "values": trial.values,
            "constraints": trial.constraints,
            "feasible": all(v <= 0 for v in trial.constraints.values()),
            "user_attrs": trial.user_attrs,
            "datetime_start": trial.datetime_start,
            "datetime_complete": trial.datetime_complete,
            "duration_s": duration,
        },
    }
    return json.dumps(_json_safe(doc), indent=2, allow_nan=False) + "\n"


def _confirmation(trial: FrozenTrial, attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The trial's confirmation runs and their median, or None when it was not confirmed."""
    median = confirmed_value(trial, attrs)
    if median is None:
        return None
    scores = confirm_scores(trial, attrs)
    return {"median": median, "runs": len(scores), "scores": scores}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


# --------------------------------------------------------------------------- user.conf


def render_user_conf(attrs: Mapping[str, Any], trial: FrozenTrial) -> str:
    """LoadGen settings of the trial for `TestSettings().FromConfig(path, model, Scenario)`."""
    model = str(_need(attrs, "model"))
    if not model or re.search(r"\s", model):
        raise TunerError(f"model name {model!r} cannot be a user.conf key (it has whitespace)")
    scenario = _scenario(attrs)
    rate = _throughput(attrs, trial)
    lines = [
        *_header(attrs, trial, "LoadGen user.conf"),
        f'# load with TestSettings().FromConfig(path, "{model}", "{scenario}")',
    ]
    if scenario == "Offline":
        lines.append(f"# target_qps: {_measured(trial, attrs, 'samples/s')}")
        lines.append(f"{model}.Offline.target_qps = {rate!r}")
    else:
        latency = float(_need(attrs, "latency_ms"))
        percentile = float(_need(attrs, "percentile"))
        if not 0 < percentile < 100:
            raise TunerError(f"study percentile {percentile:g} is not between 0 and 100")
        whole = math.floor(latency)
        if whole < 1:
            raise TunerError(
                f"study latency_ms {latency:g} is under LoadGen's 1 ms target_latency unit"
            )
        lines.append(f"# target_qps: {_measured(trial, attrs, 'largest VALID Server QPS')}")
        if whole != latency:
            lines.append(
                f"# study bound {latency:g} ms; LoadGen reads target_latency as whole ms, "
                f"so the stricter {whole} ms is written"
            )
        lines += [
            f"{model}.Server.target_qps = {rate!r}",
            f"{model}.Server.target_latency = {whole}",
            f"{model}.Server.target_latency_percentile = {percentile:g}",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- triton


def render_triton(attrs: Mapping[str, Any], trial: FrozenTrial) -> str:
    """A Triton `config.pbtxt` serving the trial's batch size, instances and batching delay."""
    p = _params(trial)
    backend = runtime(attrs, trial)
    model_file = "model.plan" if backend == "tensorrt" else "model.onnx"
    platform = "tensorrt_plan" if backend == "tensorrt" else "onnxruntime_onnx"
    lines = _header(attrs, trial, "Triton config.pbtxt")
    if backend not in ("onnxruntime", "tensorrt", "openvino"):
        lines.append(
            f"# backend {backend!r} has no Triton platform; serving the ONNX model with "
            "onnxruntime_onnx"
        )
    lines.append(f"# put the {p['precision']} model at <repository>/<name>/1/{model_file}")
    # Triton's openvino backend reads ONNX when told the file's name; its parameters are the
    # compiled model's properties the trial set (harness.backends.openvino).
    runtime_lines = (
        [
            'backend: "openvino"',
            'default_model_filename: "model.onnx"',
        ]
        if backend == "openvino"
        else [f"platform: {_pb_string(platform)}"]
    )
    inputs, outputs = _need(attrs, "inputs"), _need(attrs, "outputs")
    batching = _batch_first(inputs) and _batch_first(outputs)
    if not batching:
        lines.append(
            "# the model's batch is not axis 0 of every tensor (or some input is shared by "
            "the whole batch), which Triton's batcher cannot split: max_batch_size 0, each "
            f"request carries its own batch (up to {p['batch_size']}) on the axis marked -1"
        )
    lines += [
        f"name: {_pb_string(str(_need(attrs, 'model')))}",
        *runtime_lines,
        f"max_batch_size: {p['batch_size'] if batching else 0}",
        *_pb_tensors("input", inputs, batching),
        *_pb_tensors("output", outputs, batching),
        "instance_group [",
        "  {",
        f"    count: {p['streams']}",
        f"    kind: {'KIND_GPU' if _is_gpu(attrs) else 'KIND_CPU'}",
        "  }",
        "]",
    ]
    if batching:
        lines += ["dynamic_batching {", f"  preferred_batch_size: [ {p['batch_size']} ]"]
        if p.get("deque_timeout_us") is not None:
            lines.append(f"  max_queue_delay_microseconds: {int(p['deque_timeout_us'])}")
        lines.append("}")
    if backend == "openvino":
        lines += _openvino_parameters(attrs, trial)
    return "\n".join(lines) + "\n"


def _openvino_parameters(attrs: Mapping[str, Any], trial: FrozenTrial) -> list[str]:
    """Triton openvino backend parameters for the trial: one OpenVINO stream per instance's
    request, the threads the trial's streams had, bf16 where it ran bf16, padding where the
    model was compiled for its full batch (a static batch shape)."""
    p = _params(trial)
    details = TrialRecord.from_trial(trial).backend_details or {}
    params = {"NUM_STREAMS": str(p["streams"])}
    threads = details.get("inference_num_threads")
    if isinstance(threads, int):
        params["INFERENCE_NUM_THREADS"] = str(threads)
    if p["precision"] == "bf16":
        params["HINT_BF16"] = "YES"
    if details.get("batch_shape", "static") == "static":
        params["ENABLE_BATCH_PADDING"] = "YES"
    out = []
    for key, value in params.items():
        out += [
            "parameters {",
            f"  key: {_pb_string(key)}",
            f"  value: {{ string_value: {_pb_string(value)} }}",
            "}",
        ]
    return out


# --------------------------------------------------------------------------- benchmark_app


def render_benchmark_app(attrs: Mapping[str, Any], trial: FrozenTrial) -> str:
    """OpenVINO's benchmark_app command that times the trial's settings without LoadGen (as
    `trtexec` is exported for TensorRT): the precision's ONNX variant, reshaped to the batch,
    the trial's streams with two requests each (benchmark_app's own default), its threads."""
    p = _params(trial)
    batch, streams, precision = p["batch_size"], p["streams"], p["precision"]
    record = TrialRecord.from_trial(trial)
    onnx = record.variant_path or str(_need(attrs, "model_path"))
    inputs = _need(attrs, "inputs")
    if not isinstance(inputs, list) or not inputs:
        raise TunerError(f"study inputs {inputs!r} is not a non-empty list of tensors")
    shape = ",".join(  # an input with no batch axis keeps the shape the file gives it
        f"{t['name']}[{','.join(str(d) for d in with_batch(t, batch))}]"
        for t in inputs
        if t.get("batch_axis", 0) is not None
    )
    details = record.backend_details or {}
    args = [
        "benchmark_app",
        "-m",
        str(onnx),
        "-d",
        "CPU",
        "-hint",
        "none",
        "-nstreams",
        str(streams),
        "-nireq",
        str(2 * streams),
        "-shape",
        shape,
        "-infer_precision",
        "bf16" if precision == "bf16" else "f32",
    ]
    threads = details.get("inference_num_threads")
    if isinstance(threads, int):
        args += ["-nthreads", str(threads)]
    lines = _header(attrs, trial, "OpenVINO benchmark_app command")
    lines.append(
        f"# precision {precision} comes from the model file (int8: the Q/DQ variant the "
        "harness built); FPS counts samples: iterations x batch"
    )
    if runtime(attrs, trial) != "openvino":
        lines.append(
            f"# trial {trial.number} ran on {runtime(attrs, trial)}: this times its settings "
            "on OpenVINO instead, for comparison"
        )
    _refuse_control_characters("benchmark_app", lines)
    lines.append(shlex.join(args))
    return "\n".join(lines) + "\n"


def _refuse_control_characters(what: str, lines: list[str]) -> None:
    """A name or path from the study with a line break would leave its comment line and run
    as a shell command."""
    for line in lines:
        if any(ord(c) < 32 for c in line):
            raise TunerError(
                f"{what} export: a name or path in the study has a control character, "
                f"which a shell would run as a command: {line!r}"
            )


def with_batch(tensor: Mapping[str, Any], batch: int) -> list[int]:
    """A stored tensor's shape with `batch` on its batch axis (axis 0 for studies stored
    before tensors recorded it; none for an input shared by the whole batch)."""
    shape = [int(d) for d in tensor.get("sample_shape", [])]
    axis = tensor.get("batch_axis", 0)
    if axis is not None:
        shape.insert(int(axis), batch)
    return shape


def _batch_first(tensors: Any) -> bool:
    """Whether every tensor is batched on axis 0, which Triton's batching needs."""
    return isinstance(tensors, list) and all(
        isinstance(t, Mapping) and t.get("batch_axis", 0) == 0 for t in tensors
    )


def _pb_tensors(field: str, tensors: Any, batching: bool = True) -> list[str]:
    """Triton tensors: the sample shape where Triton batches on axis 0, else the whole shape
    with -1 on the batch axis."""
    if not isinstance(tensors, list) or not tensors:
        raise TunerError(f"study {field}s {tensors!r} is not a non-empty list of tensors")
    entries = []
    for t in tensors:
        dtype = str(t.get("dtype"))
        if dtype not in _TRITON_TYPES:
            raise TunerError(f"{field} {t.get('name')!r} has dtype {dtype!r} with no Triton type")
        shape = [int(d) for d in t.get("sample_shape", [])] if batching else with_batch(t, -1)
        body = [
            f"    name: {_pb_string(str(t['name']))}",
            f"    data_type: {_TRITON_TYPES[dtype]}",
        ]
        if shape:
            body.append(f"    dims: [ {', '.join(str(d) for d in shape)} ]")
        else:  # a scalar: Triton's documented [1] reshaped to rank 0
            body += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        entries.append("  {\n" + "\n".join(body) + "\n  }")
    return [f"{field} [", ",\n".join(entries), "]"]


def _pb_string(text: str) -> str:
    if any(ord(c) < 32 for c in text):
        raise TunerError(f"name {text!r} has control characters")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- trtexec


def render_trtexec(attrs: Mapping[str, Any], trial: FrozenTrial) -> str:
    """The trtexec (TensorRT 10/11) command that builds and times the trial's engine."""
    p = _params(trial)
    batch, streams, precision = p["batch_size"], p["streams"], p["precision"]
    model_path = Path(str(_need(attrs, "model_path")))
    record = TrialRecord.from_trial(trial)
    onnx: str | Path | None = record.variant_path
    if not onnx:
        onnx = (
            model_path
            if precision == "fp32"
            else model_path.with_name(f"{model_path.stem}.{precision}.onnx")
        )
    inputs = _need(attrs, "inputs")
    if not isinstance(inputs, list) or not inputs:
        raise TunerError(f"study inputs {inputs!r} is not a non-empty list of tensors")

    def spec(n: int) -> str:  # an input with no batch axis is static: trtexec needs no shape
        return ",".join(
            f"{_trt_name(t['name'])}:{_trt_dims(n, t)}"
            for t in inputs
            if t.get("batch_axis", 0) is not None
        )

    model = str(_need(attrs, "model"))
    args = [
        "trtexec",
        f"--onnx={onnx}",
        f"--minShapes={spec(1)}",
        f"--optShapes={spec(batch)}",
        f"--maxShapes={spec(batch)}",
        f"--shapes={spec(batch)}",
        "--stronglyTyped",
        f"--infStreams={streams}",
        f"--saveEngine={model}-b{batch}-s{streams}-{precision}.plan",
    ]
    sha = record.variant_sha256 or attrs.get("model_sha256") or "unknown"
    lines = _header(attrs, trial, "trtexec command")
    lines.append(
        f"# precision {precision} comes from the ONNX variant (sha256 {sha}), not a flag: "
        "TensorRT 11 removed --fp16/--int8 and always builds strongly typed networks"
    )
    if precision != "fp32" and not record.variant_path:
        lines.append(
            f"# copy the {precision} variant the harness built under <cache-dir>/variants/ "
            f"to {onnx}"
        )
    lines.append(
        "# --stronglyTyped makes TensorRT 10 keep the ONNX types; TensorRT 11 always does"
    )
    _refuse_control_characters("trtexec", lines)
    lines.append(shlex.join(args))  # every argument quoted for the shell
    return "\n".join(lines) + "\n"


def _trt_name(name: str) -> str:
    """An input name for a trtexec shape spec; names with `:` or `,` go in single quotes."""
    return f"'{name}'" if re.search(r"[:,\s']", name) else name


def _trt_dims(batch: int, tensor: Mapping[str, Any]) -> str:
    return "x".join(str(d) for d in with_batch(tensor, batch))


# --------------------------------------------------------------------------- nvidia


def render_nvidia(attrs: Mapping[str, Any], trial: FrozenTrial) -> str:
    """NVIDIA MLPerf v0.5 harness config.json (measurements/<system>/<bench>/<Scenario>)."""
    p = _params(trial)
    scenario = _scenario(attrs)
    bench = str(_need(attrs, "model"))
    inputs = _need(attrs, "inputs")
    dtype = str(inputs[0].get("dtype")) if isinstance(inputs, list) and inputs else "float32"
    settings: dict[str, Any] = {
        "gpu_batch_size": p["batch_size"],
        "gpu_inference_streams": p["streams"],
        "input_dtype": _NVIDIA_DTYPES.get(dtype, dtype),
        "input_format": "linear",
        "precision": p["precision"],
    }
    rate = _throughput(attrs, trial)
    if scenario == "Offline":
        settings["gpu_offline_expected_qps"] = round(rate, 1)
    else:
        settings["server_target_qps"] = max(1, math.floor(rate))  # an int in arguments.py
        if p.get("deque_timeout_us") is not None:
            settings["deque_timeout_us"] = int(p["deque_timeout_us"])
            settings["use_deque_limit"] = True
        settings["server_target_latency_ns"] = round(float(_need(attrs, "latency_ms")) * 1e6)
        settings["server_target_latency_percentile"] = float(_need(attrs, "percentile")) / 100
    system = _system_id(str(attrs.get("device") or "unknown"))
    doc: dict[str, Any] = {
        "benchmark": bench,
        "config_name": f"{system}_{bench}_{scenario}",
        bench: dict(sorted(settings.items())),
        "scenario": scenario,
        "system_id": system,
    }
    if attrs.get("dims"):  # not a harness key: the shapes the engine must be built for
        doc["batch_tuner_dims"] = dict(attrs["dims"])
        doc["batch_tuner_input_shapes"] = {
            str(t.get("name")): list(t.get("sample_shape", [])) for t in inputs
        }
    return json.dumps(doc, indent=4) + "\n"


def _system_id(device: str) -> str:
    """`Tesla T4` -> `T4x1`: NVIDIA's system ids name the GPU and its count."""
    name = re.sub(r"\(\d+ cores?\)", "", device)
    name = re.sub(r"^(?:NVIDIA\s+)?(?:Tesla\s+)?", "", name.strip())
    name = re.sub(r"[^A-Za-z0-9-]+", "_", name).strip("_") or "unknown"
    return f"{name}x1"


# --------------------------------------------------------------------------- shared


FORMATS: dict[str, Renderer] = {
    "json": render_json,
    "user.conf": render_user_conf,
    "triton": render_triton,
    "trtexec": render_trtexec,
    "benchmark_app": render_benchmark_app,
    "nvidia": render_nvidia,
}


def runtime(attrs: Mapping[str, Any], trial: FrozenTrial) -> str:
    """The runtime that measured the trial: its `backend` parameter in a study of several,
    else the study's backend."""
    return str(trial.params.get("backend") or _need(attrs, "backend"))


def _need(attrs: Mapping[str, Any], key: str) -> Any:
    value = attrs.get(key)
    if value is None:
        raise TunerError(f"study has no {key!r} attribute; was it made by `tuner optimize`?")
    return value


def _params(trial: FrozenTrial) -> dict[str, Any]:
    p = dict(trial.params)
    for key in ("batch_size", "streams", "precision"):
        if key not in p:
            raise TunerError(f"trial {trial.number} has no {key!r} parameter")
    for key in ("batch_size", "streams"):
        if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1:
            raise TunerError(f"trial {trial.number} has {key}={p[key]!r}, not an integer >= 1")
    return p


def _scenario(attrs: Mapping[str, Any]) -> str:
    scenario = attrs.get("scenario")
    if scenario not in _SCENARIOS:
        raise TunerError(f"study scenario {scenario!r} is not offline or server")
    return _SCENARIOS[scenario]


def _measured(trial: FrozenTrial, attrs: Mapping[str, Any], what: str) -> str:
    """`samples/s measured by trial 5`, or `median samples/s of 3 runs of trial 5` for a
    confirmed trial."""
    runs = len(confirm_scores(trial, attrs))
    if confirmed_value(trial, attrs) is not None and runs:
        return f"median {what} of {runs} runs of trial {trial.number}"
    return f"{what} measured by trial {trial.number}"


def _throughput(attrs: Mapping[str, Any], trial: FrozenTrial) -> float:
    """Measured samples/s (Offline) or largest VALID QPS (Server) of the trial: the median of
    its confirmation runs where it was confirmed."""
    return rate(trial, attrs.get("scenario"), attrs)


def _is_gpu(attrs: Mapping[str, Any]) -> bool:
    if attrs.get("backend") == "tensorrt":
        return True
    if attrs.get("backend") == "openvino":
        return False
    device = str(attrs.get("device") or "").lower()
    if "cpu" in device or re.search(r"\(\d+ cores?\)", device):
        return False
    return bool(_GPU_WORDS.search(device))


def _header(attrs: Mapping[str, Any], trial: FrozenTrial, what: str) -> list[str]:
    p = trial.params
    knobs = f"batch {p.get('batch_size')}, {p.get('streams')} streams, {p.get('precision')}"
    if p.get("deque_timeout_us") is not None:
        knobs += f", deque_timeout_us {p['deque_timeout_us']}"
    where = f"{trial.params.get('backend') or attrs.get('backend')} on {attrs.get('device')}"
    if attrs.get("simulated") or TrialRecord.from_trial(trial).simulated:
        where += " (SIMULATED measurements)"
    lines = [
        f"# {what} exported by batch-tuner: study {attrs.get('study_name')}, trial {trial.number}",
        f"# {knobs}; {where}",
    ]
    if attrs.get("dims"):
        lines.append(f"# model dims bound: {_dims_text(attrs['dims'])}")
    return lines


def _dims_text(dims: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}={size}" for name, size in dims.items())

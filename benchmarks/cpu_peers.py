"""The tuned best against the defaults a user would otherwise reach for on a CPU, in one run:
OpenVINO's one-flag hints (`benchmark_app -hint throughput`, `-hint latency`) and ONNX
Runtime's defaults (one session, all threads, batch 1: the harness at batch 1, 1 stream), each
on the same model file, interleaved A B C D, then D C B A ..., so the machine's drift hits
every contender alike.

For each case the default study tunes the model first (`python -m tuner optimize`, every CPU
runtime installed; `resnet50-fp32` restricted to the unquantized file: fp32, and bf16 where
OpenVINO's own default runs it in bf16), then its confirmed best is measured
again through the harness (LoadGen Offline) in the interleaved rounds. The peers run on the
precision file of the case: the int8 Q/DQ variant the study built, or the fp32 model.
benchmark_app's FPS counts samples (its shapes have batch 1); it runs without LoadGen, so the
comparison is, if anything, tilted towards the peers.

    python benchmarks/cpu_peers.py                                   # every case, 2 rounds
    python benchmarks/cpu_peers.py --cases resnet50-int8,mobilenet --rounds 3 --seconds 10
    python benchmarks/cpu_peers.py --json benchmarks/cpu_peers.json
    python benchmarks/cpu_peers.py --cases mobilenet --server --rounds 3  # and the Server side

Server (`--server`): the largest Poisson QPS whose p99 meets the case's bound (MobileNet 30 ms
and ResNet-50 200 ms, as the shipped CPU Server studies; BERT MLPerf's 130 ms), each found by
the harness's max-QPS search with the shipped Server studies' settings (600 queries, one VALID
answer run, a 5% bracket). The tuned side is a Server study of the case (the default study with
`--scenario server`: every CPU runtime, the deque timeout searched too); the peers are their
settings run through the harness: OpenVINO's throughput hint is OpenVINO at batch 1 with the
streams and inference precision the hint chose (benchmark_app prints both; one request per
stream, as the hint's optimal request count), its latency hint the same with its one stream,
ONNX Runtime's defaults batch 1 on one stream. A study per case costs minutes on this VM.

The bert case needs benchmarks/models/bert-small.onnx (`python benchmarks/real_models.py
--export-only`, the torch extra). The ratio printed is the tuned median over the best peer's
median; the target is >= 1.05 on every case.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.backends.openvino import has_bf16  # noqa: E402
from harness.device import cpu_info  # noqa: E402
from tuner.export import with_batch  # noqa: E402
from tuner.results import best_trial, robust_value  # noqa: E402
from tuner.space import DEFAULT_DEQUE_TIMEOUT_US  # noqa: E402

TARGET = 1.05


@dataclass(frozen=True)
class Case:
    """One row: the model, the tuner's extra flags, and which file the peers load."""

    model: str
    precision: str  # the peers' file: "int8" (the study's Q/DQ variant) or "fp32"
    tune: tuple[str, ...] = ()  # flags of the study only
    dims: tuple[str, ...] = ()  # flags binding the model's dims, for the study and the harness
    server_ms: float = 30.0  # the Server bound at p99 (--server)


#: The fp32 file's precisions: OpenVINO's CPU plugin runs an fp32 model in bf16 by default
#: where the CPU has bf16 instructions (benchmark_app prints INFERENCE_PRECISION_HINT: bf16),
#: so there the tuned side may use bf16 too, on the same unquantized file; fp32 alone elsewhere.
FP32_FILE = "fp32,bf16" if has_bf16() else "fp32"
CASES = {
    "resnet50-int8": Case("resnet50", "int8", server_ms=200.0),
    "resnet50-fp32": Case("resnet50", "fp32", ("--precisions", FP32_FILE), server_ms=200.0),
    "mobilenet": Case("mobilenet", "int8", server_ms=30.0),
    "bert": Case(
        str(ROOT / "benchmarks" / "models" / "bert-small.onnx"),
        "int8",
        dims=("--dim", "sequence=128"),
        server_ms=130.0,
    ),
}
#: The max-QPS search's settings, as the shipped CPU Server studies have them.
SERVER_SEARCH = (
    *("--percentile", "99", "--duration-s", "2", "--min-queries", "600"),
    *("--answer-runs", "1", "--qps-tolerance", "0.05"),
)
#: OpenVINO's inference precision (as benchmark_app prints it) -> the harness's precision.
OV_PRECISION = {"bf16": "bf16", "f32": "fp32", "float32": "fp32", "bfloat16": "bf16"}
PEERS = ("openvino -hint throughput", "openvino -hint latency", "onnxruntime defaults")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of %(default)s")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement (default 10)")
    parser.add_argument("--storage", help="study database (default: a fresh one in a temp dir)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--server",
        action="store_true",
        help="also the Server side: a Server study per case, then each contender's max QPS",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown} (valid: {', '.join(CASES)})")
    work = Path(tempfile.mkdtemp(prefix="cpu-peers-"))
    storage = args.storage or f"sqlite:///{work / 'peers.db'}"
    machine = cpu_info()
    print(f"CPU: {machine['model']}; flags: {', '.join(machine['flags'] or [])}", flush=True)
    rows = [
        run_case(name, CASES[name], storage, args.rounds, args.seconds, work) for name in names
    ]
    servers = (
        [run_server(row, CASES[row["case"]], storage, args.rounds, work) for row in rows]
        if args.server
        else []
    )
    print()
    print(
        f"{'case':<14} {'tuned best':<44} {'tuned':>8} {'best peer':<26} {'peer':>8} {'ratio':>6}"
    )
    for row in rows:
        print(
            f"{row['case']:<14} {row['tuned']['label']:<44} {row['tuned']['median']:>8.1f} "
            f"{row['best_peer']:<26} {row['peer_median']:>8.1f} {row['ratio']:>5.2f}x "
            f"{'PASS' if row['ratio'] >= TARGET else 'FAIL'}"
        )
    for server in servers:
        print(
            f"{server['case']:<14} {'Server: ' + server['tuned']['label']:<44} "
            f"{server['tuned']['median']:>8.1f} {server['best_peer']:<26} "
            f"{server['peer_median']:>8.1f} {server['ratio']:>5.2f}x QPS at p99 <= "
            f"{server['latency_ms']:g} ms"
        )
    if args.json:
        doc = {"cpu": machine, "rounds": args.rounds, "seconds": args.seconds, "cases": rows}
        doc["server"] = servers
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if all(row["ratio"] >= TARGET for row in rows) else 1


@dataclass(frozen=True)
class Tuned:
    """What a study of the case declared: its study, best params and runtime, and its cost."""

    study: optuna.Study
    params: dict[str, Any]
    runtime: str
    label: str
    value: float
    tune_s: float

    def row(self, median: float) -> dict[str, Any]:
        return {
            "label": self.label,
            "params": self.params,
            "study_value": self.value,
            "median": median,
        }


def tune(name: str, case: Case, storage: str, study_name: str, extra: list[str]) -> Tuned:
    """Run the case's study (`python -m tuner optimize`, its flags plus `extra`) to its end."""
    command = [sys.executable, "-m", "tuner", "optimize", "--model", case.model, *case.dims]
    command += [*case.tune, *extra, "--storage", storage, "--study", study_name, "--quiet"]
    print(f"\n== {name}: tuning ({' '.join(command[3:])})", flush=True)
    started = time.monotonic()
    subprocess.run(command, check=True, cwd=ROOT)
    tune_s = time.monotonic() - started
    study = optuna.load_study(study_name=study_name, storage=storage)
    best = best_trial(study)
    if best is None:
        raise SystemExit(f"{name}: the study found no feasible configuration")
    params = dict(best.params)
    runtime = params.get("backend") or study.user_attrs["config"]["backend"]
    label = f"{runtime} {params['precision']} b{params['batch_size']} s{params['streams']}"
    if "deque_timeout_us" in params and "--scenario" in extra:
        label += f" d{params['deque_timeout_us']}"
    value = robust_value(best, study.user_attrs)
    print(f"{name}: tuned in {tune_s:.0f} s: {label}, {value:.1f}", flush=True)
    return Tuned(study, params, runtime, label, value, tune_s)


def in_turn(order: list[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, contender) in the order A B C, C B A, A B C ...: the machine's drift falls on
    every contender alike."""
    for r in range(rounds):
        for who in order if r % 2 == 0 else reversed(order):
            yield r, who


def compared(name: str, figures: dict[str, list[float]], unit: str) -> dict[str, Any]:
    """Medians, the best peer by median and the tuned median over it; printed."""
    medians = {who: statistics.median(values) for who, values in figures.items()}
    best_peer = max(PEERS, key=lambda who: medians[who])
    peer = medians[best_peer]
    ratio = medians["tuned"] / peer if peer else float("inf")
    print(f"{name}: tuned {medians['tuned']:,.1f} vs {best_peer} {peer:,.1f} {unit}: {ratio:.2f}x")
    return {
        "figures": figures,
        "medians": medians,
        "best_peer": best_peer,
        "peer_median": peer,
        "ratio": round(ratio, 4),
    }


def run_case(
    name: str, case: Case, storage: str, rounds: int, seconds: float, work: Path
) -> dict[str, Any]:
    tuned = tune(name, case, storage, f"peers-{name}", [])
    study, params, runtime = tuned.study, tuned.params, tuned.runtime
    attrs = study.user_attrs
    peer_file = peers_file(study, case.precision)
    harness = [sys.executable, "-m", "harness", "run", "--model", case.model, *case.dims]
    harness += ["--duration-s", f"{seconds:g}", "--out", str(work / "runs")]
    knobs = ["--backend", runtime, "--precision", params["precision"]]
    knobs += ["--batch-size", str(params["batch_size"]), "--streams", str(params["streams"])]
    inputs = attrs["inputs"]
    contenders = {
        "tuned": [*harness, *knobs],
        "openvino -hint throughput": benchmark_app(peer_file, inputs, "throughput", seconds),
        "openvino -hint latency": benchmark_app(peer_file, inputs, "latency", seconds),
        "onnxruntime defaults": [
            *harness,
            *("--backend", "onnxruntime", "--precision", case.precision, "--batch-size", "1"),
        ],
    }
    figures: dict[str, list[float]] = {who: [] for who in contenders}
    precision: dict[str, str] = {"tuned": params["precision"]}
    streams: dict[str, int] = {}
    for r, who in in_turn(list(contenders), rounds):
        value, ran, chosen = measure(contenders[who], work / "result.json")
        figures[who].append(value)
        precision[who] = ran or precision.get(who, case.precision)
        if chosen is not None:
            streams[who] = chosen
        print(
            f"{name} round {r + 1}: {who}: {value:,.1f} samples/s ({precision[who]})",
            flush=True,
        )
    summary = compared(name, figures, "samples/s")
    return {
        "case": name,
        "model": case.model,
        "peer_file": str(peer_file),
        "tune_s": round(tuned.tune_s, 1),
        "tuned": tuned.row(summary["medians"]["tuned"]),
        "inference_precision": precision,
        "hint_streams": streams,
        **summary,
        "commands": {who: " ".join(cmd) for who, cmd in contenders.items()},
    }


def run_server(
    offline: dict[str, Any], case: Case, storage: str, rounds: int, work: Path
) -> dict[str, Any]:
    """The Server side of one case: a Server study for the tuned side, then the max QPS under
    the case's bound of each contender's settings through the harness, in turn, `rounds`
    times. `offline` is the case's Offline row (the hints' streams and precision)."""
    name = offline["case"]
    bound = ("--latency-ms", f"{case.server_ms:g}", *SERVER_SEARCH)
    tuned = tune(
        f"{name} Server", case, storage, f"peers-{name}-server", ["--scenario", "server", *bound]
    )
    params, runtime = tuned.params, tuned.runtime
    harness = [sys.executable, "-m", "harness", "run", "--model", case.model, *case.dims]
    harness += ["--scenario", "server", "--find-max-qps", *bound, "--out", str(work / "runs")]

    def knobs(runtime: str, precision: str, batch: int, streams: int) -> list[str]:
        return [
            *("--backend", runtime, "--precision", precision),
            *("--batch-size", str(batch), "--streams", str(streams)),
        ]

    ran = offline["inference_precision"]
    hinted = offline["hint_streams"]
    peer_precision = {
        who: case.precision if case.precision == "int8" else OV_PRECISION.get(ran[who], "fp32")
        for who in ("openvino -hint throughput", "openvino -hint latency")
    }
    contenders = {
        "tuned": [
            *harness,
            *knobs(runtime, params["precision"], params["batch_size"], params["streams"]),
            *("--deque-timeout-us", str(params.get("deque_timeout_us", DEFAULT_DEQUE_TIMEOUT_US))),
        ],
        **{
            who: [*harness, *knobs("openvino", peer_precision[who], 1, hinted.get(who, 1))]
            for who in ("openvino -hint throughput", "openvino -hint latency")
        },
        "onnxruntime defaults": [*harness, *knobs("onnxruntime", case.precision, 1, 1)],
    }
    figures: dict[str, list[float]] = {who: [] for who in contenders}
    for r, who in in_turn(list(contenders), rounds):
        qps = server_qps(contenders[who], work / "result.json")
        figures[who].append(qps)
        print(f"{name} Server round {r + 1}: {who}: {qps:,.1f} QPS", flush=True)
    summary = compared(f"{name} Server", figures, "QPS")
    return {
        "case": name,
        "latency_ms": case.server_ms,
        "tune_s": round(tuned.tune_s, 1),
        "tuned": tuned.row(summary["medians"]["tuned"]),
        **summary,
        "commands": {who: " ".join(cmd) for who, cmd in contenders.items()},
    }


def server_qps(command: list[str], result: Path) -> float:
    """The largest VALID QPS the harness's search found (0 where none met the bound)."""
    doc = harness_result(command, result)
    return float(doc["score"]) if doc.get("valid") else 0.0


def harness_result(command: list[str], result: Path) -> dict[str, Any]:
    """The result `python -m harness run` (`command`) wrote to `result` as JSON."""
    result.unlink(missing_ok=True)
    subprocess.run([*command, "--json", str(result)], check=True, capture_output=True, cwd=ROOT)
    doc: dict[str, Any] = json.loads(result.read_text())
    return doc


def peers_file(study: optuna.Study, precision: str) -> Path:
    """The model file the peers load: the fp32 model, or the int8 variant a trial built."""
    if precision == "fp32":
        return Path(study.user_attrs["model_path"])
    for trial in study.get_trials(deepcopy=False):
        if trial.params.get("precision") == precision and trial.user_attrs.get("variant_path"):
            return Path(trial.user_attrs["variant_path"])
    raise SystemExit(f"study {study.study_name} built no {precision} variant")


def benchmark_app(
    model: Path, inputs: list[dict[str, Any]], hint: str, seconds: float
) -> list[str]:
    shape = ",".join(  # an input with no batch axis keeps the shape the file gives it
        f"{t['name']}[{','.join(str(d) for d in with_batch(t, 1))}]"
        for t in inputs
        if t.get("batch_axis", 0) is not None
    )
    tool = Path(sys.executable).parent / "benchmark_app"
    return [
        str(tool),
        "-m",
        str(model),
        "-d",
        "CPU",
        "-hint",
        hint,
        "-shape",
        shape,
        "-t",
        f"{seconds:g}",
    ]


def measure(command: list[str], result: Path) -> tuple[float, str | None, int | None]:
    """samples/s of one contender's run: the harness's LoadGen figure, or benchmark_app's FPS
    (batch 1, so FPS are samples) with the inference precision and streams OpenVINO chose."""
    if "harness" in command:
        return float(harness_result(command, result)["samples_per_second"]), None, None
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    found = re.search(r"Throughput:\s+([\d.]+) FPS", out)
    if found is None:
        raise SystemExit(f"no throughput in benchmark_app's output:\n{out[-2000:]}")
    hint = re.search(r"INFERENCE_PRECISION_HINT: (?:<Type: ')?(\w+)", out)
    streams = re.search(r"NUM_STREAMS: (\d+)", out)
    return (
        float(found.group(1)),
        hint.group(1) if hint else None,
        int(streams.group(1)) if streams else None,
    )


if __name__ == "__main__":
    sys.exit(main())

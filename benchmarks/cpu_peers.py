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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.backends.openvino import has_bf16  # noqa: E402
from harness.device import cpu_info  # noqa: E402
from tuner.results import best_trial, robust_value  # noqa: E402

TARGET = 1.05


@dataclass(frozen=True)
class Case:
    """One row: the model, the tuner's extra flags, and which file the peers load."""

    model: str
    precision: str  # the peers' file: "int8" (the study's Q/DQ variant) or "fp32"
    tune: tuple[str, ...] = ()  # flags of the study only
    dims: tuple[str, ...] = ()  # flags binding the model's dims, for the study and the harness


#: The fp32 file's precisions: OpenVINO's CPU plugin runs an fp32 model in bf16 by default
#: where the CPU has bf16 instructions (benchmark_app prints INFERENCE_PRECISION_HINT: bf16),
#: so there the tuned side may use bf16 too, on the same unquantized file; fp32 alone elsewhere.
FP32_FILE = "fp32,bf16" if has_bf16() else "fp32"
CASES = {
    "resnet50-int8": Case("resnet50", "int8"),
    "resnet50-fp32": Case("resnet50", "fp32", ("--precisions", FP32_FILE)),
    "mobilenet": Case("mobilenet", "int8"),
    "bert": Case(
        str(ROOT / "benchmarks" / "models" / "bert-small.onnx"),
        "int8",
        dims=("--dim", "sequence=128"),
    ),
}
PEERS = ("openvino -hint throughput", "openvino -hint latency", "onnxruntime defaults")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of %(default)s")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement (default 10)")
    parser.add_argument("--storage", help="study database (default: a fresh one in a temp dir)")
    parser.add_argument("--json", type=Path, help="write every figure here")
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
    if args.json:
        doc = {"cpu": machine, "rounds": args.rounds, "seconds": args.seconds, "cases": rows}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if all(row["ratio"] >= TARGET for row in rows) else 1


def run_case(
    name: str, case: Case, storage: str, rounds: int, seconds: float, work: Path
) -> dict[str, Any]:
    study_name = f"peers-{name}"
    started = time.monotonic()
    tune = [sys.executable, "-m", "tuner", "optimize", "--model", case.model, *case.dims]
    tune += case.tune
    tune += ["--storage", storage, "--study", study_name, "--quiet"]
    print(f"\n== {name}: tuning ({' '.join(tune[3:])})", flush=True)
    subprocess.run(tune, check=True, cwd=ROOT)
    tune_s = time.monotonic() - started
    study = optuna.load_study(study_name=study_name, storage=storage)
    best = best_trial(study)
    if best is None:
        raise SystemExit(f"{name}: the study found no feasible configuration")
    attrs = study.user_attrs
    params = best.params
    runtime = params.get("backend") or attrs["config"]["backend"]
    label = f"{runtime} {params['precision']} b{params['batch_size']} s{params['streams']}"
    print(f"{name}: tuned in {tune_s:.0f} s: {label}, {robust_value(best, attrs):.1f}", flush=True)
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
    order = list(contenders)
    for r in range(rounds):
        for who in order if r % 2 == 0 else reversed(order):
            value, ran = measure(contenders[who], work / "result.json")
            figures[who].append(value)
            precision[who] = ran or precision.get(who, case.precision)
            print(
                f"{name} round {r + 1}: {who}: {value:,.1f} samples/s ({precision[who]})",
                flush=True,
            )
    medians = {who: statistics.median(values) for who, values in figures.items()}
    best_peer = max(PEERS, key=lambda who: medians[who])
    ratio = medians["tuned"] / medians[best_peer]
    peer = medians[best_peer]
    print(f"{name}: tuned {medians['tuned']:,.1f} vs {best_peer} {peer:,.1f}: {ratio:.2f}x")
    return {
        "case": name,
        "model": case.model,
        "peer_file": str(peer_file),
        "tune_s": round(tune_s, 1),
        "tuned": {
            "label": label,
            "params": params,
            "study_value": robust_value(best, attrs),
            "median": medians["tuned"],
        },
        "figures": figures,
        "inference_precision": precision,
        "medians": medians,
        "best_peer": best_peer,
        "peer_median": medians[best_peer],
        "ratio": round(ratio, 4),
        "commands": {who: " ".join(cmd) for who, cmd in contenders.items()},
    }


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
    shape = ",".join(
        f"{t['name']}[{','.join(str(d) for d in [1, *t['sample_shape']])}]" for t in inputs
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


def measure(command: list[str], result: Path) -> tuple[float, str | None]:
    """samples/s of one contender's run: the harness's LoadGen figure, or benchmark_app's FPS
    (batch 1, so FPS are samples) with the inference precision OpenVINO chose."""
    if "harness" in command:
        result.unlink(missing_ok=True)
        subprocess.run(
            [*command, "--json", str(result)], check=True, capture_output=True, cwd=ROOT
        )
        return float(json.loads(result.read_text())["samples_per_second"]), None
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    found = re.search(r"Throughput:\s+([\d.]+) FPS", out)
    if found is None:
        raise SystemExit(f"no throughput in benchmark_app's output:\n{out[-2000:]}")
    hint = re.search(r"INFERENCE_PRECISION_HINT: (?:<Type: ')?(\w+)", out)
    return float(found.group(1)), hint.group(1) if hint else None


if __name__ == "__main__":
    sys.exit(main())

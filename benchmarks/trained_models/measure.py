"""Trained models from public packages, as their exporters wrote them, measured fp32 against
int8 on real inputs: throughput (`python -m harness run`, Offline, LoadGen), and int8's
agreement with fp32 (accuracy on the labels, where the data has them).

The models and data come from `prepare.sh` (see README.md beside this file): paddle2onnx's
text-angle classifier (a -1 batch, '?' sizes: `--shape`), detector and recogniser
(`p2o.DynamicDimension.N` names: `--dim`), magika's byte classifier (jax2tf + tf2onnx: an
`unk__N` batch, a one-hot as `Equal` against a range), silero's voice-activity detector
(spox and torch exports: a state batched on axis 1, a rank-0 sample rate). Every case runs
the file as shipped, with only the flags the tool's own messages ask for.

Precisions run in turn, A B A B ..., so the machine's drift hits both alike; each pair's
int8/fp32 ratio is printed, and the medians.

    python benchmarks/trained_models/measure.py --dir ~/.cache/batch-tuner/trained
    python benchmarks/trained_models/measure.py --dir DIR --cases magika,rapidocr_cls --pairs 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.device import cpu_flags, cpu_name


@dataclass(frozen=True)
class Case:
    """One trained model: its file's stem, the flags that bind what its exporter left unknown,
    and the batch and streams it is measured at."""

    stem: str
    flags: tuple[str, ...]
    batch: int = 8
    streams: int = 2


CASES = {
    case.stem: case
    for case in (
        Case("rapidocr_cls", ("--shape", "x=3x48x192")),
        Case(
            "rapidocr_det",
            ("--dim", "p2o.DynamicDimension.1=640", "--dim", "p2o.DynamicDimension.2=640"),
            batch=1,
        ),
        Case("rapidocr_rec", ("--shape", "x=3x48x320")),
        Case("magika", ()),
        Case("silero_vad", ("--shape", "input=576")),
        Case("silero_vad_op15", ("--dim", "sequence=576")),
    )
}


def run_case(case: Case, precision: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One `harness run` of the case at `precision`; its result JSON (or the error)."""
    out = folder / f"{case.stem}-{precision}.json"
    model = args.dir / "models" / f"{case.stem}.onnx"
    argv = [sys.executable, "-m", "harness", "run", "--model", str(model)]
    argv += [*case.flags, "--data", str(args.dir / "data" / f"{case.stem}.npz")]
    argv += ["--precision", precision, "--batch-size", str(case.batch)]
    argv += ["--streams", str(case.streams), "--duration-s", str(args.duration_s)]
    argv += ["--backend", args.backend, "--out", str(folder / "logs"), "--json", str(out), "-q"]
    if args.cache_dir is not None:
        argv += ["--cache-dir", str(args.cache_dir)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "?"}
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def row(case: Case, precision: str, result: dict[str, Any]) -> dict[str, Any]:
    """What the table and the JSON keep of one run."""
    if "error" in result:
        return {"case": case.stem, "precision": precision, "error": result["error"]}
    agreement = result.get("agreement") or {}
    return {
        "case": case.stem,
        "precision": precision,
        "samples_per_second": result["samples_per_second"],
        "valid": result["valid"],
        "metric": agreement.get("metric"),
        "agreement": agreement.get("value"),
        "accuracy": agreement.get("accuracy"),
        "reference_accuracy": agreement.get("reference_accuracy"),
        "inputs": result.get("inputs"),
    }


def summary(case: Case, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per precision and the int8/fp32 ratio pair by pair."""
    rates = {
        p: [r["samples_per_second"] for r in rows if r["precision"] == p and "error" not in r]
        for p in ("fp32", "int8")
    }
    ratios = [i / f for f, i in zip(rates["fp32"], rates["int8"], strict=False) if f > 0]
    int8 = [r for r in rows if r["precision"] == "int8" and "error" not in r]
    errors = sorted({r["error"] for r in rows if "error" in r})
    return {
        "case": case.stem,
        "batch": case.batch,
        "streams": case.streams,
        "fp32": statistics.median(rates["fp32"]) if rates["fp32"] else None,
        "int8": statistics.median(rates["int8"]) if rates["int8"] else None,
        "ratios": [round(r, 3) for r in ratios],
        "ratio": statistics.median(ratios) if ratios else None,
        "metric": int8[0]["metric"] if int8 else None,
        "agreement": int8[0]["agreement"] if int8 else None,
        "accuracy": int8[0]["accuracy"] if int8 else None,
        "reference_accuracy": int8[0]["reference_accuracy"] if int8 else None,
        "errors": errors,
    }


def _cell(value: Any, digits: int = 1) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="prepare.sh's output folder")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated (default: all)")
    parser.add_argument("--pairs", type=int, default=2, help="fp32/int8 pairs per case")
    parser.add_argument("--duration-s", type=float, default=5.0, help="LoadGen run length")
    parser.add_argument("--backend", default="onnxruntime", help="runtime (default onnxruntime)")
    parser.add_argument("--cache-dir", type=Path, help="the harness's cache (default its own)")
    parser.add_argument("--json", type=Path, help="write every run and the summary here")
    args = parser.parse_args()
    args.dir = args.dir.expanduser()
    names = [n for n in args.cases.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    print(f"machine: {cpu_name()}; flags {', '.join(cpu_flags())}; {platform.python_version()}")
    rows: list[dict[str, Any]] = []
    summaries = []
    with tempfile.TemporaryDirectory(prefix="trained-") as tmp:
        for name in names:
            case = CASES[name]
            mine = []
            for pair in range(args.pairs):
                for precision in ("fp32", "int8"):
                    result = run_case(case, precision, Path(tmp), args)
                    mine.append(row(case, precision, result))
                    rate = mine[-1].get("samples_per_second")
                    print(
                        f"{name} pair {pair + 1} {precision}: {_cell(rate)} samples/s", flush=True
                    )
            rows += mine
            summaries.append(summary(case, mine))
    header = "case", "batch", "streams", "fp32 /s", "int8 /s", "int8/fp32", "int8 agreement"
    print("\n" + " | ".join(header))
    for s in summaries:
        agreement = f"{s['metric'] or '-'} {_cell(s['agreement'], 4)}"
        if s["accuracy"] is not None and s["accuracy"] == s["accuracy"]:
            agreement += (
                f" (accuracy int8 {_cell(s['accuracy'], 4)}, "
                f"fp32 {_cell(s['reference_accuracy'], 4)})"
            )
        cells = [s["case"], s["batch"], s["streams"], _cell(s["fp32"]), _cell(s["int8"])]
        cells += [f"{_cell(s['ratio'], 2)}x {s['ratios']}", agreement]
        print(" | ".join(str(c) for c in cells))
        for error in s["errors"]:
            print(f"  error: {error}")
    if args.json is not None:
        doc = {"machine": {"cpu": cpu_name(), "flags": cpu_flags()}, "runs": rows}
        args.json.write_text(json.dumps({**doc, "summary": summaries}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Harness overhead and capacity, in one run (a script, not a test).

(a) raw backend loop vs the harness's LoadGen Offline samples/s for the same configuration
    (same loaded backend, interleaved repeats; ratio = harness / raw, target >= 0.97);
(b) with the null backend at zero latency: the highest Offline samples/s and the highest VALID
    Server QPS (10 ms bound at p99) the harness sustains, next to LoadGen's own ceiling with a
    SUT that completes every sample inside the issue callback (targets: Offline >= 400,000,
    Server >= 100,000);
(c) peak resident memory of `python -m harness run --model resnet50` with default settings
    (target <= 1 GiB).

    python benchmarks/harness_overhead.py [--model mobilenet] [--repeats 3] [--skip-rss]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from harness.backends import BackendOptions, get_backend
from harness.backends.base import Backend
from harness.cli_common import default_cache_dir
from harness.config import ScenarioSpec
from harness.dataset import SampleSet, default_sample_count, synthetic_samples
from harness.device import cpu_name
from harness.loadgen_log import LoadgenRun
from harness.models import resolve_model
from harness.scenarios import offline
from harness.scenarios._loadgen import test_settings
from harness.sut import BatchingSUT

SERVER_LADDER = (100_000, 150_000, 200_000, 250_000, 300_000)


def raw_loop(
    backend: Backend, samples: SampleSet, batch: int, streams: int, seconds: float
) -> float:
    """Samples/s of `streams` threads calling infer on a fixed batch: no LoadGen, no queue."""
    inputs = samples.gather(np.arange(batch) % samples.count)
    counts = [0] * streams
    barrier = threading.Barrier(streams + 1)

    def work(stream: int) -> None:
        backend.infer(inputs, stream)
        barrier.wait()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            backend.infer(inputs, stream)
            counts[stream] += batch

    threads = [threading.Thread(target=work, args=(s,)) for s in range(streams)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def part_a(model_name: str, batch: int, streams: int, repeats: int, out: Path) -> dict[str, Any]:
    model = resolve_model(model_name, default_cache_dir())
    samples = synthetic_samples(model, default_sample_count(model), seed=0)
    options = BackendOptions(max_batch=batch, streams=streams)
    backend = get_backend("onnxruntime")(model.path, options)
    raws, harness = [], []
    with backend, BatchingSUT(backend, samples, batch, streams, 0) as sut:
        estimate = raw_loop(backend, samples, batch, streams, 2.0)  # warm-up and sizing
        for i in range(repeats):
            raws.append(raw_loop(backend, samples, batch, streams, 5.0))
            spec = ScenarioSpec(duration_s=5.0, expected_qps=1.3 * estimate, out_dir=out)
            result = offline.run(sut, spec, estimate, out / f"a-{i}")
            harness.append(result.score)
            print(f"  (a) repeat {i + 1}: raw {raws[-1]:.2f}, harness {harness[-1]:.2f} samples/s")
    ratios = [h / r for h, r in zip(harness, raws, strict=True)]
    return {
        "config": f"{model_name} fp32, batch {batch}, {streams} streams, onnxruntime cpu",
        "raw": statistics.median(raws),
        "harness": statistics.median(harness),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
    }


class CallbackSUT:
    """LoadGen's own ceiling: every sample completed inside the issue callback."""

    def __init__(self) -> None:
        import mlperf_loadgen as lg

        self.lg = lg

    def issue(self, ids: list[int], indices: list[int]) -> None:
        response = self.lg.QuerySampleResponse
        self.lg.QuerySamplesComplete([response(i, 0, 0) for i in ids])

    def flush(self) -> None:
        pass


def loadgen_run(
    issue: Callable[..., None], flush: Callable[[], None], count: int, settings: Any, out: Path
) -> LoadgenRun:
    import mlperf_loadgen as lg

    from harness.loadgen_log import read_run

    out.mkdir(parents=True, exist_ok=True)
    sut = lg.ConstructFastSUT(issue, flush)
    qsl = lg.ConstructQSL(count, count, lambda _: None, lambda _: None)
    log = lg.LogSettings()
    log.log_output.outdir = str(out)
    log.log_output.copy_summary_to_stdout = False
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroyFastSUT(sut)
    return read_run(out)


def offline_settings(expected: float) -> Any:
    return test_settings(
        "offline", min_duration_ms=2000, min_query_count=1, offline_expected_qps=expected
    )


def server_settings(qps: float) -> Any:
    return test_settings(
        "server",
        server_target_qps=float(qps),
        server_target_latency_ns=10_000_000,
        server_target_latency_percentile=0.99,
        min_duration_ms=2000,
        min_query_count=600,
        server_coalesce_queries=True,
    )


def part_b(out: Path) -> dict[str, Any]:
    samples = SampleSet({"input": np.zeros((1024, 16), np.float32)})
    figures: dict[str, Any] = {}
    best_offline = 0.0
    for batch, streams in ((1024, 1), (4096, 1), (4096, 2)):
        backend = get_backend("null")(
            Path("unused"),
            BackendOptions(
                max_batch=batch, streams=streams, extra={"latency_ms": 0, "per_sample_ms": 0}
            ),
        )
        with backend, BatchingSUT(backend, samples, batch, streams, 0) as sut:
            run = loadgen_run(
                sut.issue,
                sut.flush,
                samples.count,
                offline_settings(1e6),
                out / f"b-off-{batch}-{streams}",
            )
        print(
            f"  (b) harness Offline batch {batch}, {streams} stream(s): "
            f"{run.samples_per_second:,.0f} samples/s {'VALID' if run.valid else 'INVALID'}"
        )
        if run.valid:
            best_offline = max(best_offline, run.samples_per_second or 0.0)
    figures["harness_offline"] = best_offline
    ceiling = CallbackSUT()
    run = loadgen_run(
        ceiling.issue, ceiling.flush, samples.count, offline_settings(1e6), out / "b-off-ceiling"
    )
    figures["loadgen_offline"] = run.samples_per_second if run.valid else 0.0
    print(f"  (b) LoadGen ceiling Offline: {run.samples_per_second:,.0f} samples/s")
    for label, make in (("harness_server", "harness"), ("loadgen_server", "ceiling")):
        best = 0.0
        for qps in SERVER_LADDER:
            if make == "harness":
                backend = get_backend("null")(
                    Path("unused"),
                    BackendOptions(
                        max_batch=256, streams=1, extra={"latency_ms": 0, "per_sample_ms": 0}
                    ),
                )
                with backend, BatchingSUT(backend, samples, 256, 1, 100) as sut:
                    run = loadgen_run(
                        sut.issue,
                        sut.flush,
                        samples.count,
                        server_settings(qps),
                        out / f"b-srv-{make}-{qps}",
                    )
            else:
                run = loadgen_run(
                    ceiling.issue,
                    ceiling.flush,
                    samples.count,
                    server_settings(qps),
                    out / f"b-srv-{make}-{qps}",
                )
            p99 = run.percentile_ms(99)
            print(
                f"  (b) {make} Server {qps:,} QPS: {'VALID' if run.valid else 'INVALID'}, "
                f"p99 {p99:.2f} ms"
            )
            if not run.valid:
                break
            best = float(qps)
        figures[label] = best
    return figures


#: Runs `harness run` in a fresh interpreter and prints its own peak RSS (VmHWM). ru_maxrss
#: would also count the pages of this (large) process that the fork copied before exec.
_PEAK_RSS = """
import sys
from harness.cli import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read().splitlines()
print("VmHWM", next(line.split()[1] for line in status if line.startswith("VmHWM")))
sys.exit(code)
"""


def part_c() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, "run", "--model", "resnet50", "--out", tmp, "-q"],
            check=True,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
    peak_kib = int(done.stdout.split("VmHWM")[-1].split()[0])
    return {"peak_rss_mib": peak_kib / 1024, "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenet")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    print(f"machine: {cpu_name()}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        a = part_a(args.model, args.batch_size, args.streams, args.repeats, out)
        b = part_b(out)
    c = None if args.skip_rss else part_c()
    print()
    print(
        f"(a) {a['config']}: raw loop {a['raw']:.2f} samples/s, harness Offline "
        f"{a['harness']:.2f} samples/s, ratio {a['ratio_median']:.3f} (median of "
        f"{', '.join(f'{r:.3f}' for r in a['ratios'])}; target >= 0.97)"
    )
    print(
        f"(b) Offline: harness {b['harness_offline']:,.0f} samples/s vs LoadGen ceiling "
        f"{b['loadgen_offline']:,.0f} (target >= 400,000)"
    )
    print(
        f"(b) Server (10 ms, p99): harness {b['harness_server']:,.0f} QPS VALID vs LoadGen "
        f"ceiling {b['loadgen_server']:,.0f} (ladder {SERVER_LADDER}; target >= 100,000)"
    )
    if c is not None:
        print(
            f"(c) peak RSS of `harness run --model resnet50` (fp32, defaults): "
            f"{c['peak_rss_mib']:.0f} MiB in {c['seconds']:.1f} s (target <= 1024 MiB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

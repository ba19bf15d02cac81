"""Regenerate the real LoadGen logs that tests/harness/test_loadgen_log.py parses.

Rerun (about 10 s, CPU only) from the repository root with the project's venv:

    python tests/harness/data/loadgen/make_fixtures.py [OUT_ROOT]

OUT_ROOT defaults to this script's folder. Each case gets its own folder holding only
mlperf_log_summary.txt and mlperf_log_detail.txt; the other files LoadGen writes are deleted.
The SUT is a pool of threads that sleep a fixed time per sample, so the outcome of each case
(valid, too short, over latency, too few queries) does not depend on the machine's speed.
After a rerun, update the exact values asserted in test_loadgen_log.py.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlperf_loadgen as lg

KEEP = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")


@dataclass(frozen=True)
class Case:
    """One LoadGen run: its scenario, load and how slow the SUT is."""

    name: str
    scenario: str
    qps: float
    sleep_s: float
    workers: int
    min_duration_ms: int
    min_query_count: int
    latency_ms: float = 50.0
    complete_twice: int = 0  # samples the SUT completes twice, so LoadGen logs errors


CASES = (
    # 2 workers x 1 ms -> ~2000 samples/s; 4000 qps x 1 s x 1.1 samples last ~2 s: VALID.
    Case("offline_valid", "Offline", 4000.0, 0.001, 2, 1000, 1),
    # expected qps far too low: the single query ends long before min_duration.
    Case("offline_invalid", "Offline", 200.0, 0.001, 2, 1000, 1),
    # 1 ms per sample against a 50 ms bound, 1000 queries: VALID.
    Case("server_valid", "Server", 500.0, 0.001, 4, 1000, 1000),
    # 20 ms per sample against a 10 ms bound: every query is over latency.
    Case("server_invalid_latency", "Server", 300.0, 0.02, 16, 1000, 600, latency_ms=10.0),
    # ~200 queries is below what early stopping needs (~459 with no over-latency query).
    Case("server_invalid_early_stopping", "Server", 200.0, 0.001, 4, 1000, 1),
    # as offline_valid, but 3 samples are completed twice: LoadGen logs 3 `error_runtime`.
    Case("offline_sut_errors", "Offline", 4000.0, 0.001, 2, 1000, 1, complete_twice=3),
)


def run_case(case: Case, outdir: Path) -> None:
    """Run LoadGen once for `case` with a sleeping SUT and keep its two log files."""
    work: queue.Queue[tuple[int, int] | None] = queue.Queue()
    twice = threading.Semaphore(case.complete_twice)

    def worker() -> None:
        while (item := work.get()) is not None:
            time.sleep(case.sleep_s)
            lg.QuerySamplesComplete([lg.QuerySampleResponse(item[0], 0, 0)])
            if twice.acquire(blocking=False):
                lg.QuerySamplesComplete([lg.QuerySampleResponse(item[0], 0, 0)])

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(case.workers)]
    for t in threads:
        t.start()

    def issue(samples: list[lg.QuerySample]) -> None:
        for s in samples:
            work.put((s.id, s.index))

    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(64, 64, lambda idx: None, lambda idx: None)
    ts = lg.TestSettings()
    ts.scenario = getattr(lg.TestScenario, case.scenario)
    ts.mode = lg.TestMode.PerformanceOnly
    ts.min_duration_ms = case.min_duration_ms
    ts.min_query_count = case.min_query_count
    ts.offline_expected_qps = case.qps
    ts.server_target_qps = case.qps
    ts.server_target_latency_ns = int(case.latency_ms * 1e6)
    ts.server_target_latency_percentile = 0.99
    outdir.mkdir(parents=True, exist_ok=True)  # LoadGen does not create it
    ls = lg.LogSettings()
    ls.log_output.outdir = str(outdir)
    ls.enable_trace = False
    lg.StartTestWithLogSettings(sut, qsl, ts, ls)
    for _ in threads:
        work.put(None)
    for t in threads:
        t.join()
    lg.DestroySUT(sut)
    lg.DestroyQSL(qsl)
    for f in outdir.iterdir():
        if f.name not in KEEP:
            f.unlink()


def main(argv: list[str]) -> None:
    """Write every case under the given root (default: this script's folder)."""
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    for case in CASES:
        run_case(case, root / case.name)
        valid = "Result is : VALID" in (root / case.name / KEEP[0]).read_text()
        print(f"{case.name}: {'VALID' if valid else 'INVALID'}")


if __name__ == "__main__":
    main(sys.argv)

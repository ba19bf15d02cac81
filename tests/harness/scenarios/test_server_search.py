"""The max-QPS search under real LoadGen on the null backend: a good first guess (the queueing
model's) needs few runs; a wildly wrong one still ends on a VALID target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.backends import BackendOptions
from harness.backends.null import NullBackend
from harness.config import RunConfig, ScenarioSpec
from harness.dataset import SampleSet
from harness.loadgen_log import LoadgenRun
from harness.scenarios import Outcome, server
from harness.sut import BatchingSUT
from tests.harness.search_checks import answer_runs, check_answer

SAMPLES = SampleSet({"input": np.zeros((64, 4), np.float32)})


def null_backend(latency_ms: float) -> NullBackend:
    options = BackendOptions(extra={"latency_ms": latency_ms, "per_sample_ms": 0.0})
    backend = NullBackend(Path("unused.onnx"), options)
    backend.load()
    return backend


def check_search(outcome: Outcome, spec: ScenarioSpec) -> None:
    """Every run reported; the answer is the largest target below every INVALID one that was
    VALID each time, and it was run twice."""
    assert outcome.valid and outcome.score > 0
    assert 1 <= len(outcome.runs) <= spec.max_search_runs
    check_answer(outcome.runs, outcome.score, confirmed=not outcome.note)
    assert outcome.primary in answer_runs(outcome.runs)


def test_the_first_probe_is_the_models_guess(tmp_path: Path, cache_dir: Path) -> None:
    """End to end: the warm-up's batch latencies feed the queueing model, whose prediction is
    the search's first probe (B=1, one stream, 1 ms: about 800 QPS meet p90 <= 10 ms). At p90
    LoadGen's early stopping lets 43 of 600 queries run late; at p99 none may, so one scheduler
    hiccup would decide the run and the count of runs would be noise.
    """
    from harness.runner import measure

    run = RunConfig(
        model="tiny",
        backend="null",
        deque_timeout_us=0,
        samples=64,
        cache_dir=cache_dir,
        backend_options={"latency_ms": 1.0, "per_sample_ms": 0.0},
    )
    spec = ScenarioSpec(
        scenario="server",
        find_max_qps=True,
        duration_s=0.1,
        latency_ms=10.0,
        percentile=90.0,
        min_queries=600,
        qps_tolerance=0.05,
        out_dir=tmp_path,
    )
    result = measure(run, spec)
    offline, *probes = result.loadgen_runs
    assert offline["scenario"] == "Offline"
    assert result.valid and result.qps is not None and 0 < result.qps < 1000
    # How many runs a good guess saves is a benchmark figure (it depends on this machine's
    # noise through the warm-up), not a unit-test assertion: here, only that it converges.
    assert 1 <= len(probes) <= spec.max_search_runs
    # Not the blind first probe: the model's guess.
    assert probes[0]["target_qps"] != pytest.approx(
        server.FIRST_PROBE * offline["samples_per_second"]
    )


@pytest.mark.parametrize("error", [10.0, 0.1], ids=["10x-high", "10x-low"])
def test_a_wildly_wrong_guess_still_ends_on_a_valid_target(tmp_path: Path, error: float) -> None:
    # 0.5 ms per sample on one stream: capacity 2000/s; p90 of 5 ms holds to roughly 1600.
    spec = ScenarioSpec(
        scenario="server",
        find_max_qps=True,
        duration_s=0.05,
        latency_ms=5.0,
        percentile=90.0,
        min_queries=100,
        qps_tolerance=0.05,
    )
    with BatchingSUT(null_backend(0.5), SAMPLES, 1, 1, 0) as sut:
        outcome = server.find_max_qps(sut, spec, 2000.0, tmp_path, first_guess=1600.0 * error)
    check_search(outcome, spec)
    first = outcome.runs[0].target_qps or 0.0
    if error > 1:  # capped one tolerance step under the bound
        assert first == pytest.approx(2000.0 / 1.05)
    else:
        assert first == pytest.approx(160.0)
        assert outcome.score > 2 * first  # it climbed


def test_no_valid_target_scores_zero_with_a_note(tmp_path: Path) -> None:
    # 2 ms per sample can never meet a 1 ms bound; the run-length guard ends the descent.
    spec = ScenarioSpec(
        scenario="server",
        find_max_qps=True,
        duration_s=0.05,
        latency_ms=1.0,
        percentile=90.0,
        min_queries=100,
        max_run_s=0.3,
    )
    with BatchingSUT(null_backend(2.0), SAMPLES, 1, 1, 0) as sut:
        outcome = server.find_max_qps(sut, spec, 500.0, tmp_path, first_guess=480.0)
    assert not outcome.valid and outcome.score == 0.0
    assert "no VALID" in outcome.note
    assert outcome.runs and not any(r.valid for r in outcome.runs)
    targets = [r.target_qps or 0.0 for r in outcome.runs]
    assert targets == sorted(targets, reverse=True) and targets[0] == 480.0
    assert all(spec.server_min_queries / t <= spec.max_run_s for t in targets)


def scripted(capacity: float, fail_second_run_at: float | None = None, nth: int = 2) -> Any:
    """A stand-in for run_at: VALID below `capacity`, except run `nth` (default the second) at
    `fail_second_run_at` (a run at the edge failing by chance); `.targets` lists the probes."""
    targets: list[float] = []

    def run_at(sut: object, spec: ScenarioSpec, qps: float, out_dir: Path) -> LoadgenRun:
        unlucky = qps == fail_second_run_at and targets.count(qps) == nth - 1
        targets.append(qps)
        return LoadgenRun(
            scenario="Server",
            valid=qps < capacity and not unlucky,
            log_dir=str(out_dir),
            target_qps=qps,
            scheduled_qps=qps * 0.999,
        )

    run_at.targets = targets  # type: ignore[attr-defined]
    return run_at


def test_the_answer_is_run_twice_and_a_second_run_that_fails_moves_it_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = ScenarioSpec(scenario="server", find_max_qps=True, qps_tolerance=0.02)
    probe = scripted(capacity=101.0)
    monkeypatch.setattr(server, "run_at", probe)
    outcome = server.find_max_qps(None, spec, 200.0, tmp_path, first_guess=100.0)  # type: ignore[arg-type]
    assert probe.targets == [100.0, 102.0, 100.0]  # VALID, INVALID above, VALID again
    assert outcome.valid and outcome.score == pytest.approx(99.9) and not outcome.note
    check_answer(outcome.runs, outcome.score)

    # The answer's second run fails: 100 counts as INVALID now; the search goes on below it.
    probe = scripted(capacity=101.0, fail_second_run_at=100.0)
    monkeypatch.setattr(server, "run_at", probe)
    outcome = server.find_max_qps(None, spec, 200.0, tmp_path, first_guess=100.0)  # type: ignore[arg-type]
    assert probe.targets[:3] == [100.0, 102.0, 100.0]
    assert outcome.valid and outcome.score < 99.9 and not outcome.note
    check_answer(outcome.runs, outcome.score)
    answer = answer_runs(outcome.runs)
    assert answer[0].target_qps < 100.0


def test_answer_runs_sets_how_often_the_answer_must_pass(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """answer_runs=1 reports the first VALID target of a converged bracket; 3 runs it twice
    more, and a third run that fails moves the answer down like a failed second run."""
    one = ScenarioSpec(scenario="server", find_max_qps=True, qps_tolerance=0.02, answer_runs=1)
    probe = scripted(capacity=101.0)
    monkeypatch.setattr(server, "run_at", probe)
    outcome = server.find_max_qps(None, one, 200.0, tmp_path, first_guess=100.0)  # type: ignore[arg-type]
    assert probe.targets == [100.0, 102.0]  # VALID, INVALID above: bracketed and done
    assert outcome.valid and outcome.score == pytest.approx(99.9) and not outcome.note
    check_answer(outcome.runs, outcome.score, need=1)

    three = ScenarioSpec(scenario="server", find_max_qps=True, qps_tolerance=0.02, answer_runs=3)
    probe = scripted(capacity=101.0)
    monkeypatch.setattr(server, "run_at", probe)
    outcome = server.find_max_qps(None, three, 200.0, tmp_path, first_guess=100.0)  # type: ignore[arg-type]
    assert probe.targets == [100.0, 102.0, 100.0, 100.0]
    assert outcome.valid and not outcome.note
    check_answer(outcome.runs, outcome.score, need=3)

    probe = scripted(capacity=101.0, fail_second_run_at=100.0, nth=3)
    monkeypatch.setattr(server, "run_at", probe)
    outcome = server.find_max_qps(None, three, 200.0, tmp_path, first_guess=100.0)  # type: ignore[arg-type]
    assert probe.targets[:4] == [100.0, 102.0, 100.0, 100.0]
    assert outcome.valid and not outcome.note
    check_answer(outcome.runs, outcome.score, need=3)
    assert answer_runs(outcome.runs)[0].target_qps < 100.0


def test_a_refined_guess_moves_the_next_probe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`refine` (the model refitted to each run) sends the next probe to its guess while the
    answer is bracketed on one side only; then the search bisects and confirms as before."""
    spec = ScenarioSpec(scenario="server", find_max_qps=True, qps_tolerance=0.02)
    seen: list[float] = []

    def refine(qps: float, run: LoadgenRun) -> float | None:
        seen.append(qps)
        return 120.0

    # A VALID first run at 100, refined to 120: probes 120 (VALID), then one tolerance above
    # it (INVALID), then 120 again.
    probe = scripted(capacity=122.0)
    monkeypatch.setattr(server, "run_at", probe)
    outcome = server.find_max_qps(None, spec, 200.0, tmp_path, first_guess=100.0, refine=refine)  # type: ignore[arg-type]
    assert probe.targets == pytest.approx([100.0, 120.0, 122.4, 120.0])
    assert seen == pytest.approx([100.0, 120.0])  # not once the answer is bracketed
    assert outcome.valid and outcome.score == pytest.approx(120.0 * 0.999)
    check_answer(outcome.runs, outcome.score)

    # An INVALID first run at 150 refined to 120: down to 120, not one step of 2 %; then the
    # bracket (120, 150) is bisected to the tolerance.
    probe = scripted(capacity=122.0)
    monkeypatch.setattr(server, "run_at", probe)
    outcome = server.find_max_qps(None, spec, 200.0, tmp_path, first_guess=150.0, refine=refine)  # type: ignore[arg-type]
    assert probe.targets[:2] == pytest.approx([150.0, 120.0])
    assert outcome.valid and 120.0 * 0.999 <= outcome.score < 122.0
    check_answer(outcome.runs, outcome.score)


def test_a_refined_guess_on_the_wrong_side_is_a_tolerance_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = ScenarioSpec(scenario="server", find_max_qps=True, qps_tolerance=0.02)
    # VALID at 100 but the refit says 90: one tolerance up, to bracket the answer at once.
    probe = scripted(capacity=101.0)
    monkeypatch.setattr(server, "run_at", probe)
    outcome = server.find_max_qps(  # type: ignore[arg-type]
        None, spec, 200.0, tmp_path, first_guess=100.0, refine=lambda q, r: 90.0
    )
    assert probe.targets == pytest.approx([100.0, 102.0, 100.0])
    check_answer(outcome.runs, outcome.score)
    # A refit that has nothing to say (None) leaves the search as it was.
    probe = scripted(capacity=101.0)
    monkeypatch.setattr(server, "run_at", probe)
    server.find_max_qps(None, spec, 200.0, tmp_path, first_guess=100.0, refine=lambda q, r: None)  # type: ignore[arg-type]
    assert probe.targets == pytest.approx([100.0, 102.0, 100.0])

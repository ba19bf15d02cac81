"""The peers `benchmarks/tuner_efficiency.py` and `benchmarks/server_search.py` compare the
tuner with (`benchmarks/peers.py`): Model Analyzer's quick search, the exhaustive grid, plain
TPE, vLLM's interpolation search and the 19/20 edge walk, on made-up measurements."""

from __future__ import annotations

import json
import math
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from optuna.trial import TrialState

from benchmarks import peers, tuner_efficiency
from tests.tuner.test_replay import landscape
from tuner.pipeline import optimize
from tuner.replay import LandscapeReplay


def test_the_neighbourhood_steps_come_in_model_analyzers_order() -> None:
    assert peers.ma_steps(2, 1) == [[0, 0], [0, 1], [0, -1], [1, 0], [-1, 0]]
    steps = peers.ma_steps(2, 3)
    assert len(steps) == 29  # the lattice points of a disc of radius 3
    assert len({tuple(s) for s in steps}) == len(steps)
    assert all(math.dist(s, (0, 0)) <= 3 for s in steps)


def test_quick_search_climbs_from_the_smallest_configuration_to_the_peak() -> None:
    sizes = (6, 2, 2)  # batch, streams, precision indices

    def measure(c: peers.Coordinate) -> peers.Measurement:
        return 20.0 - (c[0] - 4) ** 2 + 2 * c[1] - c[2], True

    found = peers.quick_search(sizes, measure)
    assert found.measured[0] == (0, 0, 0)
    assert found.best == (4, 1, 0)
    assert len(found.measured) == len(set(found.measured)) < 6 * 2 * 2 / 2


def test_quick_search_stops_where_no_neighbour_gains_9_percent() -> None:
    found = peers.quick_search((6, 2, 2), lambda c: (20.0 - (c[0] - 1) ** 2, True))
    # Home and the three neighbours it needs; every gain is under the first step's 9%.
    assert len(found.measured) == 1 + peers.MA_MIN_INITIALIZED
    assert found.best == (1, 1, 0)


def test_quick_search_declares_only_a_configuration_that_passes_the_constraints() -> None:
    # Throughput grows with the batch, but from index 4 on the latency bound fails.
    found = peers.quick_search((6, 2, 2), lambda c: (20.0 - (c[0] - 4) ** 2, c[0] < 4))
    assert found.best is not None and found.best[0] == 3
    assert len(found.measured) == len(set(found.measured))


def test_quick_search_with_a_failed_home_stops_and_declares_nothing() -> None:
    found = peers.quick_search((4, 2), lambda c: None)
    assert found.measured == [(0, 0)] and found.best is None


def test_the_exhaustive_grid_declares_the_best_median_not_the_luckiest_run() -> None:
    draws = {"a": iter([10.0, 1.0, 1.0]), "b": iter([5.0, 5.0, 5.0])}
    best, medians = peers.exhaustive_grid(["a", "b"], lambda p: next(draws[p]), repeats=3)
    assert best == "b" and medians == [1.0, 5.0]


def test_pchip_reproduces_a_line_and_finds_its_root() -> None:
    xs, ys = [0.0, 2.0, 7.0, 10.0], [-5.0, -3.0, 2.0, 5.0]
    assert peers.pchip_slopes(xs, ys) == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert peers.pchip_roots(xs, ys) == pytest.approx([5.0])
    # A flat stretch stays flat (no overshoot), and a knot at zero is a root.
    assert peers.pchip_slopes([0.0, 1.0, 2.0], [1.0, 1.0, 3.0])[1] == 0.0
    assert peers.pchip_roots([0.0, 1.0, 2.0], [-1.0, 0.0, 1.0]) == [1.0]


def test_the_interpolation_search_probes_the_ends_then_solves_for_the_bound() -> None:
    probed: list[float] = []

    def probe(qps: float) -> float:
        probed.append(qps)
        return qps - 100.0  # the percentile meets the bound up to 100 QPS

    answer, history = peers.interpolation_search(probe, 20.0, 200.0, 0.02)
    assert probed[:2] == [200.0, 20.0]
    assert answer is not None and 100.0 / 1.02 <= answer <= 100.0
    assert history.min_failing() <= history.max_passing() * 1.02 * (1 + 1e-9)
    assert len(probed) <= 6
    # Every probe after the ends lies on the lattice 20 x 1.02^k.
    for qps in probed[2:]:
        k = math.log(qps / 20.0) / math.log(1.02)
        assert k == pytest.approx(round(k))


def test_a_failure_with_no_margin_left_does_not_stall_the_interpolation_search() -> None:
    # LoadGen's early stopping fails runs whose percentile is still under the bound: the
    # margin there is ~0 and the root sits on the failing probe; the lattice rounds down.
    def probe(qps: float) -> float:
        return qps - 100.0 if qps <= 100.0 else max(qps - 110.0, 1e-9)

    answer, history = peers.interpolation_search(probe, 20.0, 200.0, 0.02)
    assert answer is not None and answer <= 100.0
    assert len(history.margins) < 12


def test_the_interpolation_search_ends_at_once_when_the_top_passes_or_the_bottom_fails() -> None:
    answer, history = peers.interpolation_search(lambda q: -1.0, 20.0, 200.0, 0.02)
    assert answer == 200.0 and list(history.margins) == [200.0]
    answer, history = peers.interpolation_search(lambda q: 1.0, 20.0, 200.0, 0.02)
    assert answer is None and list(history.margins) == [200.0, 20.0]


def test_the_reliable_edge_is_the_highest_target_passing_19_of_20() -> None:
    runs: dict[float, int] = {}

    def passes(qps: float) -> bool:
        runs[qps] = runs.get(qps, 0) + 1
        return qps <= 100.0 or (qps <= 104.0 and runs[qps] != 7)  # one failure in 20

    edge, tally = peers.reliable_edge(passes, 90.0, 0.02)
    assert edge is not None and 102.0 < edge <= 104.0
    assert all(n == 20 for q, (ok, n) in tally.items() if q <= 104.0)
    above = [(ok, n) for q, (ok, n) in tally.items() if q > 104.0]
    assert above == [(0, 2)]  # a failing target stops at its second failure
    # From above, the walk goes down to the first target that passes.
    edge_down, tally_down = peers.reliable_edge(lambda q: q <= 100.0, 110.0, 0.02)
    assert edge_down is not None and 100.0 / 1.02 < edge_down <= 100.0
    assert max(tally_down) == 110.0


def test_the_replay_draws_a_recorded_repeat_for_a_peer(tmp_path: Path) -> None:
    replay = LandscapeReplay(landscape(tmp_path / "l.json"), seed=1)
    repeat = replay.draw({"batch_size": 4, "streams": 2, "precision": "int8"})
    assert repeat is not None and repeat["score"] in (47.0, 48.0, 49.0)
    assert replay.draw({"batch_size": 64, "streams": 2, "precision": "int8"}) is None
    assert replay.calls == 2 and replay.seconds == 3.0 and replay.engines == {("int8", 4)}


def test_each_peer_runs_on_a_landscape_and_spends_what_it_says(tmp_path: Path) -> None:
    # The best stands out from the noise: 0.1 between repeats, 2 between configurations.
    path = landscape(
        tmp_path / "l.json",
        value=lambda b, s, p, r: 10.0 * b + 3.0 * s + (5.0 if p == "int8" else 0.0) + 0.1 * r,
    )
    probe = LandscapeReplay(path)
    data, best = probe.data, probe.best()[1]
    rows = {
        peer: tuner_efficiency.run_peer(path, data, peer, 3, 12, "session", 0.0, best)
        for peer in tuner_efficiency.PEERS
    }
    grid = len(probe.repeats)
    assert rows["grid3"]["measurements"] == 3 * grid
    assert rows["grid3"]["declared"] == [1.0, 1.0, 1.0]
    assert rows["plain-tpe"]["measurements"] == 12
    # The landscape grows with batch, streams and int8: the hill climb reaches its top.
    assert rows["quick"]["declared"] == [1.0, 1.0, 1.0]
    assert rows["quick"]["measurements"] < grid


def test_grid_parity_compares_the_default_with_the_grid_at_median_and_10th_percentile() -> None:
    def row(declared: list[float], measurements: float) -> dict[str, object]:
        return {"declared": declared, "measurements": measurements}

    grid = row([0.97] * 10 + [0.99] * 10, 72)
    rows = {tuner_efficiency.DEFAULT: row([0.98] * 20, 18), "grid3": grid}
    verdict = tuner_efficiency.grid_parity(rows, 24)
    assert verdict is not None and verdict["pass"] and "PASS" in verdict["line"]
    rows[tuner_efficiency.DEFAULT] = row([0.96] + [1.0] * 19, 18)  # p10 of 20 seeds: the 2nd
    assert tuner_efficiency.grid_parity(rows, 24)["pass"]  # type: ignore[index]
    rows[tuner_efficiency.DEFAULT] = row([0.96, 0.96] + [1.0] * 18, 18)
    assert not tuner_efficiency.grid_parity(rows, 24)["checks"]["p10"]  # type: ignore[index]
    rows[tuner_efficiency.DEFAULT] = row([1.0] * 20, 25)  # over a third of 72
    verdict = tuner_efficiency.grid_parity(rows, 24)
    assert verdict is not None and not verdict["pass"] and "FAIL" in verdict["line"]


def test_the_reliable_answer_target_needs_confirmations_the_edge_and_few_runs() -> None:
    from benchmarks.server_search import Figures, Search, edge_summary

    def figures(runs: int, confirms: list[bool], share: float) -> list[Figures]:
        out = []
        for i in range(10):
            model = Search(runs=runs, qps=100.0 * share, confirms=list(confirms), to_edge=share)
            out.append(Figures(config=f"c{i}", recorded_batch_ms=1.0, edge=100.0))
            out[-1].searches = {"model": model}
        return out

    assert edge_summary(figures(4, [True, True, True], 1.0), 0.02)["reliable_answer"]["pass"]
    over = edge_summary(figures(5, [True, True, True], 1.0), 0.02)["reliable_answer"]
    assert not over["pass"] and over["checks"] == {
        "confirmation": True,
        "edge": True,
        "runs": False,
    }
    # 27 of 30 is 90%: enough; 26 of 30 is not. An answer under 95% of the edge fails.
    nine_in_ten = figures(4, [True, True, True], 1.0)
    for f in nine_in_ten[:3]:
        f.searches["model"].confirms[0] = False
    assert edge_summary(nine_in_ten, 0.02)["reliable_answer"]["pass"]
    nine_in_ten[3].searches["model"].confirms[0] = False
    assert not edge_summary(nine_in_ten, 0.02)["reliable_answer"]["checks"]["confirmation"]
    low = figures(4, [True, True, True], 0.94)
    assert not edge_summary(low, 0.02)["reliable_answer"]["checks"]["edge"]
    # Too few runs to judge: 2 confirmations per configuration (20 < 30).
    assert not edge_summary(figures(4, [True, True], 1.0), 0.02)["reliable_answer"]["pass"]


def _exported(path: Path) -> Path:
    """An ONNX model as an exporter of a text model writes it: `ids` [batch, sequence]."""
    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["out"])],
        "exported",
        [helper.make_tensor_value_info("ids", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, dims)],
    )
    onnx.save(helper.make_model(graph), path)
    return path


@pytest.mark.parametrize("here", [True, False], ids=["model-here", "model-not-here"])
def test_a_landscape_of_an_exported_model_replays_with_or_without_its_file(
    tmp_path: Path, here: bool
) -> None:
    # A landscape of an exported BERT names its model file and the dims it was recorded with.
    # Where the file is here (benchmarks/models/ after the real-models runs) the study inspects
    # it and needs those dims bound; in a fresh clone it is not, and the tiny stand-in has no
    # dim to bind them to.
    model = _exported(tmp_path / "bert.onnx") if here else tmp_path / "bert.onnx"
    path = landscape(tmp_path / "l.json")
    data = {**json.loads(path.read_text()), "model": str(model), "dims": {"sequence": 32}}
    path.write_text(json.dumps(data))
    cfg = tuner_efficiency.study_config(path, data, "tpe", 0, 4, False, tmp_path / "s.db")
    assert (cfg.model, dict(cfg.dims)) == (
        (str(model), {"sequence": 32}) if here else ("tiny", {})
    )
    finished = optimize(cfg, lambda line: None, measure=LandscapeReplay(path, 0))
    done = finished.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 4

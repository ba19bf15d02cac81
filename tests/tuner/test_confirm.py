"""Confirmed winners and engine builds: `optimize` re-measures its top configurations and the
best median wins; grid search keeps points sharing an engine together; the summary counts the
engines built. Null backend (jittered) or ONNX Runtime on a tiny model, through `main([...])`.

Where a test needs a lucky run or a failing repeat it replaces the confirmation's
`measure_in_child` (the trials themselves are measured for real). Ctrl-C is a real SIGINT to a
`python -m tuner optimize` process group, as in tests/tuner/test_distributed.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from harness.config import RunConfig, ScenarioSpec
from harness.errors import ConfigError
from tests.tuner.cli_checks import NULL_OPTIMIZE
from tests.tuner.test_distributed import finish, processes, start, wait_for
from tuner import config
from tuner.child import ChildOutcome, WarmWorker
from tuner.cli import main
from tuner.confirm import candidates, confirm
from tuner.results import (
    baseline_trial,
    best_trial,
    confirmed_value,
    engine_builds,
    robust_value,
)
from tuner.space import SearchSpace
from tuner.study import Prepared, grid_order, prepare, time_left

TRIALS = 5
__all__ = ["processes"]  # the fixture, imported for the Ctrl-C test


def optimize_args(db: Path, cache_dir: Path, runs: Path, *extra: str) -> list[str]:
    """A jittered null-backend Offline study: 4 batch sizes x 2 streams x 3 precisions."""
    return [
        *NULL_OPTIMIZE,
        "--backend-option",
        "per_sample_ms=0.05",
        "--backend-option",
        "jitter=0.3",
        "--seed",
        "3",
        "--trials",
        str(TRIALS),
        "--storage",
        f"sqlite:///{db}",
        "--cache-dir",
        str(cache_dir),
        "--runs-dir",
        str(runs),
        "--duration-s",
        "0.3",
        "--quiet",
        *extra,
    ]


def load(db: Path) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    return optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}")


def trial_attr_rows(db: Path) -> list[tuple[Any, ...]]:
    """Every row of Optuna's trial user attribute table: confirmation writes none of them (it
    stores through the public API, as study attributes)."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        return sorted(con.execute("SELECT trial_id, key, value_json FROM trial_user_attributes"))


def repeats(study: optuna.Study, trial: FrozenTrial) -> list[float]:
    """The trial's confirmation scores as the study stores them."""
    return list(study.user_attrs[f"confirm:{trial.number}"])


def check_top(study: optuna.Study, numbers: list[int], k: int) -> list[FrozenTrial]:
    """Check that `numbers` are the k best distinct feasible configurations, against their
    definition rather than a second copy of the selection: measured (not copied) feasible trials,
    no configuration twice, best first, and every other feasible measured trial either repeats a
    chosen configuration without beating its trial or is no better than the last one chosen.
    Returns the chosen trials."""
    trials = {t.number: t for t in study.get_trials()}
    feasible = [
        t
        for t in trials.values()
        if t.state == TrialState.COMPLETE
        and "duplicate_of" not in t.user_attrs
        and all(v <= 0 for v in t.constraints.values())
    ]
    chosen = [trials[n] for n in numbers]
    assert all(t in feasible for t in chosen), numbers
    assert len({json.dumps(t.params, sort_keys=True) for t in chosen}) == len(chosen)
    assert len(chosen) == min(k, len({json.dumps(t.params, sort_keys=True) for t in feasible}))
    values = [t.values[0] for t in chosen]
    assert values == sorted(values, reverse=True), values
    for other in feasible:
        if other in chosen:
            continue
        same = [t for t in chosen if t.params == other.params]
        bound = same[0] if same else chosen[-1]
        assert other.values[0] <= bound.values[0], (other.number, bound.number)
    return chosen


def checked_candidates(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """`confirm.candidates(study, k)`, checked against the definition (check_top)."""
    chosen = candidates(study, k)
    return check_top(study, [t.number for t in chosen], k)


def summary_row(out: str, label: str) -> dict[str, str]:
    """The cells of the summary table's row `label` ("best", "baseline"), by column name."""
    lines = out.splitlines()
    (i,) = [i for i, line in enumerate(lines[:-1]) if set(lines[i + 1]) == {"-", " "}]
    header = ["", *re.split(r"\s{2,}", lines[i].strip())]
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines[i + 2 :]]
    (row,) = [c for c in cells if c[0] == label and len(c) == len(header)]  # not a text line
    return dict(zip(header, row, strict=True))


@pytest.fixture(scope="module")
def unconfirmed(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, str]:
    """A finished study run with `--confirm-runs 0`, and its summary."""
    folder = tmp_path_factory.mktemp("unconfirmed")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            optimize_args(folder / "s.db", cache_dir, folder / "runs", "--confirm-runs", "0")
        )
    assert code == 0
    return folder / "s.db", out.getvalue()


@pytest.fixture
def study_db(unconfirmed: tuple[Path, str], tmp_path: Path) -> Path:
    """A private copy of the unconfirmed study."""
    db = tmp_path / "s.db"
    shutil.copyfile(unconfirmed[0], db)
    return db


Fake = Callable[[RunConfig, ScenarioSpec, float], ChildOutcome]


def fake_measure(
    study: optuna.Study, scores: Callable[[FrozenTrial, int], ChildOutcome | float]
) -> tuple[Fake, list[str]]:
    """A stand-in for the confirmation's measure_in_child: `scores(trial, i)` for repeat i of
    the configuration of `trial`; also returns the list of log folders it was asked for."""
    calls: list[str] = []

    def measure(run: RunConfig, spec: ScenarioSpec, timeout_s: float) -> ChildOutcome:
        calls.append(spec.out_dir.name)
        _, number, repeat = spec.out_dir.name.split("-")  # confirm-<trial>-<i>
        (trial,) = [t for t in study.get_trials() if t.number == int(number)]
        params = {"batch_size": run.batch_size, "streams": run.streams, "precision": run.precision}
        assert params == trial.params  # the repeat measures that trial's configuration
        got = scores(trial, int(repeat))
        if isinstance(got, ChildOutcome):
            return got
        return ChildOutcome({"score": got, "valid": True}, seconds=0.1)

    return measure, calls


def patch_confirmation(monkeypatch: pytest.MonkeyPatch, fake: Fake) -> None:
    """Confirmation runs answered by `fake`; trials still measured for real (both go through
    the pipeline's one warm worker)."""

    class Routed(WarmWorker):
        def __call__(self, run: RunConfig, spec: ScenarioSpec, timeout_s: float) -> ChildOutcome:
            if spec.out_dir.name.startswith("confirm-"):
                return fake(run, spec, timeout_s)
            return super().__call__(run, spec, timeout_s)

    monkeypatch.setattr("tuner.pipeline.WarmWorker", Routed)


def no_measuring(run: RunConfig, spec: ScenarioSpec, timeout_s: float) -> ChildOutcome:
    raise AssertionError(f"measured {spec.out_dir.name} again")


def test_confirm_runs_0_keeps_the_best_single_run(unconfirmed: tuple[Path, str]) -> None:
    db, out = unconfirmed
    study = load(db)
    assert "confirmed_best" not in study.user_attrs
    assert not any(key.startswith("confirm:") for key in study.user_attrs)
    assert not any("confirm_scores" in t.user_attrs for t in study.get_trials())
    assert not list((db.parent / "runs").glob("*/confirm-*"))
    assert best_trial(study).number == study.best_trial.number  # type: ignore[union-attr]
    assert "not confirmed" in out and "confirmed: median" not in out


def test_optimize_confirms_the_top_configurations(
    study_db: Path, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real repeats: each candidate gets 1 + N scores, the best median wins everywhere."""
    runs = tmp_path / "runs"
    rows = trial_attr_rows(study_db)
    argv = optimize_args(study_db, cache_dir, runs, "--confirm-runs", "2", "--confirm-top", "2")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert trial_attr_rows(study_db) == rows  # nothing written onto the finished trials
    study = load(study_db)
    confirmed = check_top(study, study.user_attrs["confirmed_top"], 2)
    assert len(confirmed) == 2  # TRIALS configurations, feasible on the null backend
    assert study.user_attrs["confirmed_at"]
    for trial in confirmed:
        scores = repeats(study, trial)
        assert len(scores) == 3 and scores[0] == trial.values[0]
        assert confirmed_value(trial, study.user_attrs) == statistics.median(scores)
        assert not {"confirm_scores", "confirmed_score"} & set(trial.user_attrs)
        assert {p.name for p in runs.glob("*/confirm-*")} >= {
            f"confirm-{trial.number:04d}-{i}" for i in (1, 2)
        }
    median = {t.number: statistics.median(repeats(study, t)) for t in confirmed}
    winner = max(confirmed, key=lambda t: (median[t.number], -t.number))
    assert study.user_attrs["confirmed_best"] == winner.number
    best = best_trial(study)
    assert best is not None and best.number == winner.number
    assert robust_value(best, study.user_attrs) == median[winner.number]
    assert "confirmed: median of 3 runs" in out
    row, p = summary_row(out, "best"), winner.params
    assert (row["trial"], row["batch"], row["streams"], row["precision"]) == (
        str(winner.number),
        str(p["batch_size"]),
        str(p["streams"]),
        p["precision"],
    )
    assert row["samples/s"] == f"{median[winner.number]:,.2f}"  # the median
    assert len(study.get_trials()) == TRIALS  # confirmation adds no trials

    exported = tmp_path / "best.json"
    export = ["export", "--storage", f"sqlite:///{study_db}", "--study", study.study_name]
    assert main([*export, "--out", str(exported)]) == 0
    doc = json.loads(exported.read_text())["trial"]
    assert doc["number"] == winner.number
    assert doc["value"] == pytest.approx(median[winner.number])
    assert doc["confirmed"]["runs"] == 3


def test_a_lucky_run_loses_and_a_failed_or_invalid_repeat_scores_0(
    study_db: Path,
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = load(study_db)
    lucky, runner_up, third = checked_candidates(study, 3)
    assert best_trial(study).number == lucky.number  # type: ignore[union-attr]
    base = baseline_trial(study)
    assert base is not None and base.number not in {lucky.number, runner_up.number, third.number}

    def scores(trial: FrozenTrial, i: int) -> ChildOutcome | float:
        if trial.number != lucky.number:
            return trial.values[0] * (0.9 if i == 1 else 0.95)
        if i == 1:
            return ChildOutcome(None, "crash", "crashed: killed by SIGSEGV", 0.1)
        return ChildOutcome({"score": trial.values[0] * 1.2, "valid": False}, seconds=0.1)

    fake, calls = fake_measure(study, scores)
    patch_confirmation(monkeypatch, fake)
    argv = optimize_args(study_db, cache_dir, tmp_path / "runs")
    rows = trial_attr_rows(study_db)
    assert main(argv) == 0  # the defaults: 2 more runs of the top 3
    out = capsys.readouterr().out
    assert trial_attr_rows(study_db) == rows
    assert sorted(calls) == sorted(  # and the baseline, whose value the speed-up divides by
        f"confirm-{t.number:04d}-{i}" for t in (lucky, runner_up, third, base) for i in (1, 2)
    )
    study = load(study_db)
    attrs = {t.number: t.user_attrs for t in study.get_trials()}
    assert repeats(study, lucky) == [lucky.values[0], 0.0, 0.0]
    assert confirmed_value(lucky, study.user_attrs) == 0.0
    median = runner_up.values[0] * 0.95
    assert confirmed_value(runner_up, study.user_attrs) == pytest.approx(median)
    assert study.user_attrs["confirmed_best"] == runner_up.number
    assert best_trial(study).number == runner_up.number  # type: ignore[union-attr]
    row = summary_row(out, "best")
    assert (row["trial"], row["samples/s"]) == (str(runner_up.number), f"{median:,.2f}")
    assert "confirmed: median of 3 runs" in out
    base_median = base.values[0] * 0.95  # of its own run, 0.9x and 0.95x
    assert repeats(study, base) == pytest.approx(
        [base.values[0], *(base_median / 0.95 * f for f in (0.9, 0.95))]
    )
    assert robust_value(base, study.user_attrs) == pytest.approx(base_median)
    assert summary_row(out, "baseline")["samples/s"] == f"{base_median:,.2f}"
    runs = ", ".join(f"{s:,.1f}" for s in repeats(study, base))
    assert f"baseline confirmed: median of 3 runs ({runs} samples/s)" in out
    assert f"speed-up over the baseline: {median / base_median:.2f}x" in out

    # Every export, the report and the listing use the confirmed winner and its median.
    export = ["export", "--storage", f"sqlite:///{study_db}", "--study", study.study_name]
    assert main([*export, "--out", str(tmp_path / "b.json")]) == 0
    doc = json.loads((tmp_path / "b.json").read_text())["trial"]
    assert doc["number"] == runner_up.number and doc["value"] == pytest.approx(median)
    assert main([*export, "--format", "user.conf", "--out", str(tmp_path / "user.conf")]) == 0
    conf = (tmp_path / "user.conf").read_text()
    assert f"tiny.Offline.target_qps = {median!r}\n" in conf and "median samples/s" in conf
    assert main([*export, "--format", "nvidia", "--out", str(tmp_path / "nv.json")]) == 0
    nvidia = json.loads((tmp_path / "nv.json").read_text())["tiny"]
    assert nvidia["gpu_offline_expected_qps"] == round(median, 1)
    capsys.readouterr()
    report = ["report", "--storage", f"sqlite:///{study_db}", "--study", study.study_name]
    assert main([*report, "--out", str(tmp_path / "report")]) == 0
    text = capsys.readouterr().out
    assert f"best: trial {runner_up.number}," in text and f"{median:,.1f} samples/s" in text
    assert "confirmed: median of 3 runs" in text
    assert f"baseline confirmed: median of 3 runs ({runs} samples/s)" in text
    assert f"speed-up: {median / base_median:.2f}x" in text
    assert main([*report, "--json", str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["baseline"]["value"] == pytest.approx(base_median)
    assert doc["speed_up"] == pytest.approx(median / base_median)
    assert main(["studies", "--storage", f"sqlite:///{study_db}"]) == 0
    assert f"{median:,.2f}" in capsys.readouterr().out

    # The same command again: the top set is unchanged, nothing is measured.
    before = dict(load(study_db).user_attrs)
    patch_confirmation(monkeypatch, no_measuring)
    assert main(argv) == 0
    again = load(study_db)
    assert dict(again.user_attrs) == before
    assert {t.number: t.user_attrs for t in again.get_trials()} == attrs

    # A larger budget: only a new configuration in the top set is measured.
    confirmed = set(before["confirmed_top"])
    fake, calls = fake_measure(again, lambda t, i: t.values[0])
    patch_confirmation(monkeypatch, fake)
    assert main([*argv[:-1], "--trials", str(TRIALS + 2)]) == 0
    new = {int(c.split("-")[1]) for c in calls}
    assert not new & confirmed and all(n >= TRIALS for n in new)
    assert load(study_db).user_attrs["confirmed_best"] is not None


def confirm_lists(db: Path) -> dict[int, list[float]]:
    """Every `confirm:<trial>` list the study holds, by trial number."""
    attrs = load(db).user_attrs
    return {int(k.split(":")[1]): list(v) for k, v in attrs.items() if k.startswith("confirm:")}


def test_ctrl_c_while_confirming_exits_130_and_the_rerun_finishes(
    study_db: Path,
    cache_dir: Path,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
) -> None:
    """A real SIGINT to `optimize`'s process group, as Ctrl-C in a terminal sends it, once the
    best configuration's second repeat is measuring: exit 130 with the summary, the repeats
    stored so far kept, no winner yet; the same command again measures only what is missing
    (the kept scores stay as they were) and names the winner."""
    study = load(study_db)
    (first,) = checked_candidates(study, 1)
    runs = tmp_path / "runs"
    argv = optimize_args(study_db, cache_dir, runs)  # the defaults: 2 more runs of the top 3
    proc = start(argv, tmp_path)  # SIGINT at its default, in a process group of its own
    processes.append(proc)
    measuring = runs / study.study_name / f"confirm-{first.number:04d}-2"
    wait_for(measuring.exists, f"{measuring.name} measuring", [proc], timeout=120)
    os.killpg(proc.pid, signal.SIGINT)
    code, out, err = finish(proc, timeout=120)
    assert code == 130, err
    assert out.startswith("study tiny-offline-null-simulated-cpu"), out  # the summary
    assert "interrupted while confirming" in err and "Traceback" not in err, err

    assert load(study_db).user_attrs.get("confirmed_best") is None
    kept = confirm_lists(study_db)
    assert len(kept[first.number]) >= 2 and kept[first.number][0] == first.values[0]

    argv.remove("--quiet")  # the rerun says each run it measures
    again = start(argv, tmp_path)
    processes.append(again)
    code, out, err = finish(again)
    assert code == 0, err
    assert "confirmed: median of 3 runs" in out and "not confirmed" not in out
    done = load(study_db)
    final = confirm_lists(study_db)
    assert done.user_attrs["confirmed_best"] is not None
    assert set(final) >= set(kept) and all(len(scores) == 3 for scores in final.values())
    for number, scores in kept.items():
        assert final[number][: len(scores)] == scores  # kept, not measured again
    # Exactly the missing repeats were measured: 3 scores each, less what was kept (a trial
    # with nothing kept had its own value only).
    missing = sum(3 - len(kept.get(number, [0.0])) for number in final)
    assert missing >= 1  # the run measuring when Ctrl-C came, at least
    said = re.findall(r"confirm trial (\d+) run (\d)/2: ", err)
    assert len(said) == missing, (said, kept, final)
    assert {int(number) for number, _ in said} <= set(final)


def test_with_workers_the_parent_confirms_after_they_finish(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, runs = tmp_path / "w.db", tmp_path / "runs"
    argv = optimize_args(db, cache_dir, runs, "--workers", "2", "--confirm-runs", "1")
    argv[argv.index("--trials") + 1] = "3"
    assert main([*argv, "--confirm-top", "2"]) == 0
    study = load(db)
    confirmed = check_top(study, study.user_attrs["confirmed_top"], 2)
    assert len(confirmed) == 2
    assert all(len(repeats(study, t)) == 2 for t in confirmed)
    assert study.user_attrs["confirmed_best"] in {t.number for t in confirmed}
    measured = {t.number for t in confirmed} | {baseline_trial(study).number}  # type: ignore[union-attr]
    assert len(list(runs.glob("*/confirm-*"))) == len(measured)
    assert all(len(repeats(study, t)) == 2 for t in study.get_trials() if t.number in measured)
    assert "confirmed: median of 2 runs" in capsys.readouterr().out


def _made(
    batch: int,
    streams: int,
    value: float | None,
    feasible: bool = True,
    state: TrialState = TrialState.COMPLETE,
    **attrs: Any,
) -> FrozenTrial:
    return create_trial(
        state=state,
        value=value,
        params={"batch_size": batch, "streams": streams, "precision": "fp32"},
        distributions={
            "batch_size": CategoricalDistribution([1, 2, 4, 8]),
            "streams": CategoricalDistribution([1, 2]),
            "precision": CategoricalDistribution(["fp32"]),
        },
        user_attrs=attrs,
        constraints={"valid": 0.0 if feasible else 1.0},
    )


def test_candidates_are_the_best_measured_feasible_trial_of_each_configuration() -> None:
    """Hand-built trials and hand-picked answers (b = batch size, s = streams)."""
    study = optuna.create_study(direction="maximize")
    for trial in [
        _made(1, 1, 100.0),  # 0: b1 s1
        _made(2, 1, 300.0),  # 1: b2 s1, measured again by trial 3
        _made(4, 1, 500.0, feasible=False),  # 2: the highest value, but INVALID
        _made(2, 1, 350.0),  # 3: b2 s1's better run
        _made(2, 1, 400.0, duplicate_of=1),  # 4: a copy, never a candidate
        _made(1, 2, 350.0),  # 5: ties trial 3: the lower number first
        _made(8, 1, None, state=TrialState.FAIL),  # 6
        _made(2, 2, 250.0),  # 7
        _made(8, 2, 50.0),  # 8
    ]:
        study.add_trial(trial)
    assert [t.number for t in candidates(study, 1)] == [3]
    assert [t.number for t in candidates(study, 3)] == [3, 5, 7]
    assert [t.number for t in candidates(study, 99)] == [3, 5, 7, 0, 8]
    check_top(study, [3, 5, 7], 3)  # the checker the end-to-end tests use agrees
    with pytest.raises(AssertionError):
        check_top(study, [3, 7, 5], 3)  # ... and fails on a wrong order
    with pytest.raises(AssertionError):
        check_top(study, [3, 5, 0], 3)  # ... or a better configuration left out
    with pytest.raises(AssertionError):
        check_top(study, [4, 5, 7], 3)  # ... or a copy
    with pytest.raises(AssertionError):
        check_top(study, [5, 1, 7], 3)  # ... or a configuration's worse run


@pytest.mark.parametrize(
    ("baseline", "top", "measured"),
    [
        (_made(1, 1, 400.0), [1, 0], [1, 0]),  # among the top 2: measured again as a candidate
        (_made(1, 1, 100.0), [1, 2], [1, 2, 0]),  # below them: measured again too, after them
        (_made(1, 1, 100.0, feasible=False), [1, 2], [1, 2]),  # INVALID: nothing to divide by
    ],
)
def test_the_baseline_is_measured_again_where_the_speed_up_needs_it(
    baseline: FrozenTrial, top: list[int], measured: list[int], tmp_path: Path
) -> None:
    """The speed-up divides the winner's median by the baseline's value: the baseline gets the
    same repeats as the candidates, once (hand-built trials, a stand-in measure)."""
    study = optuna.create_study(direction="maximize")
    for trial in [baseline, _made(2, 1, 500.0), _made(4, 1, 300.0), _made(8, 1, 200.0)]:
        study.add_trial(trial)
    cfg = config.build(
        model="tiny", backend="null", trials=4, confirm_top=2, runs_dir=tmp_path / "runs"
    )
    measure, folders = fake_measure(study, lambda trial, i: 0.9 * trial.values[0])

    def calls() -> list[int]:
        return [int(folder.split("-")[1]) for folder in folders]  # confirm-<trial>-<i>

    space = SearchSpace((1, 2, 4, 8), (1, 2), ("fp32",), ())
    said: list[str] = []
    winner = confirm(Prepared(cfg, study, space, {}, measure), said.append)
    assert winner is not None and winner.number == 1  # batch 2: median of 500, 450, 450
    assert calls() == [*measured, *measured[::-1]]  # in rounds: A B base, then base B A
    attrs = study.user_attrs
    assert attrs["confirmed_top"] == top
    assert sorted(int(k.split(":")[1]) for k in attrs if k.startswith("confirm:")) == sorted(
        measured
    )
    base = study.trials[0]
    if 0 in measured:
        assert robust_value(base, attrs) == pytest.approx(0.9 * base.values[0])
    else:
        assert confirmed_value(base, attrs) is None and robust_value(base, attrs) == 100.0
    assert ("trial 0 (the baseline)" in said[0]) == (0 not in top and 0 in measured)

    folders.clear()  # and again: nothing is left to measure
    assert confirm(Prepared(cfg, study, space, {}, measure), said.append) == winner
    assert calls() == []
    # A study confirmed before the baseline was, or one whose baseline was a candidate: only
    # what is missing is measured.
    study.set_user_attr("confirm:0", None)
    assert confirm(Prepared(cfg, study, space, {}, measure), said.append) == winner
    assert calls() == ([0, 0] if 0 in measured else [])
    what = "the baseline" if 0 not in top else "the top 2"
    assert (f"confirming {what}: 2 more run(s) of trial 0" in "\n".join(said)) == (0 in measured)


def test_the_time_left_counts_the_confirmation_runs_after_the_trials() -> None:
    """The progress line's estimate: at 5 s a trial, the default 16 trials are followed by 8
    confirmation runs (the top 3 and the baseline, twice more each)."""
    cfg = config.build(trials=16)
    assert time_left(cfg, done=4, done_here=4, elapsed=20.0) == (12 + 8) * 5.0
    assert time_left(cfg, done=16, done_here=16, elapsed=80.0) == 8 * 5.0  # not yet ~0:00
    assert time_left(cfg, done=10, done_here=2, elapsed=10.0) == (6 + 8) * 5.0  # resumed
    assert time_left(config.build(trials=16, confirm_runs=0), 16, 16, 80.0) == 0.0
    assert time_left(config.build(trials=8, confirm_top=1, confirm_runs=4), 8, 8, 8.0) == 8.0
    server = config.build(trials=16, scenario="server", objectives=["throughput", "p99"])
    assert time_left(server, 16, 16, 80.0) == 0.0  # several objectives: nothing confirmed
    assert time_left(config.build(trials=16, timeout_s=90), 4, 4, 20.0) == 70.0  # --timeout


def test_confirm_settings_are_checked_and_read_from_a_study_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[study]\nconfirm_runs = 4\nconfirm_top = 5\n")
    cfg = config.build(path)
    assert (cfg.confirm_runs, cfg.confirm_top) == (4, 5)
    assert config.build(path, confirm_runs=0).confirm_runs == 0  # a flag overrides the file
    assert (config.build().confirm_runs, config.build().confirm_top) == (2, 3)
    with pytest.raises(ConfigError, match=r"study\.confirm_runs"):
        config.build(confirm_runs=-1)
    with pytest.raises(ConfigError, match=r"study\.confirm_top"):
        config.build(confirm_top=0)


# ---------------------------------------------------------------------------- engines


def test_grid_order_keeps_points_sharing_an_engine_together() -> None:
    space = SearchSpace((1, 2, 4, 8), (1, 2, 3), ("fp32", "fp16", "int8"), (500, 2000))
    for seed in range(5):
        order = grid_order(space, seed)
        assert sorted(map(str, order)) == sorted(map(str, space.points()))
        engines = [(p["precision"], p["batch_size"]) for p in order]
        groups = [e for i, e in enumerate(engines) if i == 0 or engines[i - 1] != e]
        assert len(groups) == len(set(engines)) == 12  # each engine's points in one run
        assert grid_order(space, seed) == order  # seeded
    assert grid_order(space, 0) != grid_order(space, 1)
    first = grid_order(space, 0, first=[{"batch_size": 4, "streams": 1, "precision": "int8"}])
    assert {(p["precision"], p["batch_size"]) for p in first[:6]} == {("int8", 4)}


def test_a_grid_study_enqueues_the_baseline_engine_first_then_one_engine_at_a_time(
    tmp_path: Path, cache_dir: Path
) -> None:
    cfg = config.build(
        model="tiny",
        backend="null",
        sampler="grid",
        batch_sizes=[1, 2, 4],
        streams=[1, 2],
        precisions=["fp32", "int8"],
        trials=12,
        storage=f"sqlite:///{tmp_path / 'grid.db'}",
        cache_dir=cache_dir,
        runs_dir=tmp_path / "runs",
    )
    study = prepare(cfg).study
    queued = [
        t.system_attrs["fixed_params"] for t in study.get_trials(states=(TrialState.WAITING,))
    ]
    assert queued[0] == {"batch_size": 1, "streams": 1, "precision": "fp32"}
    assert len(queued) == 12 and len({str(p) for p in queued}) == 12
    engines = [(p["precision"], p["batch_size"]) for p in queued]
    groups = [e for i, e in enumerate(engines) if i == 0 or engines[i - 1] != e]
    assert groups[0] == ("fp32", 1) and len(groups) == len(set(engines)) == 6


def test_engine_builds_onnxruntime_int8_builds_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fp32 is the model itself; the first int8 trial builds the variant, the next finds it."""
    argv = [
        "optimize",
        "--model",
        "tiny",
        "--backend",
        "onnxruntime",
        "--batch-sizes",
        "1",
        "--streams",
        "1,2",
        "--precisions",
        "fp32,int8",
        "--sampler",
        "grid",
        "--trials",
        "4",
        "--confirm-runs",
        "0",
        "--prune",  # every point measured: the builds are counted over all four
        "off",
        "--storage",
        f"sqlite:///{tmp_path / 'ort.db'}",
        "--cache-dir",
        str(tmp_path / "cache"),  # fresh: nothing built yet
        "--runs-dir",
        str(tmp_path / "runs"),
        "--duration-s",
        "0.3",
        "--quiet",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    study = load(tmp_path / "ort.db")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    built = [(t.params["precision"], t.user_attrs["engine_cached"]) for t in trials]
    int8 = [cached for precision, cached in built if precision == "int8"]
    assert int8 == [False, True]
    assert all(cached for precision, cached in built if precision == "fp32")
    assert engine_builds(study) == 1
    assert "engine builds: 1" in out
    report = ["report", "--storage", f"sqlite:///{tmp_path / 'ort.db'}"]
    assert main([*report, "--study", study.study_name, "--out", str(tmp_path / "report")]) == 0
    assert "engine builds: 1" in capsys.readouterr().out


def test_engine_builds_is_unknown_for_trials_that_did_not_record_it() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"score": 1.0}))
    assert engine_builds(study) is None
    attrs: dict[str, Any] = {"engine_cached": False}
    study.add_trial(optuna.trial.create_trial(value=2.0, user_attrs=attrs))
    study.add_trial(optuna.trial.create_trial(value=2.0, user_attrs={**attrs, "duplicate_of": 1}))
    assert engine_builds(study) == 1

"""A study's results for people: a table of trials, a CSV, PNG plots and a short summary.

matplotlib is optional (`batch-tuner[report]`); without it `write_report` still writes the CSV
and then raises a TunerError saying what to install.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from harness.errors import TunerError
from tuner.results import (
    TrialRecord,
    baseline_trial,
    best_trial,
    confirm_scores,
    confirmed_value,
    engine_builds,
    is_copy,
    is_feasible,
    measured_throughput,
    pruned_baseline,
    rate_unit,
    robust_value,
    speed_up,
    speed_up_floor,
    study_setting,
)
from tuner.sessions import measuring_line, measuring_share, sessions
from tuner.summary import (
    confirmed_lines,
    latency_at,
    out_of_reach_lines,
    pruned_lines,
    run_latency,
    runtime_lines,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PARAMS = ("backend", "batch_size", "streams", "precision", "deque_timeout_us")
_TAIL = (
    "confirmed_score",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "agreement_top1",
    "agreement_metric",
    "agreement_value",
    "engine_cached",
    "engine_build_s",
    "trial_seconds",
)
_INT_COLUMNS = ("number", "batch_size", "streams", "deque_timeout_us", "duplicate_of")
PRECISION_COLORS = {
    "fp32": "tab:blue",
    "fp16": "tab:orange",
    "bf16": "tab:red",
    "int8": "tab:green",
}
STREAM_STYLES = (("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--"))
INSTALL_HINT = "plots need matplotlib: pip install 'batch-tuner[report]'"


# ---------------------------------------------------------------------------- the data


def is_server(study: optuna.Study) -> bool:
    return study_setting(study.user_attrs, "scenario") == "server"


def is_multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def throughput_key(study: optuna.Study) -> str:
    """`qps` for Server studies, `samples_per_second` for Offline ones."""
    return "qps" if is_server(study) else "samples_per_second"


def unit(study: optuna.Study) -> str:
    return rate_unit(study_setting(study.user_attrs, "scenario"))


def percentile(study: optuna.Study) -> float | None:
    """The Server bound's latency percentile (99.0 for p99); None in an Offline study."""
    if not is_server(study):
        return None
    value = study_setting(study.user_attrs, "percentile")
    return float(value) if isinstance(value, (int, float)) else 99.0


def value_columns(study: optuna.Study) -> list[str]:
    """`value` for one objective; `value_<objective>` (or `value_<i>`) for several."""
    if not is_multi(study):
        return ["value"]
    names = list(study_setting(study.user_attrs, "objectives") or [])
    if len(names) != len(study.directions):
        names = [str(i) for i in range(len(study.directions))]
    return [f"value_{name}" for name in names]


def _columns(study: optuna.Study, params: Sequence[str]) -> list[str]:
    head = ["number", "state", *params, *value_columns(study), "score", "valid", "feasible"]
    tail = ["percentile_ms", "duplicate_of", "pruned", "fail_reason"]
    return [*head, throughput_key(study), *_TAIL, *tail]


def _row(
    trial: FrozenTrial, study: optuna.Study, params: Sequence[str], attrs: Mapping[str, Any]
) -> dict[str, Any]:
    record = TrialRecord.from_trial(trial)
    row: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
    row.update({name: trial.params.get(name) for name in params})
    values = trial.values or [None] * len(study.directions)
    row.update(zip(value_columns(study), values, strict=True))
    row["feasible"] = is_feasible(trial)
    for key in ("score", "valid", throughput_key(study), *_TAIL, "duplicate_of", "fail_reason"):
        row[key] = getattr(record, key)
    row["confirmed_score"] = confirmed_value(trial, attrs)  # derived from the study's repeats
    row["percentile_ms"] = latency_at(record, percentile(study))  # what the bound judges
    row["pruned"] = record.note if trial.state == TrialState.PRUNED else None
    return row


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, sorted by number: state, params, value(s) and the main measurements."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    params = [p for p in PARAMS if any(p in t.params for t in trials)]
    attrs = study.user_attrs  # once, not per trial
    rows = [_row(t, study, params, attrs) for t in trials]
    frame = pd.DataFrame(rows, columns=_columns(study, params))
    for name in _INT_COLUMNS:
        if name in frame:
            frame[name] = pd.to_numeric(frame[name]).astype("Int64")
    return frame.reset_index(drop=True)


# ---------------------------------------------------------------------------- the table


def _num(digits: int) -> Callable[[Any], str]:
    return lambda v: f"{float(v):,.{digits}f}"


def _yes_no(value: Any) -> str:
    return "yes" if bool(value) else "no"


def _clip(width: int) -> Callable[[Any], str]:
    return lambda v: str(v) if len(str(v)) <= width else str(v)[: width - 1] + "…"


def _table_spec(study: optuna.Study, frame: pd.DataFrame) -> list[tuple[str, str, Any]]:
    """(column, header, formatter) for each table column present in the frame."""
    spec: list[tuple[str, str, Any]] = [
        ("number", "#", _num(0)),
        ("state", "state", str),
        ("backend", "runtime", str),  # studies of several runtimes
        ("batch_size", "batch", _num(0)),
        ("streams", "streams", _num(0)),
        ("precision", "prec", str),
        ("deque_timeout_us", "deque us", _num(0)),
    ]
    for col in value_columns(study):
        spec.append((col, col.replace("value_", "") if col != "value" else "value", _num(1)))
    spec += [
        ("valid", "valid", _yes_no),
        ("feasible", "feasible", _yes_no),
        (throughput_key(study), unit(study), _num(1)),
        ("confirmed_score", "median", _num(1)),
        ("p50_ms", "p50 ms", _num(2)),
        ("p99_ms", "p99 ms", _num(2)),
        ("agreement_metric", "agree by", str),
        ("agreement_value", "agreement", _num(3)),
        ("agreement_top1", "top1", _num(3)),  # studies made before agreement had a metric
        ("engine_cached", "engine", lambda v: "cached" if v else "built"),
        ("engine_build_s", "build s", _num(1)),
        ("trial_seconds", "trial s", _num(1)),
        ("duplicate_of", "dup of", _num(0)),
        ("fail_reason", "fail reason", _clip(48)),
    ]
    if "agreement_value" in frame.columns:
        spec = [s for s in spec if s[0] != "agreement_top1"]
    pct = percentile(study)
    if pct is not None and pct not in (50.0, 99.0):  # the bound's percentile, beside p99
        at = [c for c, _, _ in spec].index("p99_ms")
        spec.insert(at, ("percentile_ms", f"p{pct:g} ms", _num(2)))
    return [s for s in spec if s[0] in frame.columns]


def _cell(value: Any, fmt: Callable[[Any], str]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    return fmt(value)


def trials_table(study: optuna.Study) -> str:
    """The trials as a fixed-column plain-text table; '*' marks the best trial(s)."""
    frame = trials_frame(study)
    spec = _table_spec(study, frame)
    best = {t.number for t in _best_trials(study)}
    rows = [[""] + [h for _, h, _ in spec]]
    for record in frame.to_dict("records"):
        mark = "*" if record["number"] in best else ""
        rows.append([mark] + [_cell(record[c], f) for c, _, f in spec])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    text_cols = {
        i + 1 for i, (c, _, _) in enumerate(spec) if c in ("state", "backend", "precision")
    }
    text_cols.add(len(spec))  # the last column (fail reason) reads better left-aligned

    def line(cells: list[str]) -> str:
        out = [
            c.ljust(w) if i in text_cols else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    rule = "  ".join(["-" * w if i else " " * w for i, w in enumerate(widths)])
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


# ---------------------------------------------------------------------------- the summary


def config_label(params: dict[str, Any]) -> str:
    """`batch 32, 2 streams, fp16` (plus the batching timeout in Server studies; the runtime
    first in a study of several)."""
    streams = params.get("streams")
    text = f"{params['backend']}, " if params.get("backend") is not None else ""
    text += f"batch {params.get('batch_size')}, {streams} stream{'' if streams == 1 else 's'}, "
    text += str(params.get("precision"))
    if params.get("deque_timeout_us") is not None:
        text += f", deque {params['deque_timeout_us']:,} us"
    return text


def _best_trials(study: optuna.Study) -> list[FrozenTrial]:
    if is_multi(study):
        return list(study.best_trials)
    best = best_trial(study)
    return [best] if best is not None else []


def context(study: optuna.Study) -> str:
    """`resnet50 · Offline · onnxruntime on <device> (simulated)`."""
    attrs = study.user_attrs
    scenario = str(study_setting(attrs, "scenario", "?")).capitalize()
    text = f"{attrs.get('model', study.study_name)} · {scenario} · "
    text += f"{study_setting(attrs, 'backend', '?')} on {attrs.get('device', '?')}"
    return text + (" (simulated)" if attrs.get("simulated") else "")


def _measure(trial: FrozenTrial, study: optuna.Study) -> str:
    text = f"{robust_value(trial, study.user_attrs):,.1f} {unit(study)}"
    pct = percentile(study)  # Offline: None (a latency there is the whole query's)
    ms = latency_at(TrialRecord.from_trial(trial), pct)
    if pct is not None and ms is not None:
        text += f", p{pct:g} {ms:,.2f} ms"
    return text


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """How many trials the study holds: in all, COMPLETE, infeasible (of those), PRUNED,
    FAIL."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return {
        "total": len(trials),
        "complete": len(complete),
        "infeasible": sum(not is_feasible(t) for t in complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
    }


def summary_lines(study: optuna.Study) -> list[str]:
    """The best configuration, its score, the baseline and the speed-up, in a few lines."""
    n = trial_counts(study)
    lines = [
        f"{context(study)}: {n['total']} trials "
        f"({n['complete']} complete, {n['infeasible']} infeasible, "
        f"{f'{pruned} pruned, ' if (pruned := n['pruned']) else ''}{n['failed']} failed)"
    ]
    best, base = best_trial(study), baseline_trial(study)
    if best is None:
        lines.append("best: no feasible trial yet")
        lines.extend(out_of_reach_lines(study))
    else:
        lines.append(
            f"best: trial {best.number}, {config_label(best.params)}: {_measure(best, study)}"
        )
    pruned_base = pruned_baseline(study) if base is None else None
    if pruned_base is not None:
        lines.append(f"baseline: trial {pruned_base.number}, pruned")
    elif base is None:
        lines.append("baseline (batch 1, 1 stream, fp32): not measured")
    else:
        lines.append(
            f"baseline: trial {base.number}, {config_label(base.params)}: {_measure(base, study)}"
        )
    ratio, floor = speed_up(study), speed_up_floor(study)
    if ratio:
        lines.append(f"speed-up: {ratio:.2f}x over the baseline")
    elif floor is not None:
        lines.append(f"speed-up: at least {floor[0]:.2f}x over the baseline (pruned)")
    else:
        lines.append("speed-up: n/a")
    lines.extend(pruned_lines(study, unit(study)))
    lines.extend(confirmed_lines(study, unit(study)))
    lines.extend(runtime_lines(study, unit(study)))
    builds = engine_builds(study)
    if builds is not None:
        lines.append(f"engine builds: {builds}")
    lines.append(measuring_line(study.user_attrs))
    if is_multi(study):
        front = sorted(t.number for t in study.best_trials)
        lines.append("Pareto front: trials " + (", ".join(map(str, front)) or "none"))
    return lines


# ---------------------------------------------------------------------------- the plots


def _figure_class() -> type[Figure]:
    """matplotlib's Figure, on the Agg backend; TunerError when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        raise TunerError(INSTALL_HINT) from None
    return Figure


def _new_axes(figure_cls: type[Figure], study: optuna.Study, title: str) -> tuple[Figure, Axes]:
    fig = figure_cls(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    fig.suptitle(title, fontsize=14, fontweight="bold")
    ax.set_title(context(study), fontsize=10, color="dimgray")
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, format="png")
    return path


def _measured(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials that measured something themselves (not copies of an earlier trial)."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not is_copy(t)
    ]


def _group_style(index: int) -> tuple[str, str]:
    return STREAM_STYLES[index % len(STREAM_STYLES)]


def plot_throughput(figure_cls: type[Figure], study: optuna.Study, path: Path) -> Path | None:
    """Throughput vs batch size, one line per (runtime, precision, streams); infeasible points
    hollow. One color per precision, or per runtime and precision in a study of several."""
    trials = _measured(study)
    if not trials:
        return None
    fig, ax = _new_axes(figure_cls, study, "Throughput vs batch size")
    streams = sorted({t.params.get("streams", 1) for t in trials})
    groups: dict[tuple[str, str, int], list[FrozenTrial]] = {}
    for t in trials:
        key = (t.params.get("backend", ""), t.params.get("precision", "?"))
        groups.setdefault((*key, t.params.get("streams", 1)), []).append(t)
    pairs = sorted({(runtime, precision) for runtime, precision, _ in groups})
    several = len({runtime for runtime, _ in pairs}) > 1
    for (runtime, precision, stream), members in sorted(groups.items()):
        color = PRECISION_COLORS.get(precision, "tab:purple")
        if several:
            color = f"C{pairs.index((runtime, precision)) % 10}"
        marker, style = _group_style(streams.index(stream))
        label = f"{runtime + ' ' if runtime else ''}{precision}, {stream} stream"
        label += "" if stream == 1 else "s"
        _plot_group(ax, members, color, marker, style, label)
    _mark_best(ax, best_trial(study), lambda t: (t.params["batch_size"], measured_throughput(t)))
    if any(not is_feasible(t) for t in trials):
        ax.plot([], [], "o", color="gray", markerfacecolor="none", label="infeasible (hollow)")
    batches = sorted({t.params["batch_size"] for t in trials})
    ax.set_xscale("log", base=2)
    ax.margins(x=0.08, y=0.1)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size (log2)")
    ax.set_ylabel(f"throughput ({unit(study)})")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(_thousands())
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def _plot_group(
    ax: Axes, members: list[FrozenTrial], color: str, marker: str, style: str, label: str
) -> None:
    """A line through the best feasible point at each batch size, plus every point."""
    best_at: dict[int, float] = {}
    for t in members:
        if is_feasible(t):
            b = t.params["batch_size"]
            best_at[b] = max(best_at.get(b, 0.0), measured_throughput(t))
    xs = sorted(best_at)
    if xs:
        ax.plot(
            xs, [best_at[x] for x in xs], linestyle=style, color=color, marker=marker, label=label
        )
    bad = [t for t in members if not is_feasible(t)]
    if not bad:
        return
    ax.plot(
        [t.params["batch_size"] for t in bad],
        [measured_throughput(t) for t in bad],
        linestyle="none",
        marker=marker,
        markersize=8,
        markerfacecolor="none",
        markeredgecolor=color,
        clip_on=False,
        label="_nolegend_" if xs else label,
    )
    for t in bad:
        ax.annotate(
            why_infeasible(t),
            (t.params["batch_size"], measured_throughput(t)),
            fontsize=8,
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            color=color,
        )


def why_infeasible(trial: FrozenTrial) -> str:
    """`INVALID`, `top1 0.900`, `precision infeasible`: the violated constraints in a few
    words."""
    words = []
    record = TrialRecord.from_trial(trial)
    for name, value in sorted(trial.constraints.items(), key=lambda kv: kv[0] != "valid"):
        if value > 0:
            agreement = record.agreement
            if name == "valid":
                words.append("INVALID")
            elif name == "accuracy" and agreement is not None:
                words.append(f"{record.metric} {float(agreement):.3f}")
            elif name == "precision":
                words.append("precision infeasible")
            else:
                words.append(name)
    return ", ".join(words)


def _mark_best(
    ax: Axes, best: FrozenTrial | None, where: Callable[[FrozenTrial], tuple[float, float]]
) -> None:
    if best is None:
        return
    x, y = where(best)
    ax.plot(
        [x],
        [y],
        "*",
        color="gold",
        markersize=18,
        markeredgecolor="black",
        zorder=1.5,
        label=f"best (trial {best.number})",
    )


def _thousands() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{v:,.0f}")


def server_points(study: optuna.Study) -> list[tuple[float, float, bool]]:
    """(target QPS, latency ms at the bound's percentile, valid) of every Server LoadGen run of
    every measured trial."""
    pct = percentile(study)
    points = []
    for t in _measured(study):
        for run in TrialRecord.from_trial(t).loadgen_runs or []:
            if str(run.get("scenario", "")).lower() != "server":
                continue
            ms = run_latency(run, pct)
            if run.get("target_qps") is None or ms is None:
                continue
            points.append((float(run["target_qps"]), ms, bool(run.get("valid"))))
    return points


def latency_plot_name(study: optuna.Study) -> str:
    """`p99_vs_target_qps.png`, named after the bound's percentile (`p90_...` at p90)."""
    return f"p{percentile(study) or 99.0:g}_vs_target_qps.png"


def plot_latency(figure_cls: type[Figure], study: optuna.Study, path: Path) -> Path | None:
    """Server: the latency at the bound's percentile vs target QPS of every LoadGen run, with
    the bound."""
    points = server_points(study)
    if not points:
        return None
    pct = f"p{percentile(study) or 99.0:g}"
    fig, ax = _new_axes(figure_cls, study, f"{pct} latency vs target QPS (every Server run)")
    ok = [(q, p) for q, p, v in points if v]
    bad = [(q, p) for q, p, v in points if not v]
    if ok:
        ax.plot(
            *zip(*ok, strict=True), "o", color="tab:green", alpha=0.8, label=f"VALID ({len(ok)})"
        )
    if bad:
        ax.plot(
            *zip(*bad, strict=True),
            "x",
            color="tab:red",
            markersize=8,
            mew=2,
            label=f"INVALID ({len(bad)})",
        )
    bound = study_setting(study.user_attrs, "latency_ms")
    if bound is not None:
        ax.axhline(
            float(bound), color="black", linestyle="--", label=f"bound: {pct} <= {bound:g} ms"
        )
    lat = [p for _, p, _ in points] + ([float(bound)] if bound is not None else [])
    if min(lat) > 0 and max(lat) / min(lat) > 30:
        ax.set_yscale("log")
    ax.set_xlabel("target QPS")
    ax.set_ylabel(f"{pct} latency (ms)")
    ax.xaxis.set_major_formatter(_thousands())
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def plot_history(figure_cls: type[Figure], study: optuna.Study, path: Path) -> Path | None:
    """Each trial's value (throughput), the running best, and where trials failed."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if not trials:
        return None
    from matplotlib.ticker import MaxNLocator

    fig, ax = _new_axes(figure_cls, study, "Optimization history")
    good = [t for t in done if is_feasible(t)]
    bad = [t for t in done if not is_feasible(t)]
    ax.plot(
        [t.number for t in good],
        [t.values[0] for t in good],
        "o",
        color="tab:blue",
        label="feasible",
    )
    if bad:
        ax.plot(
            [t.number for t in bad],
            [t.values[0] for t in bad],
            "o",
            color="tab:blue",
            markerfacecolor="none",
            markersize=8,
            label="infeasible",
        )
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.values]
    if pruned:
        ax.plot(
            [t.number for t in pruned],
            [t.values[0] for t in pruned],
            "v",
            color="tab:gray",
            label="pruned (at its bound)",
        )
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    if failed:
        ax.plot(
            failed,
            [0.0] * len(failed),
            "x",
            color="tab:red",
            markersize=9,
            mew=2,
            clip_on=False,
            label="failed",
        )
    steps = _running_best(trials)
    if steps:
        xs, ys = zip(*steps, strict=True)
        ax.step(xs, ys, where="post", color="tab:orange", linewidth=2, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"throughput ({unit(study)})")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(_thousands())
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def _running_best(trials: Iterable[FrozenTrial]) -> list[tuple[int, float]]:
    """(trial number, best feasible throughput so far), from the first feasible trial on."""
    best: float | None = None
    steps = []
    for t in trials:
        if is_feasible(t) and (best is None or t.values[0] > best):
            best = float(t.values[0])
        if best is not None:
            steps.append((t.number, best))
    return steps


def plot_best_vs_baseline(
    figure_cls: type[Figure], study: optuna.Study, path: Path
) -> Path | None:
    """Two bars, baseline and best, with the speed-up written over the best."""
    best, base = best_trial(study), baseline_trial(study)
    if best is None or base is None:
        return None
    fig, ax = _new_axes(figure_cls, study, "Best configuration vs baseline")
    labels = [
        f"baseline (trial {base.number})\n{config_label(base.params)}",
        f"best (trial {best.number})\n{config_label(best.params)}",
    ]
    heights = [robust_value(base, study.user_attrs), robust_value(best, study.user_attrs)]
    bars = ax.bar(labels, heights, color=["tab:gray", "tab:green"], width=0.55)
    ax.bar_label(bars, [f"{h:,.1f} {unit(study)}" for h in heights], padding=3)
    ratio = speed_up(study)
    text = f"{ratio:.2f}x speed-up" if ratio else "speed-up n/a"
    top = max(heights) or 1.0
    ax.text(
        1,
        heights[1] / 2 or top * 0.1,
        text,
        ha="center",
        va="center",
        fontsize=16,
        fontweight="bold",
        color="white" if heights[1] > 0.25 * top else "black",
    )
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel(f"throughput ({unit(study)})")
    ax.yaxis.set_major_formatter(_thousands())
    ax.grid(False, axis="x")
    return _save(fig, path)


def plot_pareto(figure_cls: type[Figure], study: optuna.Study, path: Path) -> Path | None:
    """Multi-objective: throughput vs p99 latency with the Pareto front highlighted."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    fig, ax = _new_axes(figure_cls, study, "Throughput vs p99 latency (Pareto front)")
    front = sorted(study.best_trials, key=lambda t: t.values[1])
    on_front = {t.number for t in front}
    rest = [t for t in done if t.number not in on_front]
    good = [t for t in rest if is_feasible(t)]
    bad = [t for t in rest if not is_feasible(t)]
    ax.plot(
        [t.values[1] for t in good],
        [t.values[0] for t in good],
        "o",
        color="tab:gray",
        alpha=0.7,
        label="dominated",
    )
    if bad:
        ax.plot(
            [t.values[1] for t in bad],
            [t.values[0] for t in bad],
            "o",
            color="tab:gray",
            markerfacecolor="none",
            markersize=8,
            label="infeasible",
        )
    if front:
        xs, ys = [t.values[1] for t in front], [t.values[0] for t in front]
        ax.step(xs, ys, where="post", color="tab:red", alpha=0.5)
        ax.plot(xs, ys, "o", color="tab:red", markersize=9, label=f"Pareto front ({len(front)})")
        for t in front:
            ax.annotate(
                f"#{t.number} {config_label(t.params)}",
                (t.values[1], t.values[0]),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=8,
            )
    ax.set_xlabel("p99 latency (ms), lower is better")
    ax.set_ylabel(f"throughput ({unit(study)}), higher is better")
    ax.yaxis.set_major_formatter(_thousands())
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def report_json(study: optuna.Study) -> dict[str, Any]:
    """The study's outcome as `report --json` writes it: the best and the baseline with their
    (confirmed) values, the speed-up, trial counts, engine builds, and where the time went
    (`measuring_share`: the share of the sessions' wall time x processes inside LoadGen runs;
    None for a study run before sessions were recorded)."""
    attrs = study.user_attrs

    def described(trial: FrozenTrial | None) -> dict[str, Any] | None:
        if trial is None:
            return None
        return {
            "number": trial.number,
            "params": dict(trial.params),
            "value": robust_value(trial, attrs) if trial.values else None,
            "confirm_scores": confirm_scores(trial, attrs) or None,
        }

    return {
        "study": study.study_name,
        "model": attrs.get("model"),
        "scenario": study_setting(attrs, "scenario"),
        "backend": study_setting(attrs, "backend"),
        "device": attrs.get("device"),
        "unit": unit(study),
        "trials": trial_counts(study),
        "best": described(best_trial(study)),
        "baseline": described(baseline_trial(study)),
        "speed_up": speed_up(study),
        # Where the baseline was pruned on its Offline throughput: what the speed-up is at least.
        "speed_up_at_least": floor[0] if (floor := speed_up_floor(study)) is not None else None,
        "engine_builds": engine_builds(study),
        "measuring_share": measuring_share(attrs),
        "sessions": [session.to_dict() for session in sessions(attrs)],
    }


def write_report(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Write `trials.csv` and the PNG plots under `out_dir`; return the paths written.

    The CSV is written first, so it exists even when matplotlib is missing (TunerError).
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TunerError(f"cannot write the report to {out_dir}: {exc.strerror or exc}") from None
    csv = out_dir / "trials.csv"
    trials_frame(study).to_csv(csv, index=False)
    figure_cls = _figure_class()
    plots = [
        (plot_throughput, "throughput_vs_batch.png"),
        (plot_latency if is_server(study) else None, latency_plot_name(study)),
        (plot_history, "history.png"),
        (plot_best_vs_baseline, "best_vs_baseline.png"),
        (plot_pareto if is_multi(study) else None, "pareto_front.png"),
    ]
    written = [csv]
    for plot, name in plots:
        path = plot(figure_cls, study, out_dir / name) if plot is not None else None
        if path is not None:
            written.append(path)
    return written

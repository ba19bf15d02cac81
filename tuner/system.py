"""`python -m tuner system`: the study's best per-GPU configuration measured on several GPUs at
once, as one LoadGen system under test (harness.system), the way a multi-GPU MLPerf submission
is measured. The result is stored on the study (`system_result`) and printed as a table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from harness.cli_common import format_table
from harness.config import RunConfig, ScenarioSpec
from harness.errors import ConfigError, ScenarioError, TunerError
from harness.gpus import GpuInfo
from tuner.child import KILLED, call_in_child
from tuner.config import StudyConfig, from_stored
from tuner.results import best_trial, is_feasible
from tuner.space import Params
from tuner.study import load, trial_configs
from tuner.workers import check_gpu_backend, select_gpus, visible_devices

#: Study attribute holding the latest system measurement.
SYSTEM_RESULT = "system_result"


@dataclass(frozen=True)
class SystemRequest:
    """What `system` was asked to run (flags; None: the study's own setting)."""

    storage: str
    study: str
    gpus: str = "all"
    scenario: str | None = None
    latency_ms: float | None = None
    duration_s: float | None = None
    timeout_s: float | None = None
    quiet: bool = False


def run_system(
    request: SystemRequest,
    found: Sequence[GpuInfo],
    reason: str = "",
    local: dict[str, Any] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Measure the study's best configuration on the selected GPUs of `found` together; store
    and return the result (a dict, as stored under `system_result`)."""
    study = load(request.storage, request.study)
    stored = study.user_attrs.get("config")
    if not isinstance(stored, dict):
        raise TunerError(f"study {request.study!r} was not made by `python -m tuner optimize`")
    cfg = from_stored(stored, storage=request.storage, name=request.study, **(local or {}))
    check_gpu_backend(cfg.backend, "system")
    best = best_trial(study)
    if best is None or not is_feasible(best):
        raise TunerError(
            f"study {request.study!r} has no feasible trial: nothing to measure as a system"
        )
    gpus = select_gpus(request.gpus, found, reason)
    models = sorted({g.name for g in gpus})
    if len(models) > 1:
        raise ConfigError(
            f"--gpus: the GPUs are of {len(models)} models ({', '.join(models)}); a system run "
            "uses one study's configuration, so pick GPUs of one model"
        )
    device = str(study.user_attrs.get("device", ""))
    if models[0] not in device:
        raise ConfigError(
            f"--gpus: study {request.study!r} was tuned on {device!r}, not on {models[0]!r}"
        )
    params = Params.from_mapping(best.params)
    run, spec = system_configs(cfg, request, params, best.number)
    scenario = spec.scenario
    devices = [f"cuda:{i}" for i in range(len(gpus))]
    say(f"system: {len(gpus)} x {models[0]}, trial {best.number} ({params.label()}), {scenario}")
    with visible_devices(",".join(g.cuda_id for g in gpus)):
        measured = _measure_in_child(run, spec, devices, request.timeout_s, request.quiet)
    result = {
        **measured,
        "study": request.study,
        "trial": best.number,
        "params": dict(best.params),
        "gpus": [asdict(g) for g in gpus],
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for entry, gpu in zip(result["devices"], gpus, strict=True):
        entry["gpu_index"] = gpu.index
    study.set_user_attr(SYSTEM_RESULT, result)
    return result


def render(result: dict[str, Any]) -> str:
    """The system result as a table: each GPU's share, then the system score."""
    offline = result["scenario"] == "offline"
    unit = "samples/s" if offline else "QPS"
    rows: list[list[object]] = [
        [
            d["gpu_index"],
            d["device"],
            d["name"],
            d["samples"],
            f"{100 * d['share']:.1f}%",
            d["score_share"],
        ]
        for d in result["devices"]
    ]
    verdict = "VALID" if result["valid"] else "INVALID"
    total = sum(d["samples"] for d in result["devices"])
    rows.append(["all", "", "", total, "100.0%", result["score"]])
    header = ["gpu", "device", "name", "samples", "share", unit]
    p = result["latency_ms"].get(f"p{result['percentile']:g}") if result["percentile"] else None
    params = ", ".join(f"{k}={v}" for k, v in result["params"].items())
    n = len(result["devices"])
    lines = [
        f"system run of study {result['study']}, trial {result['trial']} ({params})"
        + (" [simulated]" if result["simulated"] else ""),
        format_table(rows, header),
        f"system: {result['score']:,.1f} {unit} {verdict} "
        + ("(Offline samples/s)" if offline else "(max VALID Server QPS)")
        + f"; per GPU {result['score'] / n:,.1f}"
        + (f"; p{result['percentile']:g} {p:.2f} ms" if p is not None else ""),
        f"LoadGen logs: {result['log_dir']}",
    ]
    if result.get("note"):
        lines.append(f"note: {result['note']}")
    return "\n".join(lines)


def system_configs(
    cfg: StudyConfig, request: SystemRequest, params: Params, number: int
) -> tuple[RunConfig, ScenarioSpec]:
    """The harness inputs of a system run: trial `number`'s (the study's one mapping, so every
    study setting such as `answer_runs` holds), with the request's scenario, bound and
    duration over the study's, and a folder of its own."""
    run, spec = trial_configs(cfg, params, request.study, number)
    scenario = request.scenario or cfg.scenario
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return run, replace(
        spec,
        scenario=scenario,
        duration_s=request.duration_s or cfg.duration_s,
        find_max_qps=scenario == "server",
        latency_ms=request.latency_ms or cfg.latency_ms,
        out_dir=cfg.runs_dir / request.study / f"system-{scenario}-{stamp}",
    )


def _measure_in_child(
    run: RunConfig,
    spec: ScenarioSpec,
    devices: list[str],
    timeout_s: float | None,
    quiet: bool = True,
) -> dict[str, Any]:
    """harness.system.measure_system in a spawned process (it inherits CUDA_VISIBLE_DEVICES),
    so a native crash or a hung GPU is an error message, not a dead CLI."""
    outcome = call_in_child(_measure_system, (run, spec, devices), timeout_s, quiet)
    if outcome.result is not None:
        return outcome.result
    if outcome.failure == "interrupted":
        raise KeyboardInterrupt
    if outcome.failure in ("timeout", "crash", KILLED):
        raise ScenarioError(
            f"the system run stopped after {outcome.seconds:.0f} s: {outcome.reason}"
        )
    raise TunerError(f"system run failed: {outcome.reason}")


def _measure_system(run: RunConfig, spec: ScenarioSpec, devices: list[str]) -> dict[str, Any]:
    from harness.system import measure_system

    return measure_system(run, spec, devices).to_dict()

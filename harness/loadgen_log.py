"""Read the result of one MLPerf LoadGen run from the log files LoadGen itself wrote.

Pure parsing, never timing: every number comes from `mlperf_log_detail.txt` (primary; one
`:::MLLOG {json}` entry per line) or, where the detail lacks it, `mlperf_log_summary.txt`.
Key names were checked against what mlcommons-loadgen 6.0.17 writes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.errors import ScenarioError

DETAIL_FILE = "mlperf_log_detail.txt"
SUMMARY_FILE = "mlperf_log_summary.txt"
MLLOG_PREFIX = ":::MLLOG"
# Keys parse_detail adds next to LoadGen's own (LoadGen's start with `error_` / `warning_`).
ERRORS_KEY = "errors"
WARNINGS_KEY = "warnings"

_PERCENTILE_KEY = re.compile(r"^result_(\d+(?:\.\d+)?)_percentile_latency_ns$")
_PERCENTILE_LINE = re.compile(r"^(\d+(?:\.\d+)?) percentile latency \(ns\)$")
# (name in latency_ms, detail key, summary key)
_PLAIN_LATENCY = (
    ("min", "result_min_latency_ns", "Min latency (ns)"),
    ("max", "result_max_latency_ns", "Max latency (ns)"),
    ("mean", "result_mean_latency_ns", "Mean latency (ns)"),
)
_SUMMARY_ERRORS = re.compile(r"^(\d+) ERRORS? encountered", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=\.)\s+(?=[A-Z])")


def parse_detail(text: str) -> dict[str, Any]:
    """Map each key of a detail log to its last value, plus the lists "errors" and "warnings".

    The last value wins because LoadGen logs some keys more than once (FindPeakPerformance
    logs one result block per sub-run; the last is the final run). Errors and warnings are
    every entry LoadGen flagged (`metadata.is_error` / `is_warning`, or an `error_` /
    `warning_` key), as "key: value" strings in file order. Lines that are not valid JSON, such
    as the cut-off last line of a truncated file, are skipped.
    """
    values: dict[str, Any] = {}
    errors: list[str] = []
    warnings: list[str] = []
    for line in text.splitlines():
        if not line.startswith(MLLOG_PREFIX):
            continue
        try:
            entry = json.loads(line[len(MLLOG_PREFIX) :])
        except ValueError:
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            continue
        key, value = entry["key"], entry.get("value")
        values[key] = value
        meta = entry.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        if meta.get("is_error") or key.startswith("error_"):
            errors.append(f"{key}: {value}")
        elif meta.get("is_warning") or key.startswith("warning_"):
            warnings.append(f"{key}: {value}")
    values[ERRORS_KEY] = errors
    values[WARNINGS_KEY] = warnings
    return values


def parse_summary(text: str) -> dict[str, str]:
    """Map each `key : value` line of a summary log to its value (both stripped).

    Keys are as LoadGen prints them, e.g. "Result is", "Samples per second",
    "99.00 percentile latency (ns)", "target_qps". Headings and bullets are left out.
    """
    result: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if sep and key and value and not key.startswith("*"):
            result[key] = value
    return result


@dataclass(frozen=True)
class LoadgenRun:
    """The outcome of one LoadGen performance run, as LoadGen reported it.

    Latencies are per sample, in milliseconds, keyed "min", "max", "mean" and "p50", "p90",
    "p95", "p97", "p99", "p99.9" (whatever percentiles LoadGen logged). Server fields are
    None for Offline runs and the other way round.
    """

    scenario: str
    valid: bool
    log_dir: str
    samples_per_second: float | None = None
    scheduled_qps: float | None = None
    completed_qps: float | None = None
    target_qps: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    target_latency_ms: float | None = None
    target_percentile: float | None = None
    query_count: int | None = None
    sample_count: int | None = None
    overlatency_query_count: int | None = None
    perf_constraints_met: bool | None = None
    min_duration_met: bool | None = None
    min_queries_met: bool | None = None
    early_stopping_met: bool | None = None
    invalid_reasons: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    duration_s: float | None = None

    @property
    def throughput(self) -> float | None:
        """Samples per second: Offline's result, or Server's completed rate."""
        return self.samples_per_second if self.scenario == "Offline" else self.completed_qps

    def percentile_ms(self, p: float) -> float | None:
        """The p-th percentile latency in ms (p in percent, e.g. 99 or 99.9), if logged."""
        return self.latency_ms.get(f"p{round(p, 4):g}")

    def why_invalid(self, percentile: float) -> str:
        """Why LoadGen judged this run INVALID, by the checks it failed: the percentile over
        the bound, early stopping (with how many queries were late and LoadGen's own words on
        what it would have needed), the minimum duration, the minimum query count. Never a
        percentile under the bound as the cause; "" for a VALID run."""
        if self.valid:
            return ""
        pct, measured = f"p{percentile:g}", self.percentile_ms(percentile)
        bound = self.target_latency_ms
        parts = []
        if self.perf_constraints_met is False:
            if measured is not None and bound is not None:
                parts.append(f"{pct} {measured:.2f} ms over the {bound:g} ms bound")
            else:
                parts.append("latency bound missed")
        if self.early_stopping_met is False:
            late = self.overlatency_query_count
            count = f"{late} of {self.query_count} queries" if late is not None else "queries"
            said = next((r for r in self.invalid_reasons if r.startswith("Early stopping:")), "")
            under = ""
            if self.perf_constraints_met is not False and measured is not None and bound:
                under = f" ({pct} {measured:.2f} ms is under the {bound:g} ms bound)"
            text = f"early stopping failed{under}: {count} over the bound"
            parts.append(
                f"{text}; LoadGen: {said.removeprefix('Early stopping: ')}" if said else text
            )
        if self.min_duration_met is False:
            parts.append("minimum duration not reached")
        if self.min_queries_met is False:
            parts.append(f"minimum query count not reached ({self.query_count} queries)")
        return "; ".join(parts) or "; ".join(self.invalid_reasons) or "INVALID"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe copy: tuples become lists and non-finite floats become None."""
        out: dict[str, Any] = {f.name: _json_safe(getattr(self, f.name)) for f in fields(self)}
        out["throughput"] = _json_safe(self.throughput)
        return out


def read_run(log_dir: Path) -> LoadgenRun:
    """Read the run LoadGen logged in `log_dir`; ScenarioError if it logged no result there."""
    log_dir = Path(log_dir)
    detail_text = _read_optional(log_dir / DETAIL_FILE)
    summary_text = _read_optional(log_dir / SUMMARY_FILE)
    if detail_text is None and summary_text is None:
        raise ScenarioError(f"LoadGen wrote no logs in {log_dir}")
    detail = parse_detail(detail_text or "")
    summary = parse_summary(summary_text or "")
    validity = detail.get("result_validity", summary.get("Result is"))
    if validity not in ("VALID", "INVALID"):
        raise ScenarioError(f"LoadGen wrote no result in {log_dir}")
    valid = validity == "VALID"

    scenario = str(
        detail.get("effective_scenario")
        or detail.get("requested_scenario")
        or summary.get("Scenario", "")
    )
    server = scenario == "Server"
    latency = _latencies(detail, summary)
    samples_per_query = _int(
        detail.get("effective_samples_per_query"), summary.get("samples_per_query")
    )
    query_count = _int(detail.get("result_query_count"))
    sample_count = (
        query_count * samples_per_query
        if query_count is not None and samples_per_query is not None
        else None
    )
    samples_per_second = _float(
        detail.get("result_samples_per_second"), summary.get("Samples per second")
    )
    completed_qps = _float(
        detail.get("result_completed_samples_per_sec"),
        summary.get("Completed samples per second"),
    )
    target_latency_ns = _float(
        detail.get("effective_target_latency_ns"), summary.get("target_latency (ns)")
    )
    early_stopping_met = _bool(
        detail.get("early_stopping_met"), summary.get("Early stopping satisfied")
    )
    if detail_text is not None and "result_validity" in detail:
        reasons = _detail_reasons(detail, early_stopping_met)
    else:
        reasons = _summary_reasons(summary_text or "")
    errors = detail[ERRORS_KEY] or _summary_errors(summary_text or "")
    return LoadgenRun(
        scenario=scenario,
        valid=valid,
        log_dir=str(log_dir),
        samples_per_second=None if server else samples_per_second,
        scheduled_qps=_float(
            detail.get("result_scheduled_samples_per_sec"),
            summary.get("Scheduled samples per second"),
        ),
        completed_qps=completed_qps,
        target_qps=_float(
            detail.get("effective_target_qps"),
            detail.get(
                "requested_server_target_qps" if server else "requested_offline_expected_qps"
            ),
            summary.get("target_qps"),
        ),
        latency_ms=latency,
        target_latency_ms=target_latency_ns / 1e6 if server and target_latency_ns else None,
        target_percentile=(
            _float(detail.get("effective_target_latency_percentile")) if server else None
        ),
        query_count=query_count,
        sample_count=sample_count,
        overlatency_query_count=_int(detail.get("result_overlatency_query_count")),
        perf_constraints_met=_bool(
            detail.get("result_perf_constraints_met"),
            summary.get("Performance constraints satisfied"),
        ),
        min_duration_met=_bool(
            detail.get("result_min_duration_met"), summary.get("Min duration satisfied")
        ),
        min_queries_met=_bool(
            detail.get("result_min_queries_met"), summary.get("Min queries satisfied")
        ),
        early_stopping_met=early_stopping_met,
        invalid_reasons=() if valid else tuple(reasons),
        errors=_collapse(errors),
        warnings=_collapse(detail[WARNINGS_KEY]),
        duration_s=_duration_s(scenario, latency, sample_count, completed_qps),
    )


def _read_optional(path: Path) -> str | None:
    """The text of `path`, None if it does not exist; ScenarioError if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ScenarioError(f"cannot read LoadGen log {path}: {exc.strerror or exc}") from exc


def _latencies(detail: dict[str, Any], summary: dict[str, str]) -> dict[str, float]:
    """Per-sample latencies in ms from the detail's `result_*_latency_ns`, else the summary."""
    latency: dict[str, float] = {}
    for name, detail_key, summary_key in _PLAIN_LATENCY:
        value = _float(detail.get(detail_key), summary.get(summary_key))
        if value is not None:
            latency[name] = value / 1e6
    for key, raw in detail.items():
        match = _PERCENTILE_KEY.match(key)
        value = _float(raw)
        if match and value is not None:
            latency[f"p{float(match.group(1)):g}"] = value / 1e6
    for key, raw in summary.items():
        match = _PERCENTILE_LINE.match(key)
        value = _float(raw)
        name = f"p{float(match.group(1)):g}" if match else ""
        if match and value is not None and name not in latency:
            latency[name] = value / 1e6
    return latency


def _detail_reasons(detail: dict[str, Any], early_stopping_met: bool | None) -> list[str]:
    """LoadGen's reason sentences (`result_invalid_reason`) and failed early-stopping text."""
    reasons = [
        s.strip() for s in _SENTENCE_END.split(str(detail.get("result_invalid_reason") or ""))
    ]
    reasons = [s for s in reasons if s]
    early = _bullets(str(detail.get("early_stopping_result") or ""))
    if early_stopping_met is False and early:
        reasons.append("Early stopping: " + " ".join(early))
    return reasons


def _summary_reasons(text: str) -> list[str]:
    """The same reasons, read from the summary's "Recommendations" and early-stopping bullets."""
    sections: dict[str, list[str]] = {"Recommendations:": [], "Early Stopping Result:": []}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.strip() in sections:
            current = sections[line.strip()]
        elif current is None:
            continue
        elif not line.strip() or line.startswith("="):
            current = None
        elif line.startswith(" * "):
            current.append(line[3:].strip())
        elif current:
            current[-1] = f"{current[-1]} {line.strip()}"
    reasons = sections["Recommendations:"]
    early = sections["Early Stopping Result:"]
    if early and not early[0].startswith("Run successful"):
        reasons.append("Early stopping: " + " ".join(early))
    return reasons


def _bullets(text: str) -> list[str]:
    """Split LoadGen's " * a.  * b." text into its bullets, with whitespace collapsed."""
    return [" ".join(part.split()) for part in re.split(r"(?:^|\s)\*\s", text) if part.strip()]


def _summary_errors(text: str) -> list[str]:
    """The summary only counts errors; say how many so the count is not lost."""
    match = _SUMMARY_ERRORS.search(text)
    return [f"LoadGen reported {match.group(1)} errors; see {DETAIL_FILE}"] if match else []


def _collapse(messages: list[str]) -> tuple[str, ...]:
    """Keep each distinct message once, in first-seen order, with a count when repeated."""
    counts: dict[str, int] = {}
    for message in messages:
        counts[message] = counts.get(message, 0) + 1
    return tuple(m if n == 1 else f"{m} ({n} times)" for m, n in counts.items())


def _duration_s(
    scenario: str,
    latency: dict[str, float],
    sample_count: int | None,
    completed_qps: float | None,
) -> float | None:
    """The measured span LoadGen divided by: Offline's max latency, or Server's last completion.

    Offline: samples_per_second = sample_count / max_latency. Server: completed rate =
    (sample_count - 1) / time of the last completion (rounded as logged).
    """
    if scenario == "Offline" and "max" in latency:
        return latency["max"] / 1e3
    if scenario == "Server" and sample_count and sample_count > 1 and completed_qps:
        return (sample_count - 1) / completed_qps
    return None


def _float(*candidates: Any) -> float | None:
    """The first candidate that reads as a number, as a float."""
    for value in candidates:
        if isinstance(value, bool) or value is None:
            continue
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _int(*candidates: Any) -> int | None:
    """The first candidate that reads as a whole number, as an int."""
    value = _float(*candidates)
    return int(value) if value is not None and value.is_integer() else None


def _bool(*candidates: Any) -> bool | None:
    """The first candidate that is a bool or a summary "Yes"/"NO" ("Skipped" gives None)."""
    for value in candidates:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("yes", "no"):
            return value.lower() == "yes"
    return None


def _json_safe(value: Any) -> Any:
    """Tuples to lists and NaN/inf to None, recursively, so json.dumps accepts the value."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (tuple, list)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value

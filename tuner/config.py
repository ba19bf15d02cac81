"""A study's configuration: `studies/*.toml` and command-line flags, validated once into a
frozen `StudyConfig`. Unknown keys and bad values raise ConfigError naming the key.
Each setting is declared once, on its field (`setting(...)`): its study-file key, its
`optimize` flag and help; the section table and the CLI's flags are derived from those.

Layout of a study file (every key optional):

    [study]      name, storage, trials, climb, timeout_s, trial_timeout_s, sampler, seed,
                 objectives ("throughput" or ["throughput", "p99"] for Server), accuracy_floor,
                 accuracy_metric (auto, top1, cosine, relative), accuracy_output,
                 confirm_runs, confirm_top, prune (true: stop a trial at a bound under the
                 best)
    [model]      name (built-in or ONNX path), data_dir, samples,
                 dims = {sequence = 128} (symbolic dims by name),
                 shapes = {input_ids = [128]} (an input's non-batch sizes),
                 input_ranges = {token_type_ids = [0, 1]} (synthetic values, inclusive)
    [backend]    name (one runtime, or "auto"), device, threads, options = {...}
    [scenario]   name, latency_ms, percentile, duration_s, min_queries, answer_runs,
                 qps_tolerance
    [space]      backends (list of runtimes searched), batch_sizes (list) or max_batch,
                 streams (list) or max_streams, precisions (list), deque_timeout_us (list, Server)
    [[enqueue]]  backend, batch_size, streams, precision, deque_timeout_us: configurations to
                 try first
"""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness.backends import default_runtimes, get_backend
from harness.cli_common import parse_option
from harness.config import (
    ACCURACY_METRICS,
    PRECISIONS,
    SCENARIO_NAMES,
    ScenarioSpec,
    check_choice,
    check_dims,
    check_float,
    check_int,
    check_ranges,
    check_shapes,
    default_cache_dir,
)
from harness.errors import ConfigError

SAMPLERS = ("tpe", "random", "grid")
#: `--backend auto`: the runtimes harness.backends.default_runtimes names for the device.
AUTO = "auto"
OBJECTIVES = ("throughput", "p99")
DEFAULT_STORAGE = "sqlite:///studies/tuner.db"

#: `optimize --help` groups of the settings' flags (None: the command's own options).
MODEL_GROUP = "model and device"
INPUTS_GROUP = "model inputs and accuracy (study file: [model], [study])"
SCENARIO_GROUP = "scenario"
SEARCH_GROUP = "search"
FILES_GROUP = "files"
_META = "setting"


@dataclass(frozen=True)
class Setting:
    """Where one StudyConfig (or Space) field is set: its study-file key, its `optimize` flag
    and that flag's help. Declared once, on the field, through `setting(...)`."""

    section: str | None = None  # study-file [section]; None: flags only
    key: str = ""  # key in the section ("": the field's name)
    flag: str | None = None  # `optimize` flag (dest: the field's name); None: none
    help: str = ""  # "{default}" stands for the field's default
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    group: str | None = None  # `optimize --help` group
    table: bool = False  # the field is the whole [section] (or [[section]] array)
    repeat: bool = False  # a repeatable NAME=VALUE flag, collected into a table
    merge: bool = False  # the flag's entries add to the study file's table
    shared: bool = False  # flag and help from harness.cli_common.add_input_flags
    local: bool = False  # describes this host, not the study: never stored with it


def setting(**kwargs: Any) -> dict[str, Setting]:
    """A dataclass field's metadata: `field(default=..., metadata=setting(...))`."""
    return {_META: Setting(**kwargs)}


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,2,4, got {text!r}") from None


def on_off(text: str) -> bool:
    """`on` / `off` (also true/false, yes/no, 1/0) as a bool."""
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _space_setting(flag: str, help: str, type: Callable[[str], Any]) -> dict[str, Setting]:
    return setting(section="space", flag=flag, help=help, type=type, group=SEARCH_GROUP)


@dataclass(frozen=True)
class Space:
    """The search space; None means 'derive from the backend's capabilities'."""

    #: The runtimes searched, as one more parameter of each trial; None: the study's one
    #: backend. StudyConfig resolves `--backend auto` into this (never a list of one).
    backends: tuple[str, ...] | None = field(
        default=None,
        metadata=_space_setting(
            "--backends",
            "runtimes searched beside batch, streams and precision, e.g. onnxruntime,openvino; "
            "the first (or --backend, where given) runs the baseline (default: see --backend)",
            str_list,
        ),
    )
    batch_sizes: tuple[int, ...] | None = field(
        default=None,
        metadata=_space_setting(
            "--batch-sizes", "e.g. 1,2,4,8 (default: powers of two up to --max-batch)", int_list
        ),
    )
    max_batch: int = field(
        default=32,
        metadata=_space_setting(
            "--max-batch", "largest default batch size (default {default})", int
        ),
    )
    streams: tuple[int, ...] | None = field(
        default=None,
        metadata=_space_setting("--streams", "e.g. 1,2 (default 1..--max-streams)", int_list),
    )
    max_streams: int = field(
        default=2, metadata=_space_setting("--max-streams", "default {default}", int)
    )
    precisions: tuple[str, ...] | None = field(
        default=None,
        metadata=_space_setting(
            "--precisions",
            "e.g. fp32,int8 (default: all the backend runs on the device)",
            str_list,
        ),
    )
    deque_timeout_us: tuple[int, ...] | None = field(
        default=None,
        metadata=_space_setting(
            "--deque-timeouts-us",
            "Server batching timeouts to try (default 500,2000,8000)",
            int_list,
        ),
    )


def _study(
    flag: str, help: str, type: Callable[[str], Any] | None = None, **more: Any
) -> dict[str, Setting]:
    return setting(section="study", flag=flag, help=help, type=type, group=SEARCH_GROUP, **more)


def _scenario(flag: str, help: str, type: Callable[[str], Any], **more: Any) -> dict[str, Setting]:
    return setting(
        section="scenario", flag=flag, help=help, type=type, group=SCENARIO_GROUP, **more
    )


@dataclass(frozen=True)
class StudyConfig:
    """A study's settings. Each field's metadata (`setting`) declares its study-file key, its
    `optimize` flag and help; the field order is the order of a section's keys and of the flags
    in a help group."""

    name: str | None = field(
        default=None,
        metadata=setting(
            section="study",
            flag="--study",
            help="study name (default: from model, scenario, backend and device)",
        ),
    )
    storage: str = field(
        default=DEFAULT_STORAGE,
        metadata=setting(section="study", flag="--storage", help="study database URL", local=True),
    )
    trials: int = field(
        default=16,
        metadata=_study("--trials", "trial budget of the study (default {default})", int),
    )
    #: The last `climb` trials of a TPE study (at most a quarter of `trials`) step from the best
    #: configuration so far to its untaken neighbours (tuner.sampling); 0 leaves every trial to
    #: TPE.
    climb: int = field(
        default=4,
        metadata=_study(
            "--climb",
            "the last N trials of a TPE study try the untaken neighbours of the best "
            "configuration so far: batch size, streams or deque timeout one step away; at "
            "most a quarter of --trials (default {default}; 0: TPE throughout)",
            int,
        ),
    )
    timeout_s: float | None = field(
        default=None, metadata=_study("--timeout", "stop after this many seconds", float)
    )
    trial_timeout_s: float = field(
        default=600.0,
        metadata=_study(
            "--trial-timeout", "fail a trial that runs longer (default {default} s)", float
        ),
    )
    sampler: str = field(
        default="tpe",
        metadata=_study("--sampler", f"one of {', '.join(SAMPLERS)} (default {{default}})"),
    )
    seed: int = field(
        default=0,
        metadata=_study("--seed", "sampler and sample-data seed (default {default})", int),
    )
    objectives: tuple[str, ...] = field(
        default=("throughput",),
        metadata=_study(
            "--objectives",
            f"throughput, or throughput,p99 (Server; Pareto front); from {OBJECTIVES}",
            str_list,
        ),
    )
    #: Least top-1 agreement with fp32 an fp16/int8 variant must keep. The built-in models have
    #: synthetic weights and inputs with small logit margins (int8 agrees on ~80-90% of
    #: samples); with a real model and real data, 0.99 mirrors MLPerf's 99%-of-fp32 rule.
    accuracy_floor: float = field(
        default=0.8,
        metadata=_study(
            "--accuracy-floor",
            "least agreement with fp32 a precision must keep, by the accuracy metric (with "
            "labels in --data: accuracy relative to fp32's; 0.99 is MLPerf's rule); a trial "
            "under it is never the best (default {default})",
            float,
        ),
    )
    #: How fp16/int8 outputs are compared with fp32 (harness.precision.agreement): the floor
    #: applies to this metric's value, on this output (None: the first).
    accuracy_metric: str = field(
        default="auto",
        metadata=setting(
            section="study", flag="--accuracy-metric", group=INPUTS_GROUP, shared=True
        ),
    )
    accuracy_output: str | None = field(
        default=None,
        metadata=setting(
            section="study", flag="--accuracy-output", group=INPUTS_GROUP, shared=True
        ),
    )
    #: Extra measurements of each of the `confirm_top` best configurations (and the baseline)
    #: once the budget is spent; the best median wins (0: the best single run wins).
    confirm_runs: int = field(
        default=2,
        metadata=_study(
            "--confirm-runs",
            "once the budget is spent, measure each top configuration and the baseline this "
            "many more times; the best median wins, the speed-up is median over median "
            "(default {default}; 0: the best single run wins)",
            int,
        ),
    )
    confirm_top: int = field(
        default=3,
        metadata=_study(
            "--confirm-top",
            "how many of the best configurations to confirm (default {default})",
            int,
        ),
    )
    #: Stop a trial at a bound that shows it cannot beat the study's best (a Server trial's
    #: Offline throughput, its queueing model's guess, a warm-up's estimate): stored PRUNED.
    prune: bool = field(
        default=True,
        metadata=_study(
            "--prune",
            "on (default) or off: stop a trial as soon as a bound shows it cannot reach the "
            "study's best (an Offline trial's warm-up estimate; a Server trial's Offline "
            "throughput and queueing-model guess, before any Server run), each with a noise "
            "margin; a pruned "
            "trial is stored PRUNED with its bound, is never the best, and counts against "
            "--trials (single-objective studies only)",
            on_off,
            metavar="on|off",
        ),
    )
    model: str = field(
        default="resnet50",
        metadata=setting(
            section="model",
            key="name",
            flag="--model",
            help="built-in (resnet50, mobilenet, tiny) or an ONNX path",
            group=MODEL_GROUP,
        ),
    )
    #: One runtime, or "auto"; after validation the study's first runtime (the baseline's),
    #: `space.backends` holding all of them where it searches several.
    backend: str = field(
        default=AUTO,
        metadata=setting(
            section="backend",
            key="name",
            flag="--backend",
            help="auto (default: on a CPU, every CPU runtime installed, onnxruntime and "
            "openvino, searched as one more parameter; onnxruntime on CUDA), or one runtime: "
            "onnxruntime (CPU or CUDA), openvino (CPU), tensorrt (NVIDIA GPU, the gpu extra), "
            "torch (CUDA or CPU, the torch extra), null or replay (simulated, for tests and "
            "benchmarks)",
            group=MODEL_GROUP,
        ),
    )
    device: str = field(
        default="cpu",
        metadata=setting(
            section="backend",
            flag="--device",
            help="cpu (default), cuda or cuda:N",
            group=MODEL_GROUP,
        ),
    )
    threads: int | None = field(
        default=None,
        metadata=setting(
            section="backend",
            flag="--threads",
            help="intra-op threads per stream",
            type=int,
            group=MODEL_GROUP,
        ),
    )
    data_dir: Path | None = field(
        default=None,
        metadata=setting(
            section="model",
            flag="--data",
            help=".npz file, or folder of .npz/.npy samples, or folder with one <input>.npy per "
            "input: samples on axis 0 whatever the model's batch axis; a `labels` array (one "
            "class per sample) scores accuracy against fp32's (default: synthetic, seeded)",
            type=Path,
            group=MODEL_GROUP,
        ),
    )
    samples: int | None = field(
        default=None,
        metadata=setting(
            section="model",
            flag="--samples",
            help="samples in the QSL",
            type=int,
            group=MODEL_GROUP,
        ),
    )
    #: Symbolic non-batch dims bound by name, an input's non-batch sizes, and the synthetic
    #: values' ranges (harness RunConfig.dims / shapes / input_ranges). Dims and shapes are
    #: part of the study's identity.
    dims: Mapping[str, int] = field(
        default_factory=dict,
        metadata=setting(
            section="model", flag="--dim", group=INPUTS_GROUP, shared=True, repeat=True, merge=True
        ),
    )
    shapes: Mapping[str, tuple[int, ...]] = field(
        default_factory=dict,
        metadata=setting(
            section="model",
            flag="--shape",
            group=INPUTS_GROUP,
            shared=True,
            repeat=True,
            merge=True,
        ),
    )
    input_ranges: Mapping[str, tuple[float, float]] = field(
        default_factory=dict,
        metadata=setting(
            section="model",
            flag="--input-range",
            group=INPUTS_GROUP,
            shared=True,
            repeat=True,
            merge=True,
        ),
    )
    backend_options: Mapping[str, Any] = field(
        default_factory=dict,
        metadata=setting(
            section="backend",
            key="options",
            flag="--backend-option",
            help="backend setting (repeatable)",
            type=parse_option,
            metavar="KEY=VALUE",
            group=MODEL_GROUP,
            repeat=True,
        ),
    )
    scenario: str = field(
        default="offline",
        metadata=setting(
            section="scenario",
            key="name",
            flag="--scenario",
            help="offline (default) or server",
            group=SCENARIO_GROUP,
        ),
    )
    latency_ms: float = field(
        default=15.0,
        metadata=_scenario("--latency-ms", "Server latency bound (default {default})", float),
    )
    percentile: float = field(
        default=99.0,
        metadata=_scenario("--percentile", "Server latency percentile (default {default})", float),
    )
    duration_s: float = field(
        default=2.0,
        metadata=_scenario(
            "--duration-s", "LoadGen min duration per run (default {default})", float
        ),
    )
    min_queries: int | None = field(
        default=None,
        metadata=_scenario("--min-queries", "Server min query count (default 600)", int),
    )
    #: Server: VALID runs each trial's max-QPS search needs at its answer.
    answer_runs: int = field(
        default=ScenarioSpec.answer_runs,
        metadata=_scenario(
            "--answer-runs",
            "Server: VALID runs each trial's max-QPS search needs at its answer where it "
            "brackets (where early stopping allows a run too few late queries to go by their "
            "count, e.g. p99 with 600 queries; default {default}; 1 is the cheapest search, "
            "each more costs a run per trial)",
            int,
            metavar="N",
        ),
    )
    #: Server: the bracketing search's stopping width (harness ScenarioSpec.qps_tolerance).
    qps_tolerance: float = field(
        default=ScenarioSpec.qps_tolerance,
        metadata=_scenario(
            "--qps-tolerance",
            "Server: each trial's max-QPS search by bracketing stops once its largest VALID "
            "target lies within this share of the smallest INVALID one (default {default}; "
            "0.05 costs about one LoadGen run fewer per trial, its answer then up to that share "
            "under the edge)",
            float,
            metavar="SHARE",
        ),
    )
    space: Space = field(default=Space(), metadata=setting(section="space", table=True))
    enqueue: tuple[Mapping[str, Any], ...] = field(
        default=(), metadata=setting(section="enqueue", table=True)
    )
    cache_dir: Path = field(
        default_factory=default_cache_dir,
        metadata=setting(
            flag="--cache-dir", help="default {default}", type=Path, group=FILES_GROUP, local=True
        ),
    )
    runs_dir: Path = field(
        default=Path("runs"),
        metadata=setting(
            flag="--runs-dir",
            help="LoadGen logs of every trial (default {default}/)",
            type=Path,
            group=FILES_GROUP,
            local=True,
        ),
    )

    def __post_init__(self) -> None:
        check_int(_key("trials"), self.trials, 1)
        if self.timeout_s is not None:
            check_float(_key("timeout_s"), self.timeout_s, 0.0)
        check_float(_key("trial_timeout_s"), self.trial_timeout_s, 0.0)
        check_choice(_key("sampler"), self.sampler, SAMPLERS)
        check_int(_key("seed"), self.seed, 0)
        check_int(_key("climb"), self.climb, 0)
        if not isinstance(self.prune, bool):
            raise ConfigError(f"{_key('prune')}: must be true or false, got {self.prune!r}")
        if not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise ConfigError(
                f"{_key('objectives')}: give distinct names, got {self.objectives!r}"
            )
        for name in self.objectives:
            check_choice(_key("objectives"), name, OBJECTIVES)
        if self.objectives[0] != "throughput":
            raise ConfigError(f"{_key('objectives')}: the first objective must be 'throughput'")
        if self.multi_objective and self.scenario != "server":
            raise ConfigError(
                f"{_key('objectives')}: p99 is an objective of the server scenario only "
                "(Offline latencies measure the whole query, not a sample)"
            )
        check_float(_key("accuracy_floor"), self.accuracy_floor, -1e-9, 1.0 + 1e-9)
        check_choice(_key("accuracy_metric"), self.accuracy_metric, ACCURACY_METRICS)
        if self.accuracy_output is not None and not (
            isinstance(self.accuracy_output, str) and self.accuracy_output
        ):
            raise ConfigError(
                f"{_key('accuracy_output')}: must be an output name, got {self.accuracy_output!r}"
            )
        object.__setattr__(self, "dims", check_dims(_key("dims"), self.dims))
        object.__setattr__(self, "shapes", check_shapes(_key("shapes"), self.shapes))
        object.__setattr__(
            self, "input_ranges", check_ranges(_key("input_ranges"), self.input_ranges)
        )
        check_int(_key("confirm_runs"), self.confirm_runs, 0)
        check_int(_key("confirm_top"), self.confirm_top, 1)
        check_choice(_key("scenario"), self.scenario, SCENARIO_NAMES)
        check_float(_key("latency_ms"), self.latency_ms, 0.0)
        check_float(_key("percentile"), self.percentile, 0.0, 100.0)
        check_float(_key("duration_s"), self.duration_s, 0.0)
        if self.min_queries is not None:
            check_int(_key("min_queries"), self.min_queries, 1)
        check_int(_key("answer_runs"), self.answer_runs, 1)
        check_float(_key("qps_tolerance"), self.qps_tolerance, 0.0, 1.0)
        if self.threads is not None:
            check_int(_key("threads"), self.threads, 1)
        if self.samples is not None:
            check_int(_key("samples"), self.samples, 1)
        _check_space(self.space)
        self._resolve_runtimes()
        for i, point in enumerate(self.enqueue):
            _check_point(f"enqueue[{i}]", point)

    def _resolve_runtimes(self) -> None:
        """`backend` becomes the first runtime searched, `space.backends` every one of them
        where there are several (None for one), so a stored study names its runtimes."""
        listed = self.space.backends
        if listed is not None:  # a named backend joins them, first: it runs the baseline
            runtimes = tuple(dict.fromkeys((*named_or_auto(self.backend), *listed)))
        elif self.backend == AUTO:
            runtimes = default_runtimes(self.device)
        else:
            runtimes = (self.backend,)
        for name in runtimes:
            named = name in named_or_auto(self.backend)
            get_backend(name, _key("backend") if named else "space.backends")
        object.__setattr__(self, "backend", runtimes[0])
        several = runtimes if len(runtimes) > 1 else None
        if several != listed:
            object.__setattr__(self, "space", replace(self.space, backends=several))

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The runtimes the study searches, the baseline's first."""
        return self.space.backends or (self.backend,)

    def backend_options_for(self, runtime: str) -> dict[str, Any]:
        """The study's backend options that `runtime` takes (each option is some runtime's)."""
        names = get_backend(runtime).option_names
        return {k: v for k, v in self.backend_options.items() if k in names}

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


def named_or_auto(backend: str) -> tuple[str, ...]:
    """The runtime `--backend` names itself (none for auto)."""
    return () if backend == AUTO else (backend,)


def declared(cls: type) -> dict[str, Setting]:
    """Each field of StudyConfig or Space by name, with its declaration."""
    return {f.name: f.metadata[_META] for f in fields(cls)}


def flag_settings() -> dict[str, Setting]:
    """The settings `optimize` takes as flags, in `--help` order (the space's first)."""
    both = {**declared(Space), **declared(StudyConfig)}
    return {name: s for name, s in both.items() if s.flag is not None}


def flag_help(name: str) -> str:
    """The help of a setting's flag, its "{default}" replaced by the field's default."""
    found = {f.name: f for f in (*fields(Space), *fields(StudyConfig))}[name]
    return found.metadata[_META].help.replace("{default}", _shown(_default(found)))


def _default(f: Field[Any]) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _sections() -> dict[str, dict[str, str]]:
    """study-file section -> {key: StudyConfig field}, in declaration order."""
    sections: dict[str, dict[str, str]] = {}
    for name, s in declared(StudyConfig).items():
        if s.section is not None and not s.table:
            sections.setdefault(s.section, {})[s.key or name] = name
    return sections


_DECLARED = declared(StudyConfig)
_SECTIONS = _sections()
#: Every section a study file may have, the whole-table ones ([space], [[enqueue]]) included.
_SECTION_NAMES = tuple(dict.fromkeys(s.section for s in _DECLARED.values() if s.section))
_SPACE_KEYS = {s.key or name for name, s in declared(Space).items()}
#: Tables whose flags (--dim, --shape, --input-range) add entries to the study file's.
_MERGED = tuple(name for name, s in _DECLARED.items() if s.merge)
_POINT_KEYS = ("backend", "batch_size", "streams", "precision", "deque_timeout_us")
#: Fields that describe this host, not the study: never stored with it (the storage URL may
#: hold a password).
_LOCAL_FIELDS = tuple(name for name, s in _DECLARED.items() if s.local)


def _key(name: str) -> str:
    """A StudyConfig field's study-file key, "section.key", for messages."""
    s = _DECLARED[name]
    return f"{s.section}.{s.key or name}"


def to_stored(cfg: StudyConfig) -> dict[str, Any]:
    """The study's configuration as JSON-safe data, for workers that join it later."""
    data = asdict(cfg)
    for key in _LOCAL_FIELDS:
        data.pop(key)
    return json.loads(json.dumps(data, default=str))


def from_stored(data: Mapping[str, Any], **local: Any) -> StudyConfig:
    """A StudyConfig from `to_stored` data plus this host's storage, cache and runs folders."""
    values = dict(data)
    space = values.pop("space", {}) or {}
    space_values = {k: tuple(v) if isinstance(v, list) else v for k, v in space.items()}
    values["space"] = Space(**space_values)  # type: ignore[arg-type]  # checked in StudyConfig
    values["objectives"] = tuple(values.get("objectives", ("throughput",)))
    values["enqueue"] = tuple(values.get("enqueue", ()))
    if values.get("data_dir"):
        values["data_dir"] = Path(values["data_dir"])
    values.update({k: v for k, v in local.items() if v is not None})
    return StudyConfig(**values)


def load_file(path: Path) -> dict[str, Any]:
    """The StudyConfig fields a TOML study file sets (unknown keys rejected)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config: no such study file {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc}") from None
    return from_mapping(data, where=str(path))


def from_mapping(data: Mapping[str, Any], where: str = "study file") -> dict[str, Any]:
    """Translate the nested TOML layout into StudyConfig field values."""
    values: dict[str, Any] = {}
    for section, content in data.items():
        if section == _DECLARED["space"].section:
            values["space"] = _space(_table(content, section, where), where)
        elif section == _DECLARED["enqueue"].section:
            if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
                raise ConfigError(f"{where}: [[enqueue]] must be an array of tables")
            values["enqueue"] = tuple(content)
        elif section in _SECTIONS:
            keys = _SECTIONS[section]
            for key, value in _table(content, section, where).items():
                if key not in keys:
                    valid = ", ".join(keys)
                    raise ConfigError(f"{where}: unknown key {section}.{key} (valid: {valid})")
                values[keys[key]] = _coerce(keys[key], value)
        else:
            valid = ", ".join(_SECTION_NAMES)
            raise ConfigError(f"{where}: unknown section [{section}] (valid: {valid})")
    return values


def build(file: Path | None = None, **overrides: Any) -> StudyConfig:
    """StudyConfig from defaults, then the study file, then the flags that were given."""
    values = load_file(file) if file is not None else {}
    space_over = {k: overrides.pop(k) for k in list(overrides) if k in _SPACE_KEYS}
    for key in _MERGED:  # a flag adds to (or replaces one entry of) the file's table
        if overrides.get(key):
            overrides[key] = {**dict(values.get(key) or {}), **dict(overrides[key])}
    values.update({k: _coerce(k, v) for k, v in overrides.items() if v is not None})
    given = {
        k: tuple(v) if isinstance(v, list) else v for k, v in space_over.items() if v is not None
    }
    if given:
        values["space"] = replace(values.get("space", Space()), **given)
    try:
        return StudyConfig(**values)
    except TypeError as exc:  # a wrong type that the checks did not catch
        raise ConfigError(str(exc)) from None


def _table(content: Any, section: str, where: str) -> Mapping[str, Any]:
    if not isinstance(content, dict):
        raise ConfigError(f"{where}: [{section}] must be a table")
    return content


def _space(content: Mapping[str, Any], where: str) -> Space:
    unknown = set(content) - _SPACE_KEYS
    if unknown:
        valid = ", ".join(sorted(_SPACE_KEYS))
        raise ConfigError(f"{where}: unknown key space.{sorted(unknown)[0]} (valid: {valid})")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in content.items()}
    space = Space(**values)  # type: ignore[arg-type]  # checked just below
    _check_space(space)
    return space


def _check_space(space: Space) -> None:
    check_int("space.max_batch", space.max_batch, 1)
    check_int("space.max_streams", space.max_streams, 1)
    for key, minimum in (("batch_sizes", 1), ("streams", 1), ("deque_timeout_us", 0)):
        values = getattr(space, key)
        if values is None:
            continue
        if not isinstance(values, tuple) or not values:
            raise ConfigError(f"space.{key}: must be a non-empty list, got {values!r}")
        for v in values:
            check_int(f"space.{key}", v, minimum)
    if space.precisions is not None:
        if not isinstance(space.precisions, tuple) or not space.precisions:
            raise ConfigError(
                f"space.precisions: must be a non-empty list, got {space.precisions!r}"
            )
        for p in space.precisions:
            check_choice("space.precisions", p, PRECISIONS)
    if space.backends is not None:
        names = space.backends
        if not isinstance(names, tuple) or not names or len(set(names)) != len(names):
            raise ConfigError(f"space.backends: must be a list of distinct names, got {names!r}")


def _check_point(where: str, point: Mapping[str, Any]) -> None:
    unknown = set(point) - set(_POINT_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {sorted(unknown)[0]} (valid: {', '.join(_POINT_KEYS)})"
        )
    if "batch_size" in point:
        check_int(f"{where}.batch_size", point["batch_size"], 1)
    if "streams" in point:
        check_int(f"{where}.streams", point["streams"], 1)
    if "precision" in point:
        check_choice(f"{where}.precision", point["precision"], PRECISIONS)
    if "deque_timeout_us" in point:
        check_int(f"{where}.deque_timeout_us", point["deque_timeout_us"], 0)
    if "backend" in point and not isinstance(point["backend"], str):
        raise ConfigError(f"{where}.backend: must be a runtime's name, got {point['backend']!r}")


def _coerce(key: str, value: Any) -> Any:
    declared = _DECLARED.get(key)
    if declared is not None and declared.type is Path and isinstance(value, str):
        return Path(value)
    if key == "objectives":
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_key(key)}: must be a name or a list, got {value!r}")
        return tuple(value)
    if key == "backend_options" and not isinstance(value, dict):
        raise ConfigError(f"{_key(key)}: must be a table, got {value!r}")
    if key in _MERGED and not isinstance(value, Mapping):
        raise ConfigError(f"{_key(key)}: must be a table, got {value!r}")
    return value

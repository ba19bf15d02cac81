"""Each study setting is declared once, on its StudyConfig (or Space) field: its study-file key,
its `optimize` flag and help. These tests hold the derived parts (the section table, the flags,
the flags copied into the config) to the declarations, and every key and flag to its field."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from tuner import cli, config
from tuner.config import Setting, Space, StudyConfig

#: field -> (study-file value, the field it gives, flag argument, the field it gives). The
#: file's differs from the field's default, the flag's from the file's.
SAMPLES: dict[str, tuple[Any, Any, str, Any]] = {
    "name": ("from-file", "from-file", "from-flag", "from-flag"),
    "storage": (
        "sqlite:///file.db",
        "sqlite:///file.db",
        "sqlite:///flag.db",
        "sqlite:///flag.db",
    ),
    "trials": (5, 5, "7", 7),
    "climb": (2, 2, "0", 0),
    "prune": (False, False, "on", True),
    "timeout_s": (30.0, 30.0, "40", 40.0),
    "trial_timeout_s": (50.0, 50.0, "60", 60.0),
    "sampler": ("random", "random", "grid", "grid"),
    "seed": (3, 3, "4", 4),
    # only two valid values: the file's is the default, the flag's needs the file's server
    "objectives": ("throughput", ("throughput",), "throughput,p99", ("throughput", "p99")),
    "accuracy_floor": (0.5, 0.5, "0.6", 0.6),
    "accuracy_metric": ("cosine", "cosine", "top1", "top1"),
    "accuracy_output": ("out0", "out0", "out1", "out1"),
    "confirm_runs": (1, 1, "0", 0),
    "confirm_top": (2, 2, "4", 4),
    "model": ("tiny", "tiny", "mobilenet", "mobilenet"),
    "data_dir": ("file-data", Path("file-data"), "flag-data", Path("flag-data")),
    "samples": (64, 64, "32", 32),
    # a --dim, --shape or --input-range adds to (or replaces one entry of) the file's table
    "dims": (
        {"sequence": 64, "heads": 2},
        {"sequence": 64, "heads": 2},
        "sequence=128",
        {"sequence": 128, "heads": 2},
    ),
    "shapes": ({"ids": [16]}, {"ids": (16,)}, "mask=32", {"ids": (16,), "mask": (32,)}),
    "input_ranges": ({"t": [0, 3]}, {"t": (0.0, 3.0)}, "t=1:2", {"t": (1.0, 2.0)}),
    "backend": ("null", "null", "tensorrt", "tensorrt"),
    "device": ("cuda:1", "cuda:1", "cuda:0", "cuda:0"),
    "threads": (2, 2, "3", 3),
    # --backend-option replaces the file's options
    "backend_options": ({"a": 1}, {"a": 1}, "b=2", {"b": 2}),
    "scenario": ("server", "server", "offline", "offline"),
    "latency_ms": (9.0, 9.0, "7.5", 7.5),
    "percentile": (95.0, 95.0, "90", 90.0),
    "duration_s": (1.0, 1.0, "0.5", 0.5),
    "min_queries": (100, 100, "50", 50),
    "answer_runs": (1, 1, "3", 3),
    "qps_tolerance": (0.05, 0.05, "0.1", 0.1),
    "batch_sizes": ([1, 2], (1, 2), "4,8", (4, 8)),
    "max_batch": (8, 8, "16", 16),
    "streams": ([1], (1,), "1,2", (1, 2)),
    "max_streams": (3, 3, "4", 4),
    "precisions": (["fp32"], ("fp32",), "fp32,fp16", ("fp32", "fp16")),
    # the file's backend ("null") runs the baseline, so it leads both lists
    "backends": (["null", "replay"], ("null", "replay"), "null,tensorrt", ("null", "tensorrt")),
    "deque_timeout_us": ([100], (100,), "200,300", (200, 300)),
    "cache_dir": (None, None, "flag-cache", Path("flag-cache")),
    "runs_dir": (None, None, "flag-runs", Path("flag-runs")),
}
#: `optimize` options that are not study settings.
NOT_SETTINGS = {"-h", "--help", "--debug", "-q", "--quiet", "--config"}
NOT_SETTINGS |= {"--workers", "--gpus", "--heartbeat-s", "--isolate-trials"}

DECLARED = {**config.declared(Space), **config.declared(StudyConfig)}
SPACE = set(config.declared(Space))
KEYED = {n: s for n, s in DECLARED.items() if s.section is not None and not s.table}
FLAGGED = config.flag_settings()


def _optimize_parser() -> argparse.ArgumentParser:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["optimize"]
    return parser


def _value(field: str) -> Any:
    value = StudyConfig()
    return getattr(value.space, field) if field in SPACE else getattr(value, field)


def _toml(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # strings, numbers and lists of them read the same in TOML


def _study_file(path: Path, names: list[str]) -> Path:
    sections: dict[str, list[str]] = {}
    for name in names:
        s = DECLARED[name]
        assert s.section is not None
        sections.setdefault(s.section, []).append(f"{s.key or name} = {_toml(SAMPLES[name][0])}")
    path.write_text("".join(f"[{k}]\n" + "\n".join(v) + "\n" for k, v in sections.items()))
    return path


def test_every_field_has_one_declaration_and_every_declaration_a_sample() -> None:
    for cls in (Space, StudyConfig):
        for f in fields(cls):
            assert list(f.metadata) == ["setting"], f.name
            assert isinstance(f.metadata["setting"], Setting), f.name
    keys = [(s.section, s.key or n) for n, s in KEYED.items()]
    assert len(keys) == len(set(keys))
    flags = [s.flag for s in FLAGGED.values()]
    assert len(flags) == len(set(flags))
    assert set(SAMPLES) == {n for n, s in DECLARED.items() if not s.table}
    assert all(s.section == "space" and not s.table for n, s in DECLARED.items() if n in SPACE)
    for name, (_, from_file, _, from_flag) in SAMPLES.items():
        assert from_flag != (from_file if DECLARED[name].section else _value(name)), name
        if DECLARED[name].section is not None and name != "objectives":
            assert from_file != _value(name), name


@pytest.mark.parametrize("name", sorted(FLAGGED))
def test_every_declared_flag_is_on_optimize_help_and_maps_to_its_field(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag in the help
    declared = FLAGGED[name]
    parser = _optimize_parser()
    (action,) = [a for a in parser._actions if declared.flag in a.option_strings]
    assert action.dest == name
    assert action.default is None  # an absent flag leaves the file's value (or the default)
    lines = parser.format_help().splitlines()
    (i,) = [
        i for i, x in enumerate(lines) if x.lstrip().startswith(action.option_strings[0] + " ")
    ]
    shown = " ".join(lines[i : i + 2])  # the help is on the flag's line or the next
    if declared.help:  # else the harness's shared flag, with the harness's help
        assert config.flag_help(name) in shown
        assert "{default}" not in (action.help or "")


def test_optimize_has_a_flag_for_no_undeclared_setting() -> None:
    options = {o for a in _optimize_parser()._actions for o in a.option_strings}
    assert options - NOT_SETTINGS == {s.flag for s in FLAGGED.values()}


@pytest.mark.parametrize("name", sorted(KEYED))
def test_every_study_file_key_round_trips(name: str, tmp_path: Path) -> None:
    path = _study_file(tmp_path / "study.toml", [name])
    values = config.load_file(path)
    cfg = config.build(path)
    got = getattr(cfg.space, name) if name in SPACE else getattr(cfg, name)
    assert got == SAMPLES[name][1]
    assert set(values) == {"space" if name in SPACE else name}
    if not DECLARED[name].local:  # a worker reads the same setting back from the study
        assert config.from_stored(config.to_stored(cfg)) == cfg


@pytest.mark.parametrize("name", sorted(FLAGGED))
def test_a_flag_beats_the_file_and_the_file_beats_the_default(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(cli.STORAGE_ENV, raising=False)
    path = _study_file(tmp_path / "study.toml", sorted(KEYED))
    parser = cli.build_parser()

    def built(*argv: str) -> Any:
        cfg = cli._study_config(parser.parse_args(["optimize", "--config", str(path), *argv]))
        return getattr(cfg.space, name) if name in SPACE else getattr(cfg, name)

    assert built(FLAGGED[name].flag or "", SAMPLES[name][2]) == SAMPLES[name][3]
    from_file = SAMPLES[name][1] if name in KEYED else _value(name)
    assert built() == from_file


def test_the_module_docstring_names_every_study_file_key_in_its_section() -> None:
    """tuner.config's docstring shows the study-file layout by hand: it names every declared
    key under its [section]."""
    text = config.__doc__ or ""
    named: dict[str, set[str]] = {}
    section = ""
    for line in text[text.index("[study]") :].splitlines():
        head = re.sub(r"\([^)]*\)|\{[^}]*\}|\"[^\"]*\"", "", line.strip())
        found = re.match(r"\[+(\w+)\]+", head)
        if found:
            section, head = found.group(1), head[found.end() :]
        named.setdefault(section, set()).update(re.findall(r"[a-z_0-9]+", head))
    for name, declared in DECLARED.items():
        if declared.section in (None, "enqueue", "space") and declared.table:
            continue  # the [space] and [[enqueue]] tables themselves
        if declared.section is None:
            continue  # flags only
        key = declared.key or name
        assert key in named.get(declared.section, set()), (declared.section, key)

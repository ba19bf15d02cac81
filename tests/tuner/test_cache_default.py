"""One default cache folder, `$XDG_CACHE_HOME/batch-tuner`, declared once (harness.config) and
the same in RunConfig, StudyConfig, `harness run` and `tuner optimize`: a model the harness
built is found by the tuner."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from harness import cli_common
from harness.cli import build_parser
from harness.cli import main as harness_main
from harness.config import RunConfig, default_cache_dir
from tests.tuner.cli_checks import NULL_OPTIMIZE
from tuner import config
from tuner.cli import main as tuner_main
from tuner.config import StudyConfig


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """XDG_CACHE_HOME in this test's folder; the default cache folder it implies."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)  # a ./.cache default would land here, not under xdg/
    return tmp_path / "xdg" / "batch-tuner"


def test_the_default_follows_xdg_and_falls_back_to_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "batch-tuner"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "batch-tuner"


def test_every_config_and_cli_defaults_to_it(xdg: Path) -> None:
    assert RunConfig().cache_dir == xdg
    assert StudyConfig().cache_dir == xdg
    assert config.build().cache_dir == xdg
    assert config.build(cache_dir=None).cache_dir == xdg  # `optimize` without --cache-dir
    assert config.from_stored(config.to_stored(StudyConfig())).cache_dir == xdg  # a worker
    assert build_parser().parse_args(["run"]).cache_dir == xdg
    assert cli_common.default_cache_dir() == xdg  # the copy benchmarks and help texts use


def test_harness_run_and_optimize_build_into_the_default_folder(
    xdg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither command is given --cache-dir: both use (and share) the default folder."""
    harness = ["run", "--model", "tiny", "--backend", "null", "--duration-s", "0.3"]
    assert harness_main([*harness, "--samples", "64", "--out", str(tmp_path / "logs")]) == 0
    built = sorted(xdg.rglob("*.onnx"))
    assert built and not (tmp_path / ".cache").exists()
    stamps = {p: p.stat().st_mtime_ns for p in built}

    storage = f"sqlite:///{tmp_path / 's.db'}"
    optimize = [*NULL_OPTIMIZE, "--trials", "1", "--confirm-runs", "0", "--quiet"]
    argv = [*optimize, "--storage", storage, "--runs-dir", str(tmp_path / "runs")]
    assert tuner_main([*argv, "--duration-s", "0.3"]) == 0
    capsys.readouterr()
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]
    assert sorted(xdg.rglob("*.onnx")) == built  # found, not built again
    assert {p: p.stat().st_mtime_ns for p in built} == stamps
    assert not (tmp_path / ".cache").exists()

"""`python -m tuner optimize` end to end on models as users export them: a transformers BERT
whose sequence dim is bound by flag and by study file (and belongs to the study's identity), a
precision the converter refuses shown as an infeasible trial."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests import quirkmodels, realmodels
from tests.tuner.cli_checks import one_error_line, run

pytestmark = pytest.mark.slow


def _optimize(db: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "optimize",
        *("--storage", f"sqlite:///{db}", "--cache-dir", str(cache)),
        *("--duration-s", "0.2", "--samples", "32", "--confirm-runs", "0"),
        *("--batch-sizes", "1,2", "--streams", "1", "--trial-timeout", "300"),
        *("--prune", "off"),  # every trial measured in full: the tests read each one
        *extra,
    ]


def test_bert_dims_by_flag_and_study_file_are_the_studys_identity_and_reach_the_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    realmodels.need("transformers")
    model = realmodels.bert(dynamic_sequence=True)
    monkeypatch.chdir(tmp_path)
    db, cache = tmp_path / "studies.db", tmp_path / "cache"
    base = _optimize(db, cache, "--model", str(model), "--study", "bert", "--precisions", "fp32")

    assert run([*base, "--trials", "2", "--dim", "sequence=8"]) == 0
    study = optuna.load_study(study_name="bert", storage=f"sqlite:///{db}")
    assert study.user_attrs["dims"] == {"sequence": 8}
    assert {t["name"]: t["sample_shape"] for t in study.user_attrs["inputs"]} == {
        "input_ids": [8],
        "attention_mask": [8],
        "token_type_ids": [8],
    }
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2 and all(t.value and t.value > 0 for t in done)
    tensors = {t["name"]: t for t in done[0].user_attrs["inputs"]["tensors"]}
    assert tensors["token_type_ids"]["range"] == {
        "low": 0,
        "high": 1,
        "source": "indexes a table of 2 rows",
    }

    # The same dims from a study file resume the same study (one more trial).
    study_file = tmp_path / "bert.toml"
    study_file.write_text(f'[model]\nname = "{model}"\ndims = {{sequence = 8}}\n')
    capsys.readouterr()
    assert run([*base, "--config", str(study_file), "--trials", "3"]) == 0
    assert "2 of 3 trials done, 1 to go" in capsys.readouterr().err

    # Another sequence length is another study: refused, naming both.
    assert run([*base, "--trials", "3", "--dim", "sequence=16"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "made with dims sequence=8, not dims sequence=16" in line
    assert len(study.get_trials()) == 3  # nothing stored was lost

    out = tmp_path / "exports"
    for fmt, expected in (
        ("trtexec", "--minShapes=input_ids:1x8,attention_mask:1x8,token_type_ids:1x8"),
        ("triton", "dims: [ 8 ]"),
        ("nvidia", '"sequence": 8'),
        ("json", '"sequence": 8'),
    ):
        path = out / fmt
        storage = f"sqlite:///{db}"
        argv = ["export", "--study", "bert", "--storage", storage, "--format", fmt]
        assert run([*argv, "--out", str(path)]) == 0
        assert expected in path.read_text(), fmt
    assert "# model dims bound: sequence=8" in (out / "trtexec").read_text()


def test_a_precision_the_converter_refuses_is_an_infeasible_trial_that_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = quirkmodels.unknown_op(tmp_path / "custom.onnx")
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "studies.db"
    argv = _optimize(db, tmp_path / "cache", "--model", str(model), "--backend", "null")
    argv += ["--precisions", "fp32,int8", "--sampler", "grid", "--trials", "4", "--study", "c"]
    assert run([*argv, "--backend-option", "latency_ms=1"]) == 0
    err = capsys.readouterr().err
    assert "infeasible: int8 is infeasible for model 'custom': the converter failed" in err

    study = optuna.load_study(study_name="c", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    refused = [t for t in trials if t.params["precision"] == "int8"]
    assert len(refused) == 2
    for trial in refused:
        assert trial.value == 0.0
        assert trial.user_attrs["failure"] == "infeasible"
        assert "Mystery" in trial.user_attrs["fail_reason"]  # the converter's own reason
    best = study.best_trial
    assert best.params["precision"] == "fp32" and best.value and best.value > 0


def test_a_file_a_runtime_cannot_read_is_infeasible_on_that_runtime_and_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenVINO's frontend refuses ONNX Runtime's hash op (harness ModelUnreadable): the first
    configuration of OpenVINO on that file is an infeasible trial that names the runtime, the
    other one is infeasible as that trial without running, and ONNX Runtime, which reads the
    file, is measured as usual."""
    model = quirkmodels.onnxruntime_only(tmp_path / "hash.onnx")
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "studies.db"
    argv = _optimize(db, tmp_path / "cache", "--model", str(model), "--backend", "auto")
    argv += ["--precisions", "fp32", "--sampler", "grid", "--trials", "4", "--study", "u"]
    assert run(argv) == 0
    err = capsys.readouterr().err

    study = optuna.load_study(study_name="u", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    refused = sorted(
        (t for t in trials if t.params["backend"] == "openvino"), key=lambda t: t.number
    )
    assert sorted(t.params["batch_size"] for t in refused) == [1, 2]
    for trial in refused:
        assert trial.value == 0.0
        assert trial.user_attrs["failure"] == "infeasible"
        assert trial.user_attrs["infeasible_on"] == "openvino"
        assert trial.user_attrs["fail_reason"].startswith("openvino: cannot read hash.onnx: ")
        assert "MurmurHash3" in trial.user_attrs["fail_reason"]
    first, second = refused
    assert "infeasible_as" not in first.user_attrs
    assert second.user_attrs["infeasible_as"] == first.number
    assert second.user_attrs["trial_seconds"] == 0.0
    assert f"(as trial {first.number}; not run)" in err
    measured = [t for t in trials if t.params["backend"] == "onnxruntime"]
    assert len(measured) == 2 and all(t.value and t.value > 0 for t in measured)

"""`python -m tuner optimize` and `export` on models with exporters' quirks: a state batched
on axis 1 beside a rank-0 sample rate, fed from --data, reaches every export with its batch
where it stands; a paddle-style -1 batch with '?' sizes studied with --shape."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from google.protobuf import text_format
from optuna.trial import TrialState

from tests import quirkmodels
from tests.tuner.cli_checks import run
from tests.tuner.test_export import _triton_pb2
from tuner.results import best_trial


def _optimize(db: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "optimize",
        *("--storage", f"sqlite:///{db}", "--cache-dir", str(cache)),
        *("--duration-s", "0.2", "--samples", "32", "--confirm-runs", "0"),
        *("--streams", "1", "--trial-timeout", "300", "--prune", "off"),
        *extra,
    ]


def test_a_stateful_model_is_studied_from_data_and_exported_with_its_batch_axes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model = quirkmodels.stateful(tmp_path / "vad.onnx")
    rng = np.random.default_rng(1)
    data = tmp_path / "vad.npz"
    np.savez(
        data,
        input=rng.standard_normal((48, 16)).astype(np.float32),
        state=np.zeros((48, 2, 4), np.float32),  # samples first, whatever the batch axis
        sr=np.array(16000, np.int64),
    )
    db, cache = tmp_path / "s.db", tmp_path / "cache"
    argv = _optimize(db, cache, "--model", str(model), "--data", str(data), "--study", "vad")
    assert run([*argv, "--trials", "3", "--batch-sizes", "2,4", "--precisions", "fp32"]) == 0
    study = optuna.load_study(study_name="vad", storage=f"sqlite:///{db}")
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3 and all(t.value and t.value > 0 for t in done)
    tensors = {t["name"]: t for t in study.user_attrs["inputs"]}
    assert (tensors["state"]["batch_axis"], tensors["state"]["sample_shape"]) == (1, [2, 4])
    chosen = best_trial(study)
    assert chosen is not None
    best = chosen.params["batch_size"]
    best = study.best_trial.params["batch_size"]

    out = tmp_path / "exports"
    storage = f"sqlite:///{db}"
    for fmt in ("triton", "trtexec", "benchmark_app"):
        argv = ["export", "--study", "vad", "--storage", storage, "--format", fmt]
        assert run([*argv, "--out", str(out / fmt)]) == 0, fmt
    trtexec = (out / "trtexec").read_text()
    assert f"--optShapes=input:{best}x16,state:2x{best}x4 " in trtexec  # sr is static
    assert "--minShapes=input:1x16,state:2x1x4 " in trtexec
    assert f"-shape 'input[{best},16],state[2,{best},4]'" in (out / "benchmark_app").read_text()

    pb2 = _triton_pb2()  # the format's own schema
    config = text_format.Parse((out / "triton").read_text(), pb2.ModelConfig())
    assert config.max_batch_size == 0  # Triton's batcher cannot split a batch on axis 1
    assert {i.name: list(i.dims) for i in config.input} == {
        "input": [-1, 16],
        "state": [2, -1, 4],
        "sr": [1],
    }
    assert {o.name: list(o.dims) for o in config.output} == {
        "output": [-1, 1],
        "stateN": [2, -1, 4],
    }
    assert not config.HasField("dynamic_batching")


def test_a_paddle_style_model_is_studied_with_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    model = quirkmodels.paddle_classifier(tmp_path / "cls.onnx")
    db, cache = tmp_path / "s.db", tmp_path / "cache"
    base = _optimize(db, cache, "--model", str(model), "--study", "cls", "--batch-sizes", "1,4")
    assert run([*base, "--trials", "2"]) == 2  # the '?' sizes are unbound
    err = capsys.readouterr().err
    assert "--shape x=3xD1xD2" in err
    assert run([*base, "--trials", "2", "--shape", "x=3x8x16", "--precisions", "fp32,int8"]) == 0
    study = optuna.load_study(study_name="cls", storage=f"sqlite:///{db}")
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2
    assert study.user_attrs["inputs"][0]["sample_shape"] == [3, 8, 16]


def test_a_trial_under_the_accuracy_floor_says_so_on_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """int8 moves a classifier with random float weights off fp32's outputs, so its cosine
    agreement is under a floor of 1: the first int8 trial's progress line says so beside its
    figure, the second (enqueued by the grid) is infeasible as that one without running, and
    an fp32 trial (no agreement to miss) is the best."""
    monkeypatch.chdir(tmp_path)
    model = quirkmodels.paddle_classifier(tmp_path / "cls.onnx")
    db, cache = tmp_path / "s.db", tmp_path / "cache"
    argv = _optimize(db, cache, "--model", str(model), "--study", "cls", "--shape", "x=3x6x10")
    argv += ["--backends", "onnxruntime", "--sampler", "grid", "--batch-sizes", "1,4"]
    argv += ["--accuracy-metric", "cosine", "--accuracy-floor", "1"]
    assert run([*argv, "--precisions", "fp32,int8", "--trials", "4"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[")]
    (measured,) = [line for line in lines if "UNDER THE ACCURACY FLOOR" in line]
    (ruled_out,) = [line for line in lines if "infeasible: under the accuracy floor" in line]
    assert len(lines) == 4, err
    assert "(cosine 0." in measured and "< 1: never the best)" in measured
    assert "(cosine 0." in ruled_out and "< 1) (as trial " in ruled_out
    number = re.search(r"\] trial (\d+):", measured)
    assert number is not None and f"(as trial {number.group(1)}; not run)" in ruled_out
    study = optuna.load_study(study_name="cls", storage=f"sqlite:///{db}")
    best = best_trial(study)
    assert best is not None and best.params["precision"] == "fp32"

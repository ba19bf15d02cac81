"""The replay backend: latencies from a recorded landscape, on a small one written here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.backends import BACKENDS, BackendOptions, get_backend
from harness.backends.replay import ReplayBackend
from harness.config import RunConfig, ScenarioSpec
from harness.errors import ConfigError


def point(
    precision: str, batch: int, streams: int, *repeats: dict[str, Any], **params: Any
) -> dict[str, Any]:
    return {
        "params": {"precision": precision, "batch_size": batch, "streams": streams, **params},
        "repeats": list(repeats),
    }


def ms(value: float) -> dict[str, Any]:
    return {"warmup_batch_ms": value, "score": 1.0, "valid": True}


@pytest.fixture
def landscape(tmp_path: Path) -> Path:
    """fp32 on one stream costs exactly 1 + 0.25 n ms; batch 8 was recorded three times."""
    points = [
        point("fp32", 1, 1, ms(1.25)),
        point("fp32", 4, 1, ms(2.0)),
        point("fp32", 8, 1, ms(3.0), ms(2.7), ms(3.3)),
        point("int8", 8, 1, ms(1.6), deque_timeout_us=500),
        point("int8", 8, 1, ms(1.6), {"failure": "timeout", "reason": "", "seconds": 9.0}),
        # No warm-up recorded: an Offline score of 1000 samples/s over 2 streams of 4.
        point("fp32", 4, 2, {"score": 1000.0, "valid": True}),
        point("fp32", 8, 2, ms(5.0), ms(4.5)),
    ]
    path = tmp_path / "landscape.json"
    data = {"format": 1, "scenario": "offline", "device": "Test CPU (2 cores)", "points": points}
    path.write_text(json.dumps(data))
    return path


def replay(
    landscape: Path,
    batch: int,
    streams: int = 1,
    precision: str = "fp32",
    seed: int = 0,
    **extra: Any,
) -> ReplayBackend:
    options = BackendOptions(
        precision=precision,
        max_batch=batch,
        streams=streams,
        extra={"landscape": str(landscape), "seed": seed, **extra},
    )
    return ReplayBackend(Path("never-read.onnx"), options)


def test_the_registry_holds_it() -> None:
    assert BACKENDS["replay"] is ReplayBackend
    assert get_backend("replay") is ReplayBackend


def test_a_full_batch_takes_the_recorded_median_within_the_recorded_spread(
    landscape: Path,
) -> None:
    backend = replay(landscape, 8, seed=1)
    backend.load()
    draws = np.array([backend.batch_seconds(8) for _ in range(400)]) * 1000.0
    assert draws.min() >= 2.7 - 1e-9 and draws.max() <= 3.3 + 1e-9
    assert np.median(draws) == pytest.approx(3.0, rel=0.02)
    assert len(set(draws.round(9))) > 100  # jittered, not a constant


def test_a_seed_reproduces_the_noise(landscape: Path) -> None:
    def draws(seed: int, stream: int = 0) -> list[float]:
        backend = replay(landscape, 8, streams=2, seed=seed)
        backend.load()
        return [backend.batch_seconds(8, stream) for _ in range(20)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)
    assert draws(5, 1) != draws(5, 0)


def test_partial_batches_follow_the_linear_fit(landscape: Path) -> None:
    backend = replay(landscape, 4)  # one recording: no noise
    backend.load()
    # The fit across batch sizes 1, 4, 8 is 1 + 0.25 n: a batch of 1 in the batch-4
    # configuration costs what batch 1 recorded.
    assert backend.batch_seconds(4) == pytest.approx(0.002)
    assert backend.batch_seconds(1) == pytest.approx(0.00125)
    assert backend.batch_seconds(2) == pytest.approx(0.0015)


def test_a_single_recorded_batch_size_scales_proportionally(landscape: Path) -> None:
    backend = replay(landscape, 8, precision="int8")
    backend.load()
    # Both int8 points (deque timeouts differ) pooled; the failed repeat ignored.
    assert backend.replay is not None and backend.replay.noise_sd == 0.0
    assert backend.batch_seconds(8) == pytest.approx(0.0016)
    assert backend.batch_seconds(2) == pytest.approx(0.0004)


def test_time_scale_multiplies_every_latency_noise_included(landscape: Path) -> None:
    def draws(**extra: Any) -> np.ndarray:
        backend = replay(landscape, 8, seed=3, **extra)
        backend.load()
        return np.array([backend.batch_seconds(n) for n in (8, 8, 4, 1)])

    assert "time_scale" in ReplayBackend.option_names
    np.testing.assert_allclose(draws(time_scale=0.1), 0.1 * draws(), rtol=1e-12)
    np.testing.assert_allclose(draws(time_scale=2), 2 * draws(), rtol=1e-12)
    assert replay(landscape, 8, time_scale=1).time_scale == 1.0


@pytest.mark.parametrize("value", [0, -0.5, float("inf"), float("nan"), "0.1", True, None])
def test_time_scale_must_be_a_positive_number(landscape: Path, value: object) -> None:
    with pytest.raises(ConfigError, match="time_scale") as info:
        replay(landscape, 8, time_scale=value)
    message = str(info.value)
    assert "\n" not in message and repr(value) in message


def test_session_keeps_to_the_repeats_of_one_recording(tmp_path: Path) -> None:
    # Batch 8 recorded at 3.0 ms in session 0 (untagged) and at 6.0 ms in session 1.
    points = [point("fp32", 8, 1, ms(3.0), ms(3.0), ms(6.0) | {"session": 1})]
    path = tmp_path / "sessions.json"
    path.write_text(json.dumps({"format": 1, "scenario": "offline", "points": points}))
    medians = {}
    for session in (None, 0, 1):
        backend = replay(path, 8, session=session)
        backend.load()
        medians[session] = np.median([backend.batch_seconds(8) for _ in range(50)]) * 1000.0
    assert medians[0] == pytest.approx(3.0) and medians[1] == pytest.approx(6.0)
    assert medians[None] == pytest.approx(3.0, rel=0.3)  # all three: median 3.0, jitter to 6
    assert "session" in ReplayBackend.option_names
    with pytest.raises(ConfigError, match="session"):
        replay(path, 8, session=-1)
    missing = replay(path, 8, session=2)
    with pytest.raises(ConfigError, match="no recorded latency"):
        missing.load()


def test_an_offline_point_without_a_warmup_uses_its_score(landscape: Path) -> None:
    backend = replay(landscape, 4, streams=2)
    backend.load()
    assert backend.batch_seconds(4, 1) == pytest.approx(2 * 4 / 1000.0)


def test_infer_returns_one_row_per_sample(landscape: Path) -> None:
    backend = replay(landscape, 4)
    with backend:
        outputs = backend.infer({"input": np.zeros((3, 16), np.float32)}, 0)
    assert [o.shape[0] for o in outputs] == [3]


def test_a_configuration_missing_from_the_landscape_is_a_config_error(landscape: Path) -> None:
    backend = replay(landscape, 8, precision="fp16")
    with pytest.raises(ConfigError, match="precision=fp16 batch_size=8 streams=1") as info:
        backend.load()
    assert str(landscape) in str(info.value) and "fp32/b8/s1" in str(info.value)


def test_info_names_the_replayed_device_and_file(landscape: Path) -> None:
    info = replay(landscape, 8).info()
    assert info.backend == "replay" and info.simulated is True
    assert info.device == "Test CPU (2 cores) (replayed)"
    assert info.details == {"replayed": str(landscape)}


def test_landscape_option_is_required_and_must_be_readable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="landscape"):
        ReplayBackend(Path("x.onnx"), BackendOptions())
    with pytest.raises(ConfigError, match="seed"):
        ReplayBackend(Path("x.onnx"), BackendOptions(extra={"landscape": "l.json", "seed": -1}))
    missing = replay(tmp_path / "missing.json", 1)
    with pytest.raises(ConfigError, match=r"missing\.json"):
        missing.load()
    (tmp_path / "bad.json").write_text('{"points": 3}')
    with pytest.raises(ConfigError, match="not a landscape"):
        replay(tmp_path / "bad.json", 1).info()


def test_the_harness_measures_a_replayed_configuration(
    landscape: Path, tmp_path: Path, cache_dir: Path
) -> None:
    from harness.runner import measure

    run = RunConfig(
        model="tiny",
        backend="replay",
        batch_size=8,
        samples=64,
        cache_dir=cache_dir,
        backend_options={"landscape": str(landscape)},
    )
    result = measure(run, ScenarioSpec(duration_s=0.2, out_dir=tmp_path / "runs"))
    assert result.valid and result.simulated
    assert result.device == "Test CPU (2 cores) (replayed)"
    assert result.backend_details == {"replayed": str(landscape)}
    # Batches of 8 in about 3 ms: well under 8 / 2.7 ms = 2963 samples/s.
    assert 0 < result.score < 8 / 0.0027

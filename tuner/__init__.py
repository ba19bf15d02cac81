"""The Optuna side: search batch size, streams and precision for one model on one device,
each trial measured by `harness` with MLPerf LoadGen, every trial stored in an Optuna study."""

from __future__ import annotations

from tuner.config import StudyConfig

__all__ = ["StudyConfig"]

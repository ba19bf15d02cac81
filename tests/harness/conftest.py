"""Fixtures of the harness CLI tests: `python -m harness run` through main(), in a temporary
folder, with the session's model cache."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.cli import main


@pytest.fixture(autouse=True)
def _restore_loggers() -> Iterator[None]:
    """`main()` points the harness/tuner loggers at this test's stderr; undo that after."""
    saved = {
        name: (
            logging.getLogger(name).handlers[:],
            logging.getLogger(name).level,
            logging.getLogger(name).propagate,
        )
        for name in ("harness", "tuner")
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture
def harness(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., int]:
    """Run the CLI in tmp_path with the session cache (nothing lands in the repository)."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> int:
        try:
            return main(["run", "--cache-dir", str(cache_dir), *args])
        except SystemExit as exit:  # argparse's usage errors
            assert isinstance(exit.code, int)
            return exit.code

    return run

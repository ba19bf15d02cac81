"""Checks shared by the CLI tests: exit codes through main(), one-line errors, file digests."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tuner.cli import main

#: `optimize` on the simulated null backend (tiny model): 4 batch sizes x 2 streams. Pruning
#: is off in these shared arguments: the tests that use them count trials measured in full;
#: tests/tuner/test_prune.py tests pruning.
NULL_OPTIMIZE = [
    "optimize",
    "--model",
    "tiny",
    "--backend",
    "null",
    "--batch-sizes",
    "1,2,4,8",
    "--streams",
    "1,2",
    "--backend-option",
    "latency_ms=1",
    "--prune",
    "off",
]

#: `optimize` on the null backend, Server: a 20 ms bound at 600 queries over batch sizes 1 and 4,
#: one stream, fp32, one deque timeout; pruning off, as above.
NULL_SERVER = [
    "optimize",
    "--model",
    "tiny",
    "--backend",
    "null",
    "--scenario",
    "server",
    "--latency-ms",
    "20",
    "--min-queries",
    "600",
    "--batch-sizes",
    "1,4",
    "--streams",
    "1",
    "--precisions",
    "fp32",
    "--deque-timeouts-us",
    "2000",
    "--prune",
    "off",
]

ERROR_LINE = re.compile(r"^(?:tuner|python -m tuner \w+): error: \S")


def run(argv: list[str]) -> int:
    """main(argv), with argparse's SystemExit (usage errors) turned into its exit code."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def one_error_line(err: str) -> str:
    """The single error line on stderr (and no traceback)."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert ERROR_LINE.match(lines[0]), lines[0]
    return lines[0]

"""Pieces both command lines share: one-line argparse errors, logging, the error funnel that
turns a `TunerError` into a message and an exit code, and plain-text tables."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from harness.config import ACCURACY_METRICS
from harness.config import default_cache_dir as default_cache_dir  # re-exported
from harness.errors import TunerError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def common_flags() -> argparse.ArgumentParser:
    """The flags every subcommand takes."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parent.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    return parent


def setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("harness", "tuner"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def run_guarded(action: Callable[[], int], debug: bool, prog: str) -> int:
    """Run `action`; a TunerError becomes one line on stderr and its exit code."""
    try:
        return action()
    except TunerError as exc:
        if debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A left-aligned plain-text table."""
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1e6 else f"{value:,.0f}"
    if value is None:
        return "-"
    return str(value)


def parse_option(text: str) -> tuple[str, Any]:
    """'key=value' with a JSON-ish value: numbers, true/false, or a plain string."""
    import json

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def parse_dim(text: str) -> tuple[str, int]:
    """'sequence=128' -> ('sequence', 128)."""
    name, sep, raw = text.partition("=")
    if not sep or not name or not raw.strip().isdigit() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE with SIZE >= 1, got {text!r}")
    return name, int(raw)


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """'input_ids=128' or 'pixels=3x224x224' -> the input's name and its non-batch sizes."""
    name, sep, raw = text.rpartition("=")
    sizes = raw.lower().split("x")
    if not sep or not name or not all(d.strip().isdigit() and int(d) >= 1 for d in sizes):
        raise argparse.ArgumentTypeError(f"expected INPUT=D1xD2..., got {text!r}")
    return name, tuple(int(d) for d in sizes)


def parse_range(text: str) -> tuple[str, tuple[float, float]]:
    """'token_type_ids=0:1' -> ('token_type_ids', (0.0, 1.0)), both ends inclusive."""
    name, sep, raw = text.rpartition("=")
    low, colon, high = raw.partition(":")
    try:
        pair = (float(low), float(high))
    except ValueError:
        pair = None
    if not sep or not name or not colon or pair is None:
        raise argparse.ArgumentTypeError(f"expected NAME=LO:HI, got {text!r}")
    return name, pair


def add_input_flags(group: argparse._ArgumentGroup, defaults: bool = True) -> None:
    """The flags that say how a model is fed and checked, shared by `harness run` and
    `tuner optimize` (`defaults=False` leaves them None, so a study file's values stand)."""
    group.add_argument(
        "--dim",
        dest="dims",
        action="append",
        type=parse_dim,
        default=[] if defaults else None,
        metavar="NAME=SIZE",
        help="size of every model dimension named NAME, e.g. sequence=128 (repeatable); the "
        "batch stays the tuned knob, and placeholders exporters write ('?', unk__N) are not "
        "names: use --shape for them",
    )
    group.add_argument(
        "--shape",
        dest="shapes",
        action="append",
        type=parse_shape,
        default=[] if defaults else None,
        metavar="INPUT=D1xD2",
        help="the sizes of one input's axes besides its batch, in order, e.g. x=3x48x192 for "
        "x [-1, 3, '?', '?'] (repeatable); the way to size dims without a name",
    )
    group.add_argument(
        "--input-range",
        dest="input_ranges",
        action="append",
        type=parse_range,
        default=[] if defaults else None,
        metavar="NAME=LO:HI",
        help="draw input NAME's synthetic values from LO..HI, both inclusive (repeatable; "
        "default: an index input stays inside the table it indexes, a one-hot input inside "
        "its depth or the values it is compared with, other integers 0..1, a recurrent "
        "state zeros, other floats standard normal)",
    )
    group.add_argument(
        "--accuracy-metric",
        choices=ACCURACY_METRICS,
        default="auto" if defaults else None,
        help="how fp16/int8 outputs are compared with fp32: accuracy (top-1 accuracy on the "
        "labels of --data over fp32's), top1 (class scores [N, C]), cosine (hidden states, "
        "embeddings), relative (1 - relative L2 error); auto picks accuracy where the data "
        "has labels, else by the output's shape (default)",
    )
    group.add_argument(
        "--accuracy-output",
        metavar="NAME",
        help="the output the agreement is taken on (default: the first)",
    )

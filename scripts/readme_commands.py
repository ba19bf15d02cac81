"""Run the README's `python -m harness` and `python -m tuner` commands as written, in a fresh
folder, and say which passed. `tests/test_readme.py` parses every one of them in CI; this runs
them (about 10 minutes on 2 cores), except those that need what a fresh clone does not have:
a GPU, Docker, a PostgreSQL server, or a model file of the reader's own (`my_model.onnx`,
`bert.onnx`); `<name>` is the study the README's first `optimize` made.

    python scripts/readme_commands.py            # run them; exit 1 if one failed
    python scripts/readme_commands.py --list     # only list them, with what is skipped and why
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_readme import readme_commands  # noqa: E402

#: Why a command is not run here, by something its arguments hold.
SKIP = {
    "cuda": "needs a GPU",
    "--gpus": "needs a GPU",
    "tensorrt": "needs a GPU",
    "postgresql": "needs a PostgreSQL server",
    "my_model.onnx": "a model file of the reader's own",
    "model.onnx": "a model file of the reader's own",
    "bert.onnx": "a model file of the reader's own",
    "bert-small.onnx": "a model file of the reader's own (benchmarks/real_models.py, torch)",
    "odd.onnx": "a model file of the reader's own",
    "dashboard": "serves until stopped (tests/tuner/test_cli.py starts and checks it)",
    "worker": "serves until stopped (tests/tuner/test_queue.py runs it with --once)",
    "submit": "tests/tuner/test_queue.py runs it",
    "cancel": "tests/tuner/test_queue.py runs it",
    "NAME": "names a study of the reader's own",
    "system": "needs a GPU",
}


def why_skipped(argv: list[str]) -> str | None:
    for word in argv:
        for key, why in SKIP.items():
            if word == key or word.endswith(f"/{key}") or word.startswith(f"{key}:"):
                return why
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the commands only")
    args = parser.parse_args()
    commands = readme_commands()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="readme-") as tmp:
        shutil.copytree(
            REPO / "studies", Path(tmp) / "studies"
        )  # the README's paths, as in a clone
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
        env["TUNER_STORAGE"] = f"sqlite:///{tmp}/tuner.db"
        name = ""
        for program, argv in commands:
            line = f"python -m {program} {shlex.join(argv)}"
            why = why_skipped(argv)
            if why is not None or args.list:
                print(f"{'skip' if why else 'run '}  {line}" + (f"   ({why})" if why else ""))
                continue
            argv = [name if a == "<name>" else a for a in argv]
            if "<name>" in line and not name:
                print(f"skip  {line}   (no study made yet)")
                continue
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", program, *argv],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
            )
            seconds = time.monotonic() - started
            ok = done.returncode == 0
            failed += not ok
            print(
                f"{'ok  ' if ok else 'FAIL'}  {line}   ({seconds:.0f} s, exit {done.returncode})"
            )
            if not ok:
                print("      " + (done.stderr.strip().splitlines() or ["?"])[-1])
            if program == "tuner" and argv[:1] == ["optimize"] and ok and not name:
                listing = subprocess.run(
                    [sys.executable, "-m", "tuner", "studies", "-q"],
                    cwd=tmp,
                    env=env,
                    capture_output=True,
                    text=True,
                ).stdout.splitlines()
                name = next((r.split()[0] for r in listing if r.startswith("resnet50-")), "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

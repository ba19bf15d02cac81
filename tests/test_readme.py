"""The README's commands stay true: every `python -m harness ...` and `python -m tuner ...` line
of its shell blocks parses with the real CLI parser (a renamed or removed flag fails here), and
every study file it names builds. The first command, the default study, is what CI's fresh
clone and the README's own first line run in full."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from harness import cli as harness_cli
from tuner import cli as tuner_cli
from tuner import config

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
_COMMAND = re.compile(r"(?:^|&&\s*|\s)(?:\.venv/bin/)?python3? -m (harness|tuner)\b(.*)")


def readme_commands() -> list[tuple[str, list[str]]]:
    """(program, argv) of every harness/tuner command in the README's ```bash blocks, with
    line continuations joined, comments and later `&&` commands left out."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            found = _COMMAND.search(line.split("  #")[0].split(" # ")[0])
            if found is None:
                continue
            rest = found.group(2).split("&&")[0]
            commands.append((found.group(1), shlex.split(rest)))
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_commands_of_both_programs() -> None:
    programs = {program for program, _ in COMMANDS}
    assert programs == {"harness", "tuner"}
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize(
    ("program", "argv"), COMMANDS, ids=[" ".join(a)[:60] for _, a in COMMANDS]
)
def test_every_readme_command_parses(program: str, argv: list[str]) -> None:
    parser = (harness_cli if program == "harness" else tuner_cli).build_parser()
    args = parser.parse_args(argv)  # SystemExit (exit 2) on an unknown flag or command
    assert args.command == argv[0]
    study_file = getattr(args, "config", None)
    if study_file is not None:
        assert (REPO / study_file).is_file(), study_file
        assert config.build(REPO / study_file).trials >= 1

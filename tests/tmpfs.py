"""A real, tiny tmpfs for disk-full tests: `mount -t tmpfs -o size=...` (root with
CAP_SYS_ADMIN); the tests that need it skip, saying why, where it cannot be mounted."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(folder: Path, size_kib: int) -> Iterator[Path]:
    """`folder` (created) with a tmpfs of `size_kib` KiB mounted on it, unmounted after."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a disk-full test mounts a tiny tmpfs, which needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave_bytes: int = 0) -> Path:
    """Fill the file system under `folder` until at most `leave_bytes` are free."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while _free(folder) > leave_bytes:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:  # full
            pass
    return filler


def _free(folder: Path) -> int:
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize

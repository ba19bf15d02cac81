"""Whether a process id is in use, for the leftovers of dead processes (harness.precision's
build folders, tuner.lifetime's trial owners)."""

from __future__ import annotations

import os


def pid_exists(pid: int) -> bool:
    """Whether a process `pid` exists (another user's counts; a zombie counts until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True

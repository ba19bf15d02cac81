"""LoadGen scenarios, one module each: `offline` and `server` (fixed QPS and max-QPS search)."""

from __future__ import annotations

from harness.scenarios import offline, server
from harness.scenarios.outcome import Outcome

__all__ = ["Outcome", "offline", "server"]

"""The wall clock the protocol's timestamps and deadlines are read from (docs/protocol.md, section 4)."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC): what `ts` and `deadline` hold."""
    return int(time.time() * 1000)

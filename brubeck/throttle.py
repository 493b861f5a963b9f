"""`LogThrottle`: log lines about what peers send, at a bounded rate whatever they send.

A listener logs each message it refuses (malformed, forged, stale...), which makes its log a second
channel for whoever floods it: thousands of bad messages a second must not become thousands of lines.
Per *category* (a fixed string chosen by the code, never taken from the peer), the first line of each
interval is logged in full; the rest are counted, and one summary line says how many there were when the
interval ends. Two lines per category per interval at most, however many messages arrive; counters
(`stats`) still count every one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from gevent.hub import get_hub

#: Seconds between two full lines of one category.
DEFAULT_INTERVAL = 10.0


@dataclass(slots=True)
class _Category:
    level: int
    logged_at: float  # time.monotonic() of its last full line
    suppressed: int = 0


class LogThrottle:
    """`throttle.log(logging.WARNING, "forged", "refused request %r: %s", msg_id, why)`."""

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_INTERVAL) -> None:
        self.logger = logger
        self.interval = interval
        self._categories: dict[str, _Category] = {}
        self._timer: Any = None
        self._closed = False

    def log(self, level: int, category: str, msg: str, *args: object) -> None:
        """Log `msg % args` unless `category` had a full line within the interval; then only count it."""
        if not self.logger.isEnabledFor(level):
            return
        if self._closed:  # (what is still running while its owner closes: no timer left behind)
            self.logger.log(level, msg, *args)
            return
        now = time.monotonic()
        state = self._categories.get(category)
        if state is None:
            self._categories[category] = _Category(level, now)
        elif now - state.logged_at < self.interval:
            state.suppressed += 1
            if self._timer is None:
                # (ref=False: a summary still owed must not keep the hub, or a process, alive)
                self._timer = get_hub().loop.timer(max(0.0, state.logged_at + self.interval - now), ref=False)
                self._timer.start(self.flush)
            return
        else:
            self._summarise(category, state, now)
            state.level, state.logged_at = level, now
        self.logger.log(level, msg, *args)

    def flush(self) -> None:
        """Log the summary of each category whose interval is over (run by a timer; safe to call any time)."""
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        now = time.monotonic()
        due = None
        for category, state in self._categories.items():
            if not state.suppressed:
                continue
            if now - state.logged_at >= self.interval:
                self._summarise(category, state, now)
            else:
                due = min(due or self.interval, state.logged_at + self.interval - now)
        if due is not None:
            self._timer = get_hub().loop.timer(due, ref=False)
            self._timer.start(self.flush)

    def close(self) -> None:
        """Stop the timer, logging every summary still owed; later lines are logged one by one."""
        self._closed = True
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        now = time.monotonic()
        for category, state in self._categories.items():
            self._summarise(category, state, now)

    def _summarise(self, category: str, state: _Category, now: float) -> None:
        if state.suppressed:
            self.logger.log(state.level, "%s: %d more in the last %.1fs, not logged one by one", category,
                            state.suppressed, now - state.logged_at)
            state.suppressed = 0

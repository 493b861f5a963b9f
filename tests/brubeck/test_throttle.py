"""LogThrottle: a flood of refused messages gives a bounded number of log lines, and none is forgotten."""

from __future__ import annotations

import logging

import gevent
import pytest

from brubeck.throttle import LogThrottle

LOGGER = "tests.throttle"


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def wait_for(caplog: pytest.LogCaptureFixture, count: int, timeout: float = 5.0) -> None:
    with gevent.Timeout(timeout, AssertionError(f"expected {count} lines, got {lines(caplog)}")):
        while len(lines(caplog)) < count:
            gevent.sleep(0.01)


def test_a_flood_gives_its_first_line_then_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    throttle = LogThrottle(logging.getLogger(LOGGER), interval=0.2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for number in range(1000):
            throttle.log(logging.WARNING, "forged", "refused request %d", number)
        assert lines(caplog) == ["refused request 0"]
        wait_for(caplog, 2)
        _, summary = lines(caplog)
        assert summary.startswith("forged: 999 more in the last ")
        assert summary.endswith("s, not logged one by one")
        assert caplog.records[-1].levelno == logging.WARNING
        throttle.log(logging.WARNING, "forged", "refused request %d", 1000)  # a new interval: in full again
        assert lines(caplog)[-1] == "refused request 1000"
    throttle.close()


def test_categories_are_throttled_apart(caplog: pytest.LogCaptureFixture) -> None:
    throttle = LogThrottle(logging.getLogger(LOGGER), interval=60)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(3):
            throttle.log(logging.WARNING, "forged", "forged")
            throttle.log(logging.INFO, "expired", "expired")
        assert lines(caplog) == ["forged", "expired"]
        throttle.close()  # the summaries still owed are logged, at each category's level
        forged, expired = lines(caplog)[2:]
        assert forged.startswith("forged: 2 more in the last ") and expired.startswith("expired: 2 more ")
        assert [r.levelno for r in caplog.records[2:]] == [logging.WARNING, logging.INFO]


def test_nothing_is_counted_at_a_level_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    throttle = LogThrottle(logging.getLogger(LOGGER), interval=60)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(5):
            throttle.log(logging.INFO, "expired", "expired")
        throttle.close()
    assert lines(caplog) == []

"""``DatabaseHealth``: an outage is said once when it starts and once when it ends, with how long
it lasted, however many requests and loops run into it meanwhile."""

from __future__ import annotations

import logging

import pytest

from core.errors import DatabaseUnreachable
from core.runtime.health import DatabaseHealth


class Clock:
    def __init__(self) -> None:
        self.at = 100.0

    def __call__(self) -> float:
        return self.at


def _refused(exc: BaseException) -> str | None:
    return "connection refused" if isinstance(exc, ConnectionRefusedError) else None


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="core.runtime.health")
    clock = Clock()
    health = DatabaseHealth(_refused, clock)
    before = health.now()
    clock.at += 1
    refused = ConnectionRefusedError()
    down = health.failed(refused)
    assert isinstance(down, DatabaseUnreachable) and down.__cause__ is refused
    for _ in range(50):  # every loop, every second
        clock.at += 0.1
        assert isinstance(health.failed(ConnectionRefusedError()), DatabaseUnreachable)
    assert health.down and health.error == "connection refused"
    health.succeeded(before)  # set out before the outage was noticed: proves nothing
    assert health.down
    clock.at += 6.2
    health.succeeded(health.now())
    assert not health.down
    health.succeeded(health.now())  # the database answering is not news

    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert said == [
        (logging.WARNING, "database unreachable: connection refused"),
        (logging.WARNING, "database reachable again after 11.2 s"),
    ]


def test_other_failures_are_their_callers_to_report_and_change_nothing() -> None:
    health = DatabaseHealth(_refused)
    assert health.failed(ValueError("a bug")) is None
    assert health.classify(ValueError("a bug")) is None
    assert not health.down
    assert isinstance(health.classify(ConnectionRefusedError()), DatabaseUnreachable)
    assert not health.down  # classify only names it
    already = DatabaseUnreachable()
    assert health.failed(already) is already and not health.down  # counted where it was first seen

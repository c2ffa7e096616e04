"""Runner labels: what a job needs, which runner satisfies it, and why a job waits when no online
runner could take it (worded for people, said only after a job waited a while)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.labels import RunnerSeen, needed, parse_labels, runner_waits, satisfies, waiting_for_runner

NOW = datetime(2026, 12, 6, 12, 30, tzinfo=UTC)


def _runner(name: str, labels: tuple[str, ...], seen_ago: float, draining: bool = False) -> RunnerSeen:
    seen = NOW - timedelta(seconds=seen_ago)
    return RunnerSeen(
        name=name, labels=labels, version="1", capacity=4, lease_s=30, first_seen=seen, last_seen=seen,
        draining=draining,
    )  # fmt: skip


def test_labels_are_parsed_checked_and_combined() -> None:
    assert parse_labels(" linux, prod-eu ,linux,") == ["linux", "prod-eu"]
    with pytest.raises(ValueError, match="'GPU!' is not a runner label"):
        parse_labels("linux,GPU!")
    assert needed(["gpu"], ["linux"], ["prod-eu", "linux"]) == ("gpu", "linux", "prod-eu")
    assert satisfies(["linux", "prod-eu", "gpu"], ["prod-eu", "linux"])
    assert not satisfies(["linux"], ["prod-eu"])


def test_a_job_waits_for_a_runner_only_when_none_online_could_take_it() -> None:
    eu = _runner("eu-1", ("linux", "prod-eu"), seen_ago=10)
    gone = _runner("eu-2", ("linux", "prod-eu"), seen_ago=3600)
    draining = _runner("eu-3", ("linux", "prod-eu"), seen_ago=1, draining=True)
    assert waiting_for_runner(("prod-eu",), [eu], NOW) == ""  # (busy, or about to claim)
    assert eu.state(NOW) == "online" and gone.state(NOW) == "offline" and draining.state(NOW) == "draining"
    assert waiting_for_runner(("prod-eu",), [gone], NOW) == (
        "waiting for a runner with prod-eu: none online since 11:30 UTC"
    )
    assert waiting_for_runner(("prod-eu",), [gone, draining], NOW) == (
        "waiting for a runner with prod-eu: eu-3 is draining (an admin may resume it); "
        "any other offline since 11:30 UTC"
    )
    eu_4 = _runner("eu-4", ("prod-eu",), seen_ago=2, draining=True)
    assert waiting_for_runner(("prod-eu",), [eu_4, draining], NOW) == (
        "waiting for a runner with prod-eu: eu-3, eu-4 are draining (an admin may resume them)"
    )
    assert waiting_for_runner(("gpu",), [eu], NOW) == "waiting for a runner with gpu: none has ever connected"
    assert waiting_for_runner((), [], NOW) == "waiting for a runner: none has ever connected"
    queued = [
        ("j1", ("gpu",), NOW - timedelta(seconds=10)),
        ("j2", ("gpu",), NOW - timedelta(seconds=1)),  # (not yet: a runner may be about to claim)
        ("j3", ("prod-eu",), NOW - timedelta(seconds=10)),
    ]
    assert runner_waits(queued, [eu], NOW) == {"j1": "waiting for a runner with gpu: none has ever connected"}

"""Durations as people write them in pipeline files, and as Shipyard shows them."""

from __future__ import annotations

import pytest

from core.duration import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("30s", 30.0),
        ("10m", 600.0),
        ("4h", 14400.0),
        ("2d", 172800.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s", 93784.0),
        ("  1h 30m ", 5400.0),  # spaces are ignored
        ("10M", 600.0),  # units are case-insensitive
        ("007", 7.0),
        ("365d", 31536000.0),  # the longest wait allowed
        (365 * 86400, 31536000.0),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "invalid duration ''"),
        ("   ", "invalid duration '   '"),
        ("abc", "invalid duration 'abc'"),
        ("10x", "invalid duration '10x'"),
        ("1.5h", "invalid duration '1.5h'"),  # fractions only as plain numbers
        ("1h30", "invalid duration '1h30'"),  # a trailing number without unit
        ("h", "invalid duration 'h'"),
        ("-5", "invalid duration '-5'"),
        ("-5m", "invalid duration '-5m'"),
        ("0s", "invalid duration '0s'"),
        ("0", "duration must be more than 0 and at most 365d, got 0"),
        (0, "duration must be more than 0 and at most 365d, got 0"),
        (-1, "duration must be more than 0 and at most 365d, got -1"),
        (-0.5, "duration must be more than 0 and at most 365d, got -0.5"),
        ("366d", "duration must be more than 0 and at most 365d, got "),  # longer waits are mistakes
        ("8761h", "duration must be more than 0 and at most 365d, got "),
        (365 * 86400 + 1, "duration must be more than 0 and at most 365d, got 31536001"),
        (float("nan"), "duration must be more than 0 and at most 365d, got nan"),  # YAML `.nan`
        (float("inf"), "duration must be more than 0 and at most 365d, got inf"),  # YAML `.inf`
        (True, "invalid duration True"),  # YAML `timeout: yes`
        (False, "invalid duration False"),
    ],
)
def test_parse_duration_rejects_with_a_hint(value: str | int | float, message: str) -> None:
    with pytest.raises(ValueError, match="duration") as info:
        parse_duration(value)
    assert str(info.value).startswith(message)
    if "invalid" in message:
        assert "(use e.g. 30s, 10m, 4h" in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0.0s"),
        (1.23, "1.2s"),
        (9.94, "9.9s"),
        (10, "10s"),
        (45, "45s"),
        (59.4, "59s"),
        (59.6, "1m"),  # rounded to whole seconds from 10s up
        (60, "1m"),
        (90, "1m30s"),
        (600, "10m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (14400, "4h"),
        (86400, "1d"),
        (90061, "1d1h"),  # only the two largest units
        (3661, "1h1m"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["30s", "10m", "4h", "1h30m", "2d", "1d1h", "45s"])
def test_format_then_parse_round_trips_short_forms(text: str) -> None:
    assert format_duration(parse_duration(text)) == text

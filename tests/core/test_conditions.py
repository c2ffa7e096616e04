"""The condition grammar: what parses, what holds, and what is refused with a message (never
``eval``)."""

from __future__ import annotations

import pytest

from core.conditions import Condition


@pytest.mark.parametrize(
    ("text", "holds", "does_not_hold"),
    [
        ("> 0.01", [0.02, "0.5", 1], [0.01, 0, "x", None, float("nan"), True]),
        ("<= 0.005", [0.005, -1, "  0.001 "], [0.0051]),
        (">= 200 and < 300", [200, 299.9, "250"], [300, 199, "ok"]),
        ("< 0.5 or > 2", [0.1, 3], [0.5, 1, 2]),
        ("> 1 and < 3 or == 10", [2, 10], [1, 3, 9]),  # and binds tighter than or
        ('== "ok"', ["ok"], ["OK", "degraded", None, 1]),
        ("!= 'ok'", ["degraded", None], ["ok"]),
        ("== true", [True], [False, 1, "true", None]),
        ("!= false", [True], [False]),
        ("== 1", [1, 1.0, "1.0"], [True, 2]),
        (">= .5", [0.5], [0.4]),
        ("> -1e3", [-999], [-1000]),
        ("==200", [200], [201]),  # spaces are optional
    ],
)
def test_condition_holds(text: str, holds: list[object], does_not_hold: list[object]) -> None:
    condition = Condition.parse(text)
    assert [condition.holds(v) for v in holds] == [True] * len(holds)
    assert [condition.holds(v) for v in does_not_hold] == [False] * len(does_not_hold)


def test_condition_reads_as_written() -> None:
    condition = Condition.parse("  < 0.5 or > 2 ")
    assert str(condition) == "< 0.5 or > 2"
    assert [str(c) for a in condition.alternatives for c in a] == ["< 0.5", "> 2"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("__import__('os')", "cannot read \"__import__('os')\""),
        ("> 1; import os", "cannot read '; import os'"),
        ("> 0.01 or __import__('os').system('id')", "cannot read \"__import__('os').system('id')\""),
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("0.5", 'expected a comparison such as > 0.01 or == "ok"'),
        (">", 'expected a comparison such as > 0.01 or == "ok"'),
        ("> 0.01 and", 'expected a comparison such as > 0.01 or == "ok"'),
        ("or > 1", 'expected a comparison such as > 0.01 or == "ok"'),
        ("> 1 > 2", "expected 'and' or 'or' after > 1"),
        ("== ok", "cannot read 'ok'"),
        ('== "unterminated', "cannot read '\"unterminated'"),
        ("> inf", "cannot read 'inf'"),
        ("> 1e999", "1e999 is not a finite number"),
        ("> 'a'", '> compares numbers; "a" takes == or !='),
        ("<= true", "<= compares numbers; true takes == or !="),
        ("&& 1", "cannot read '&& 1'"),
    ],
)
def test_invalid_condition_says_why(text: str, why: str) -> None:
    with pytest.raises(ValueError) as raised:
        Condition.parse(text)
    assert str(raised.value) == f"invalid condition {text!r}: {why} (e.g. > 0.01, >= 200 and < 300, == 'ok')"

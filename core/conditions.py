"""Conditions on a measured value: a small comparison grammar, parsed here, never ``eval``-ed.

::

    condition  := conjunct ("or" conjunct)*
    conjunct   := comparison ("and" comparison)*
    comparison := ("<" | "<=" | ">" | ">=" | "==" | "!=") literal
    literal    := number | "quoted text" | 'quoted text' | true | false

``> 0.01``, ``>= 200 and < 300``, ``== "ok"``, ``== true``, ``< 0.5 or > 2``. The value compared
is on the left: ``> 0.01`` holds for 0.02. A number compares with numbers only (text that reads
as a number counts), text and booleans with ``==``/``!=`` only (``> "a"`` is refused); anything
else does not hold.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"\s*(?:(?P<op><=|>=|==|!=|<|>)|(?P<word>and|or|true|false)\b"
    r"|(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)')"
)
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
Literal = float | str | bool


@dataclass(frozen=True, slots=True)
class Comparison:
    op: str
    literal: Literal

    def holds(self, value: object) -> bool:
        if isinstance(self.literal, bool) or isinstance(value, bool):
            return self.op in ("==", "!=") and _OPS[self.op](value is self.literal, True)
        if isinstance(self.literal, float):
            number = _number(value)
            return number is not None and _OPS[self.op](number, self.literal)
        if self.op not in ("==", "!="):
            return False
        return _OPS[self.op](None if value is None else str(value), self.literal)

    def __str__(self) -> str:
        return f"{self.op} {_written(self.literal)}"


def _written(literal: Literal) -> str:
    """A literal as a condition spells it."""
    if isinstance(literal, bool):
        return "true" if literal else "false"
    return f"{literal:g}" if isinstance(literal, float) else f'"{literal}"'


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return None if math.isnan(number) else number


@dataclass(frozen=True, slots=True)
class Condition:
    """Alternatives (``or``), each a list of comparisons that must all hold (``and``)."""

    alternatives: tuple[tuple[Comparison, ...], ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Raises ``ValueError`` saying what is wrong and what a condition looks like."""
        tokens = _tokens(text)
        alternatives: list[tuple[Comparison, ...]] = []
        conjunct: list[Comparison] = []
        i = 0
        while True:
            kind = tokens[i][0] if i < len(tokens) else None  # None: it ended after and/or
            operand = tokens[i + 1][0] if i + 1 < len(tokens) else None
            if kind != "op" or operand not in ("num", "text", "bool"):
                raise _invalid(text, 'expected a comparison such as > 0.01 or == "ok"')
            if operand != "num" and tokens[i][1] not in ("==", "!="):
                literal = _written(tokens[i + 1][1])
                raise _invalid(text, f"{tokens[i][1]} compares numbers; {literal} takes == or !=")
            conjunct.append(Comparison(str(tokens[i][1]), tokens[i + 1][1]))
            i += 2
            if i == len(tokens):
                break
            if tokens[i] not in (("word", "and"), ("word", "or")):
                raise _invalid(text, f"expected 'and' or 'or' after {conjunct[-1]}")
            if tokens[i][1] == "or":
                alternatives.append(tuple(conjunct))
                conjunct = []
            i += 1
        alternatives.append(tuple(conjunct))
        return cls(tuple(alternatives), text.strip())

    def holds(self, value: object) -> bool:
        return any(all(c.holds(value) for c in conjunct) for conjunct in self.alternatives)

    def __str__(self) -> str:
        return self.text


def _tokens(text: str) -> list[tuple[str, Literal]]:
    tokens: list[tuple[str, Literal]] = []
    pos, text = 0, str(text)
    while pos < len(text.rstrip()):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise _invalid(text, f"cannot read {text[pos:].strip()!r}")
        pos = match.end()
        if match["op"]:
            tokens.append(("op", match["op"]))
        elif match["num"]:
            number = float(match["num"])
            if not math.isfinite(number):
                raise _invalid(text, f"{match['num']} is not a finite number")
            tokens.append(("num", number))
        elif match["word"] in ("true", "false"):
            tokens.append(("bool", match["word"] == "true"))
        elif match["word"]:
            tokens.append(("word", match["word"]))
        else:
            tokens.append(("text", match["dq"] if match["dq"] is not None else match["sq"]))
    if not tokens:
        raise _invalid(text, "it is empty")
    return tokens


def _invalid(text: str, why: str) -> ValueError:
    example = "> 0.01, >= 200 and < 300, == 'ok'"
    return ValueError(f"invalid condition {text!r}: {why} (e.g. {example})")

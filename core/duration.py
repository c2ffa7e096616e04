"""Durations as people write them in pipeline files: ``90``, ``30s``, ``10m``, ``4h``, ``1h30m``, ``2d``."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: a year: longer waits are mistakes, and far larger ones overflow date arithmetic
MAX_SECONDS = 365 * 86400


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``; raises ``ValueError`` with a hint for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r} (use e.g. 30s, 10m, 4h)")
    if isinstance(value, int | float):
        return _in_range(float(value), value)
    text = str(value).strip().lower().replace(" ", "")
    if text.isdigit():
        return parse_duration(int(text))
    pos, total = 0, 0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNIT[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text or total <= 0:
        raise ValueError(f"invalid duration {value!r} (use e.g. 30s, 10m, 4h, 1h30m)")
    return _in_range(float(total), value)


def _in_range(seconds: float, written: object) -> float:
    if not 0 < seconds <= MAX_SECONDS:  # also refuses NaN and infinity
        raise ValueError(f"duration must be more than 0 and at most 365d, got {written!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Short human form: ``4h``, ``1h30m``, ``45s``, ``1.2s``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts[:2]) or "0s"

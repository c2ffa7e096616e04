"""Reading a ``/deploy`` line: shell-like words, ``key=value`` parameters, and suggestions for
words that are almost right."""

from __future__ import annotations

import difflib
import re
import shlex
from dataclasses import dataclass, field

from core.errors import InvalidInput

#: typographic quotes (phones type them) as the plain ones shlex understands
SMART_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
#: spaces shlex does not part words on: a no-break space (macOS types one with Option-Space),
#: typographic and ideographic spaces, line and paragraph separators (all but ASCII's)
OTHER_SPACES = re.compile(r"[^\S \t\r\n]")
#: invisible characters pasted along with text: zero-width space, word joiner, byte-order mark
INVISIBLE = re.compile("[\u200b\u2060\ufeff]")
#: what no database keeps as text: NUL, and half of a surrogate pair (JSON, as Socket Mode
#: and interactive payloads carry text, can escape either)
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Line:
    verb: str
    words: list[str] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)


def parse(text: str) -> Line:
    """``run web ref=abc "note=two words"`` → verb ``run``, words ``[web]``, params."""
    refuse_unstorable(text, "that")
    # Slack sends typographic quotes when people type them on phones
    text = text.translate(SMART_QUOTES)
    text = INVISIBLE.sub("", OTHER_SPACES.sub(" ", text))
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise InvalidInput(f"cannot read that: {exc} (close your quotes)") from None
    if not tokens:
        return Line("")
    verb, rest = tokens[0].lower(), tokens[1:]
    words, params = [], {}
    for token in rest:
        name, sep, value = token.partition("=")
        if sep and name and name.replace("_", "").isalnum():
            params[name] = value
        else:
            words.append(token)
    return Line(verb, words, params)


def unstorable(text: str) -> str | None:
    """The first character in ``text`` a database cannot store, said for people; None if none."""
    found = UNSTORABLE.search(text)
    if found is None:
        return None
    return "a NUL character" if found.group() == "\x00" else "half of an emoji (a lone surrogate)"


def refuse_unstorable(text: str, what: str) -> None:
    """Raises ``InvalidInput`` naming the character when ``text`` holds one a database cannot
    store, instead of the database failing on it with nobody told."""
    if (char := unstorable(text)) is not None:
        raise InvalidInput(f"cannot read {what}: it contains {char}; type it again without")


def closest(word: str, choices: list[str]) -> str | None:
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(what: str, word: str, choices: list[str]) -> str:
    guess = closest(word, choices)
    hint = f" Did you mean `{guess}`?" if guess else ""
    known = ", ".join(f"`{c}`" for c in sorted(choices)[:20]) or "none"
    return f"Unknown {what} `{word}`.{hint} ({what}s: {known})"

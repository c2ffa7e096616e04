"""Environment secrets: which job gets which environment's secrets, and how their values are
masked wherever a job's output goes.

A secret belongs to one environment. A job gets that environment's secrets as environment
variables only when its stage deploys there and has been admitted (its gate, approvals, locks,
freezes and queue have all let it through: the stage runs), and only on a runner allowed to
hold them (``runner_may_receive``). Gate checks never get secrets: they run before admission.

Everything a job writes (its log, its ``$SHIPYARD_OUTPUT`` values) passes through a ``Masker``
before it is stored, so every value, and its base64 forms, reads ``***`` in the database, the
REST API, Slack and webhooks. The values themselves live only encrypted in the database
(``storage.secrets``) and decrypted in the runner's memory and the job's environment.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable
from typing import Final

from core.errors import CommandRefused, InvalidInput
from core.labels import satisfies
from core.model import Job, RunState
from core.states import StageStatus

#: what a secret's value is replaced with
MASK: Final = "***"
#: a secret's name: an environment variable's, upper case; ``SHIPYARD_`` ones are the service's
NAME: Final = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
RESERVED_PREFIXES: Final = ("SHIPYARD_", "SLACK_")
#: shorter values (and lines of a multi-line value) would mask ordinary text everywhere
MIN_LENGTH: Final = 4
MAX_LENGTH: Final = 64 * 1024
#: how ``base64`` (the command) wraps its output by default
BASE64_LINE: Final = 76
#: a stage in one of these has passed its environment's protection rules
ADMITTED: Final = frozenset({StageStatus.RUNNING, StageStatus.ROLLING_OUT, StageStatus.VERIFYING})


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise InvalidInput(
            f"secret name {name!r}: use an environment variable's name in upper case "
            "(A-Z, 0-9, _; not starting with a digit; at most 128 characters)"
        )
    if name.startswith(RESERVED_PREFIXES):
        raise InvalidInput(f"secret name {name!r}: names starting with SHIPYARD_ or SLACK_ are reserved")
    return name


def check_value(name: str, value: str) -> str:
    """A value that can be masked reliably. Never quoted back: errors name only the secret."""
    if len(value.strip()) < MIN_LENGTH:
        raise InvalidInput(
            f"secret {name}: the value must be at least {MIN_LENGTH} characters (not counting "
            "surrounding blanks), or masking it would hide ordinary text in every log"
        )
    if len(value) > MAX_LENGTH:
        raise InvalidInput(f"secret {name}: the value is longer than {MAX_LENGTH} characters")
    if "\x00" in value:
        raise InvalidInput(f"secret {name}: the value contains a NUL character")
    if not is_utf8(value):  # (bytes read from stdin as surrogates)
        raise InvalidInput(f"secret {name}: the value is not UTF-8 text (set a binary value base64-encoded)")
    return value


def is_utf8(text: str) -> bool:
    """Whether ``text`` is UTF-8 text: a runner is sent it as JSON, which holds no lone surrogate."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def runner_may_receive(runner_labels: Iterable[str], required: Iterable[str]) -> bool:
    """Whether a runner carrying ``runner_labels`` may hold the secrets of an environment that
    requires ``required`` (its ``runner_labels`` as configured now, not as they were when the
    run was laid out): it must carry every one of them."""
    return satisfies(runner_labels, required)


def secrets_environment(
    state: RunState, job: Job, runner_labels: Iterable[str], required: Iterable[str]
) -> str | None:
    """The environment whose secrets ``job`` gets when a runner carrying ``runner_labels``
    claims it, or None: its stage deploys to that environment, has been admitted, and the
    runner carries the environment's ``required`` labels and the job's own."""
    stage = state.stages[job.stage_index]
    if stage.environment is None or stage.status not in ADMITTED:
        return None
    if not runner_may_receive(runner_labels, [*required, *job.labels]):
        return None
    return stage.environment


def _base64_forms(text: str) -> set[str]:
    forms: set[str] = set()
    for raw in (text, text + "\n"):  # (``echo "$X" | base64`` encodes the newline too)
        for encoded in (base64.b64encode(raw.encode()), base64.urlsafe_b64encode(raw.encode())):
            form = encoded.decode()
            forms.update((form, form.rstrip("=")))
            # ``base64`` wraps long output: each full line stands alone in the log
            forms.update(form[i : i + BASE64_LINE] for i in range(0, len(form), BASE64_LINE))
    return forms


def mask_variants(values: Iterable[str]) -> tuple[str, ...]:
    """Every text that gives a value away: the value, each of its lines, and their base64
    forms (standard and URL-safe, with and without padding and a trailing newline). Longest
    first, so a longer form is masked whole before a shorter one inside it."""
    found: set[str] = set()
    for value in values:
        for piece in {value, value.strip(), *(line.strip() for line in value.splitlines())}:
            if len(piece) >= MIN_LENGTH:
                found.add(piece)
                found.update(f for f in _base64_forms(piece) if len(f) >= MIN_LENGTH)
    return tuple(sorted(found, key=lambda s: (-len(s), s)))


class Masker:
    """Replaces secret values with ``***`` in output that arrives in pieces: the end of a piece
    that could be the start of a value is held back until the next piece (or ``flush``)
    shows whether it is, so a value split between two reads is still masked."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.variants = mask_variants(values)
        self.pattern = _trie_pattern(sorted(self.variants)) if self.variants else None
        self.held: dict[str, str] = {}

    def __bool__(self) -> bool:
        return self.pattern is not None

    def mask(self, text: str) -> str:
        """``text`` whole, masked."""
        return self.pattern.sub(MASK, text) if self.pattern is not None else text

    def feed(self, stream: str, text: str) -> str:
        """The part of ``stream``'s output so far that can be told now, masked. What could
        still grow into a value (or into a longer form of one, as padding completes base64) is
        held back until more output decides it."""
        if self.pattern is None:
            return text
        text = self.held.pop(stream, "") + text
        cut = len(text) - self._undecided(text)
        told, at = [], 0
        for match in self.pattern.finditer(text):
            if match.end() > cut or match.end() == len(text):
                cut = min(cut, match.start())
                break
            told += [text[at : match.start()], MASK]
            at = match.end()
        told.append(text[at:cut])
        if cut < len(text):
            self.held[stream] = text[cut:]
        return "".join(told)

    def flush(self) -> list[tuple[str, str]]:
        """What is still held back, per stream, masked (the output ended)."""
        held, self.held = self.held, {}
        return [(stream, self.mask(text)) for stream, text in held.items() if text]

    def _undecided(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins some variant."""
        return max((_overlap(text, variant) for variant in self.variants), default=0)


def _trie_pattern(words: list[str]) -> re.Pattern[str]:
    """One regex for ``words`` (sorted), shaped as their trie: its cost at each place in a text is
    the trie's depth, not the number of words (a value of many lines has thousands of forms), and
    the longest word there wins, as a longer way on is tried before ending. Pathologically deep
    tries fall back to the plain alternation, longest first."""
    try:
        return re.compile(_trie(words))
    except RecursionError:
        return re.compile("|".join(map(re.escape, sorted(words, key=lambda w: (-len(w), w)))))


def _trie(words: list[str]) -> str:
    """The pattern of sorted ``words`` (an empty one: the trie may end here), common beginnings
    written once."""
    branches, ends, i = [], False, 0
    while i < len(words):
        if not words[i]:
            ends, i = True, i + 1
            continue
        j = i
        while j < len(words) and words[j][0] == words[i][0]:  # (sorted: a first letter's are together)
            j += 1
        common = os.path.commonprefix([words[i], words[j - 1]])  # noqa: RUF071 (characters are meant)
        branches.append(re.escape(common) + _trie([w[len(common) :] for w in words[i:j]]))
        i = j
    if not branches:
        return ""
    either = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
    return f"(?:{either})?" if ends else either


#: how much of a variant's beginning is looked for in a text: where it occurs is rare enough to
#: check each place in full
HEAD: Final = 16


def _overlap(text: str, variant: str) -> int:
    """The length of the longest end of ``text`` that begins ``variant`` (and is shorter)."""
    head = variant[:HEAD]
    at = text.find(head, max(0, len(text) - len(variant) + 1))
    while at != -1:
        if variant.startswith(text[at:]):
            return len(text) - at
        at = text.find(head, at + 1)
    for size in range(min(len(head), len(variant) - 1, len(text)), 0, -1):  # ends shorter than the head
        if text.endswith(variant[:size]):
            return size
    return 0


class SecretsDisabled(CommandRefused):
    """Secrets are off: set SHIPYARD_SECRET_KEY (make one with `shipyard secret generate-key`)."""


class SecretKeyMismatch(CommandRefused):
    """The secret key does not decrypt the stored secrets (was it rotated, or mistyped?)."""

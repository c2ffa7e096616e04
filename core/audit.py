"""The audit log's hash chain: each entry's hash covers its own fields and the hash of the
entry before it, so changing or deleting any entry breaks every link after it.

Two ends need more than links. The first chained entry links to ``GENESIS`` (nothing), so
removing the oldest entries leaves a new first entry that links to something gone. Removing
the newest entries leaves a chain that still links, only shorter, so the store also keeps a
``Checkpoint`` apart from the entries, moved with every append: how many entries the chain
held and which hash it ended on.

Pure functions: the store computes hashes as it writes, ``shipyard audit verify`` walks the
chain with ``verify`` and reports the first entry that does not fit, and why.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from core.ports import AuditEntry


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    body = {
        "at": entry.at.astimezone(UTC).isoformat(),
        "actor": entry.actor,
        "channel": entry.channel,
        "action": entry.action,
        "target": entry.target,
        "outcome": entry.outcome,
        "reason": entry.reason,
        "detail": entry.detail,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256((prev_hash + "\n" + text).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainedEntry:
    id: int
    entry: AuditEntry
    prev_hash: str
    hash: str


#: what the first chained entry links to
GENESIS = ""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where the chain ended when it was read: its newest entry's id and hash, and how many
    chained entries it held (0 and ``GENESIS``: none yet)."""

    last_id: int
    hash: str
    entries: int


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    checked: int
    problem: str = ""
    entry_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "problem": self.problem, "entry_id": self.entry_id}


def verify(entries: Iterable[ChainedEntry], checkpoint: Checkpoint | None = None) -> Verdict:
    """Walk entries in id order. Entries written before the chain existed (no hash) come first
    and are skipped; the first chained entry must link to ``GENESIS``, and every later one must
    have a hash, link to the one before and hash right. With a ``checkpoint`` (read before the
    entries), the chain must also reach the entry it names, as that entry and that many entries
    long; entries appended after it was read continue the chain like any other."""
    prev: ChainedEntry | None = None
    unhashed: ChainedEntry | None = None  # the last entry from before the chain
    checked = 0
    reached = checkpoint is None or checkpoint.entries == 0
    for item in entries:
        if prev is None and not item.hash:
            unhashed = item
            continue
        checked += 1
        if prev is None and item.prev_hash != GENESIS:
            return _broken_start(item, unhashed, checked)
        if prev is not None and not item.hash:
            return Verdict(
                False,
                checked,
                f"entry {item.id} has no hash, though the chain started before it: its hash was blanked",
                item.id,
            )
        if prev is not None and item.prev_hash != prev.hash:
            return Verdict(
                False,
                checked,
                f"entry {item.id} does not link to entry {prev.id}: an entry between them was "
                f"removed, or entry {prev.id} was altered",
                item.id,
            )
        if entry_hash(item.prev_hash, item.entry) != item.hash:
            return Verdict(False, checked, f"entry {item.id} was altered after it was written", item.id)
        if checkpoint is not None and item.id == checkpoint.last_id:
            if item.hash != checkpoint.hash or checked != checkpoint.entries:
                return Verdict(
                    False,
                    checked,
                    f"entry {item.id} is where the checkpoint says the chain ended, but not as it "
                    f"recorded it (the chain holds {checked} entries up to it, the checkpoint counts "
                    f"{checkpoint.entries}): entries were removed and the chain written again, or the "
                    "checkpoint was replaced",
                    item.id,
                )
            reached = True
        prev = item
    if not reached:
        assert checkpoint is not None
        removed = checkpoint.entries - checked
        if prev is None:
            return Verdict(
                False,
                checked,
                f"all {checkpoint.entries} chained entries were removed or had their hashes "
                f"blanked (the newest was entry {checkpoint.last_id})",
            )
        return Verdict(
            False,
            checked,
            f"the newest entries were removed: the log ends at entry {prev.id}, but the checkpoint "
            f"counts {removed} more, up to entry {checkpoint.last_id}",
            prev.id + 1,
        )
    return Verdict(True, checked)


def _broken_start(first: ChainedEntry, unhashed: ChainedEntry | None, checked: int) -> Verdict:
    """The oldest chained entry links to an entry that is not there: entries before it were
    removed, or the entry it links to had its hash blanked to pass for one written before the
    chain existed."""
    if unhashed is None:
        return Verdict(
            False,
            checked,
            f"entry {first.id} is the oldest entry but links to an earlier one: the entries "
            "before it were removed",
            first.id,
        )
    if entry_hash(unhashed.prev_hash, unhashed.entry) == first.prev_hash:
        why = f"its hash was blanked (entry {first.id} links to it)"
    else:
        why = (
            f"entry {first.id} links to an earlier chained entry, so entry {unhashed.id} was "
            f"altered and its hash blanked, or the entries between them were removed"
        )
    return Verdict(False, checked, f"entry {unhashed.id} has no hash: {why}", unhashed.id)

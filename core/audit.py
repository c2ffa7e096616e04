"""The audit log's hash chain: each entry's hash covers its own fields and the hash of the
entry before it, so changing or deleting any entry breaks every link after it.

Pure functions: the store computes hashes as it writes, ``shipyard audit verify`` walks the
chain with ``verify`` and reports the first entry that does not fit.
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


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    checked: int
    problem: str = ""
    entry_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "problem": self.problem, "entry_id": self.entry_id}


def verify(entries: Iterable[ChainedEntry]) -> Verdict:
    """Walk entries in id order. Entries written before the chain existed (empty hash) are
    skipped; once the chain starts, every entry must link to the one before and hash right."""
    prev: ChainedEntry | None = None
    checked = 0
    for item in entries:
        if not item.hash and prev is None:
            continue
        checked += 1
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
        prev = item
    return Verdict(True, checked)

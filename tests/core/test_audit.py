from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from core.audit import ChainedEntry, entry_hash, verify
from core.ports import AuditEntry

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def chain(n: int) -> list[ChainedEntry]:
    out, prev = [], ""
    for i in range(n):
        entry = AuditEntry(
            at=T0 + timedelta(seconds=i),
            actor="alice",
            channel="rest",
            action="approve_gate",
            target=f"web#{i}",
            outcome="accepted",
            detail={"comment": "ok", "n": i},
        )
        digest = entry_hash(prev, entry)
        out.append(ChainedEntry(i + 1, entry, prev, digest))
        prev = digest
    return out


def test_an_untouched_chain_verifies() -> None:
    verdict = verify(chain(5))
    assert verdict.ok and verdict.checked == 5


def test_an_altered_entry_is_reported_by_id() -> None:
    entries = chain(5)
    entries[2] = replace(entries[2], entry=replace(entries[2].entry, outcome="rejected"))
    verdict = verify(entries)
    assert not verdict.ok and verdict.entry_id == 3
    assert "entry 3 was altered" in verdict.problem


def test_a_removed_entry_breaks_the_link_of_the_next() -> None:
    entries = chain(5)
    del entries[1]
    verdict = verify(entries)
    assert not verdict.ok and verdict.entry_id == 3
    assert "does not link to entry 1" in verdict.problem


def test_rehashing_an_altered_entry_still_breaks_the_following_link() -> None:
    entries = chain(4)
    forged = replace(entries[1].entry, actor="mallory")
    entries[1] = replace(entries[1], entry=forged, hash=entry_hash(entries[1].prev_hash, forged))
    verdict = verify(entries)
    assert not verdict.ok and verdict.entry_id == 3


def test_entries_written_before_the_chain_existed_are_skipped() -> None:
    old = ChainedEntry(1, chain(1)[0].entry, "", "")
    rest = [replace(c, id=c.id + 1) for c in chain(3)]
    assert verify([old, *rest]).ok

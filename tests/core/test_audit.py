from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from core.audit import GENESIS, ChainedEntry, Checkpoint, entry_hash, verify
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


def head(entries: list[ChainedEntry]) -> Checkpoint:
    return Checkpoint(entries[-1].id, entries[-1].hash, len(entries))


def test_a_chain_that_ends_where_its_checkpoint_says_verifies() -> None:
    entries = chain(5)
    assert verify(entries, head(entries)).ok
    assert verify([], Checkpoint(0, GENESIS, 0)).ok


def test_entries_appended_after_the_checkpoint_was_read_verify() -> None:
    entries = chain(5)
    assert verify(entries, head(entries[:3])).ok


def test_removing_the_newest_entries_is_caught_by_the_checkpoint() -> None:
    entries = chain(6)
    verdict = verify(entries[:3], head(entries))
    assert not verdict.ok and verdict.entry_id == 4
    assert "the log ends at entry 3, but the checkpoint counts 3 more, up to entry 6" in verdict.problem
    gone = verify([], head(entries))
    assert not gone.ok and gone.entry_id is None and "all 6 chained entries" in gone.problem


def test_a_chain_rewritten_after_removals_disagrees_with_its_checkpoint() -> None:
    entries = chain(6)
    rewritten = [replace(c, id=c.id + 3) for c in chain(3)]  # ids 4-6: a fresh, valid chain
    verdict = verify(rewritten, head(entries))
    assert not verdict.ok and verdict.entry_id == 6
    assert "the chain holds 3 entries up to it, the checkpoint counts 6" in verdict.problem
    verdict = verify(chain(6), Checkpoint(6, entries[-1].hash, 5))
    assert not verdict.ok and verdict.entry_id == 6


def test_removing_the_oldest_entry_leaves_a_first_entry_that_links_to_nothing() -> None:
    verdict = verify(chain(4)[1:])
    assert not verdict.ok and verdict.entry_id == 2
    assert "the entries before it were removed" in verdict.problem


def test_blanking_a_hash_is_named_at_the_blanked_entry() -> None:
    entries = chain(4)
    entries[2] = replace(entries[2], hash="")
    verdict = verify(entries)
    assert not verdict.ok and verdict.entry_id == 3 and "has no hash" in verdict.problem

    entries = chain(4)  # the first, altered and blanked, would pass for one from before the chain
    entries[0] = replace(entries[0], hash="", entry=replace(entries[0].entry, actor="mallory"))
    verdict = verify(entries)
    assert not verdict.ok and verdict.entry_id == 1 and "altered and its hash blanked" in verdict.problem

"""The artifact registry on real SQLite and PostgreSQL: a version names one content forever,
repeats are harmless, concurrent registrations of one version have exactly one winner, and
marking bad happens once and is audited."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from core.artifacts import AlreadyBad, Artifact, ArtifactSpec, DigestConflict, make_spec
from core.errors import InvalidInput, NotFound
from storage import artifacts as registry
from storage.artifacts import ArtifactStore
from storage.store import SqlStore

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def spec(name: str = "web", version: str = "1.4.2", n: int = 1, **metadata: str) -> ArtifactSpec:
    return make_spec(name, version, digest(n), f"oci://registry.example.com/{name}:{version}", metadata)


@pytest.fixture
def store(db_url: str, stores: list[SqlStore]) -> SqlStore:
    opened = SqlStore(db_url, pool_size=10)
    stores.append(opened)
    return opened


@pytest.fixture
def artifact_store(store: SqlStore) -> ArtifactStore:
    return ArtifactStore(store)


def test_a_registered_artifact_reads_back_by_id_and_by_name_at_version(
    store: SqlStore, artifact_store: ArtifactStore
) -> None:
    made, created = artifact_store.register(
        spec(commit="abc1234"), by="ci", now=T0, run_id="r1", pipeline="web"
    )
    assert created
    for ref in (made.id, made.id.replace("-", ""), "web@1.4.2"):
        found = artifact_store.get(ref)
        assert found == made, ref
    assert made.metadata == {"commit": "abc1234"} and made.created_at == T0
    assert (made.run_id, made.pipeline, made.created_by, made.bad) == ("r1", "web", "ci", False)
    assert artifact_store.get("web@1.4.3") is None and artifact_store.get("nothing") is None
    with store.reading() as tx:
        assert registry.of_run(tx.conn, "r1") == [made] and registry.of_run(tx.conn, "r2") == []


def test_registering_the_same_version_and_digest_again_is_a_harmless_repeat(
    artifact_store: ArtifactStore,
) -> None:
    first, _ = artifact_store.register(spec(), by="ci", now=T0)
    again = make_spec("web", "1.4.2", digest(1).upper().replace("SHA256", "sha256"), "s3://mirror/web.tgz")
    repeat, created = artifact_store.register(again, by="someone-else", now=T0 + timedelta(hours=1))
    assert not created
    assert repeat == first  # the registered record stands: its uri, creator and time
    assert artifact_store.list().items == [first]


def test_the_same_version_with_another_digest_is_refused_naming_the_registered_one(
    artifact_store: ArtifactStore,
) -> None:
    first, _ = artifact_store.register(spec(n=1), by="ci", now=T0)
    with pytest.raises(DigestConflict) as refused:
        artifact_store.register(spec(n=2), by="ci", now=T0 + timedelta(minutes=1))
    assert refused.value.kind == "conflict"
    assert digest(1) in refused.value.message and digest(2) in refused.value.message
    assert refused.value.registered == first
    assert artifact_store.get("web@1.4.2") == first


def test_register_joins_the_callers_transaction(store: SqlStore, artifact_store: ArtifactStore) -> None:
    """The engine registers inside its own transaction: nothing stays if that rolls back."""
    with pytest.raises(RuntimeError), store.transaction() as tx:
        registry.register(tx, spec(), run_id="r1", pipeline="web", by="web#1", now=T0)
        assert registry.find(tx.conn, "web@1.4.2") is not None
        raise RuntimeError("the command failed later")
    assert artifact_store.get("web@1.4.2") is None


def test_concurrent_registrations_with_different_digests_have_exactly_one_winner(
    artifact_store: ArtifactStore,
) -> None:
    n = 12
    start = threading.Barrier(n)

    def attempt(i: int) -> Artifact | DigestConflict:
        start.wait()
        try:
            return artifact_store.register(spec(n=i), by=f"ci{i}", now=T0)[0]
        except DigestConflict as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        outcomes = list(pool.map(attempt, range(n)))
    winners = [o for o in outcomes if isinstance(o, Artifact)]
    assert len(winners) == 1, outcomes
    stored = artifact_store.get("web@1.4.2")
    assert stored == winners[0]
    refused = [o for o in outcomes if isinstance(o, DigestConflict)]
    assert len(refused) == n - 1 and all(r.registered.digest == stored.digest for r in refused)


@pytest.fixture
def pg_store(pg_url: str, stores: list[SqlStore]) -> Iterator[SqlStore]:
    opened = SqlStore(pg_url)
    stores.append(opened)
    yield opened


def _waiting_on_locks(store: SqlStore) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar_one()
        )


@pytest.mark.postgres
def test_a_registration_that_waited_for_a_concurrent_one_reads_the_winner(pg_store: SqlStore) -> None:
    """PostgreSQL: the second insert waits for the first transaction; when that commits, the
    second sees the winner, and its own transaction stays usable (the insert ran in a savepoint)."""
    artifact_store = ArtifactStore(pg_store)
    result: list[tuple[Artifact, bool]] = []

    def second() -> None:
        with pg_store.transaction() as tx:
            result.append(registry.register(tx, spec(n=1), run_id=None, pipeline=None, by="b", now=T0))
            result.append(
                registry.register(tx, spec(version="1.4.3"), run_id=None, pipeline=None, by="b", now=T0)
            )

    with pg_store.transaction() as tx:
        registry.register(tx, spec(n=1), run_id=None, pipeline=None, by="a", now=T0)
        waiter = threading.Thread(target=second)
        waiter.start()
        deadline = time.monotonic() + 10
        while _waiting_on_locks(pg_store) == 0:
            assert time.monotonic() < deadline, "the second registration never waited"
            time.sleep(0.01)
    waiter.join(10)
    (existing, created), (other, other_created) = result
    assert not created and existing.created_by == "a"
    assert other_created and artifact_store.get("web@1.4.3") == other


def _fill(artifact_store: ArtifactStore) -> list[Artifact]:
    """Nine artifacts of two names; two share a created_at (the id breaks the tie)."""
    made = []
    for i in range(9):
        name = "web" if i % 3 else "api"
        at = T0 + timedelta(minutes=min(i, 7))
        made.append(artifact_store.register(spec(name, f"1.{i}.0", n=i), by="ci", now=at)[0])
    return sorted(made, key=lambda a: (a.created_at, a.id), reverse=True)


def test_lists_page_newest_first_without_gaps_or_repeats(artifact_store: ArtifactStore) -> None:
    newest_first = _fill(artifact_store)
    seen: list[Artifact] = []
    cursor = None
    while True:
        page = artifact_store.list(cursor=cursor, limit=2)
        seen += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == newest_first
    web = artifact_store.list(name="web", limit=100).items
    assert (
        web == [a for a in newest_first if a.name == "web"]
        and artifact_store.list(name="web", limit=100).next_cursor is None
    )
    assert artifact_store.versions_of("api") == [a for a in newest_first if a.name == "api"]
    assert artifact_store.names() == ["api", "web"]


def test_a_malformed_cursor_is_invalid_input(artifact_store: ArtifactStore) -> None:
    with pytest.raises(InvalidInput):
        artifact_store.list(cursor="yesterday")


def test_marking_bad_happens_once_and_says_who_did_it_first(
    store: SqlStore, artifact_store: ArtifactStore
) -> None:
    made, _ = artifact_store.register(spec(), by="ci", now=T0)
    at = T0 + timedelta(hours=2)
    marked = artifact_store.mark_bad(
        "web@1.4.2", "  leaks memory under load ", by="bob", now=at, channel="rest"
    )
    assert (marked.bad, marked.bad_reason, marked.bad_by, marked.bad_at) == (
        True,
        "leaks memory under load",
        "bob",
        at,
    )
    assert artifact_store.get(made.id) == marked
    with pytest.raises(AlreadyBad) as twice:
        artifact_store.mark_bad(made.id, "again", by="carol", now=at + timedelta(minutes=5), channel="slack")
    assert "already marked bad by bob" in twice.value.message and "leaks memory" in twice.value.message
    assert artifact_store.get(made.id) == marked  # the first mark stands
    with pytest.raises(NotFound):
        artifact_store.mark_bad("web@9.9.9", "nope", by="bob", now=at, channel="rest")
    with pytest.raises(InvalidInput):
        artifact_store.mark_bad("web@1.4.2", "   ", by="bob", now=at, channel="rest")
    entries = [e for e in store.audit_entries(10) if e.action == "mark_artifact_bad"]
    assert [(e.actor, e.outcome, e.target) for e in reversed(entries)] == [
        ("bob", "accepted", "artifact web@1.4.2"),
        ("carol", "rejected", f"artifact {made.id}"),
        ("bob", "rejected", "artifact web@9.9.9"),
        ("bob", "rejected", "artifact web@1.4.2"),
    ]
    accepted = entries[-1]
    assert accepted.reason == "leaks memory under load" and accepted.detail["digest"] == digest(1)


def test_concurrent_marks_have_one_winner(artifact_store: ArtifactStore) -> None:
    artifact_store.register(spec(), by="ci", now=T0)
    n = 8
    start = threading.Barrier(n)

    def attempt(i: int) -> str:
        start.wait()
        try:
            artifact_store.mark_bad("web@1.4.2", f"reason {i}", by=f"p{i}", now=T0, channel="rest")
            return "marked"
        except AlreadyBad:
            return "refused"

    with ThreadPoolExecutor(n) as pool:
        outcomes = list(pool.map(attempt, range(n)))
    assert sorted(outcomes) == ["marked"] + ["refused"] * (n - 1)
    final = artifact_store.get("web@1.4.2")
    assert final is not None and final.bad and final.bad_by is not None
    assert final.bad_reason == f"reason {final.bad_by[1:]}"  # the winner's reason, not a mix

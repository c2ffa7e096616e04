"""What DORA's four keys read, on real SQLite and PostgreSQL: one environment's deployments in
the window, in the order recorded, with the artifacts marked bad since."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.artifacts import make_spec
from core.dora import four_keys
from core.ports import Deployment
from storage.artifacts import ArtifactStore
from storage.reads import Reads
from storage.store import SqlStore

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str, stores: list[SqlStore]) -> SqlStore:
    opened = SqlStore(db_url, pool_size=4)
    stores.append(opened)
    return opened


def deployment(env: str, at: datetime, status: str = "succeeded", **kw: str | None) -> Deployment:
    return Deployment(
        environment=env,
        pipeline=kw.get("pipeline") or "web",
        run_id=f"r{at.timestamp():.0f}{env}",
        run_number=1,
        stage="deploy",
        status=status,
        revision=None,
        parameters={},
        triggered_by="alice",
        started_at=at - timedelta(minutes=5),
        finished_at=at,
        artifact_id=kw.get("artifact_id"),
        kind=kw.get("kind") or "deploy",
        verification=kw.get("verification"),
    )


def test_the_window_of_one_environment_with_bad_artifacts(store: SqlStore) -> None:
    artifacts = ArtifactStore(store)
    good, _ = artifacts.register(
        make_spec("web", "1.0.0", f"sha256:{1:064x}", "oci://r/web:1"), by="ci", now=T0
    )
    bad, _ = artifacts.register(
        make_spec("web", "1.1.0", f"sha256:{2:064x}", "oci://r/web:2"), by="ci", now=T0
    )
    rows = [
        deployment("production", T0 - timedelta(days=40)),  # before the window
        deployment("production", T0, artifact_id=good.id),
        deployment("production", T0 + timedelta(hours=1), "failed", verification="failed"),
        deployment("staging", T0 + timedelta(hours=2), "failed"),  # another environment
        deployment("production", T0 + timedelta(hours=3), artifact_id=bad.id),
        deployment("production", T0 + timedelta(hours=5), pipeline="api"),
    ]
    with store.transaction() as tx:
        for row in rows:
            tx.record_deployment(row)
    artifacts.mark_bad("web@1.1.0", "leaks memory", by="bob", now=T0 + timedelta(hours=4), channel="rest")

    since, until = T0 - timedelta(days=1), T0 + timedelta(days=29)
    facts = Reads(store).dora_facts("production", since, until)

    assert [(f.finished_at, f.status, f.verification, f.marked_bad, f.pipeline) for f in facts] == [
        (T0, "succeeded", None, False, "web"),
        (T0 + timedelta(hours=1), "failed", "failed", False, "web"),
        (T0 + timedelta(hours=3), "succeeded", None, True, "web"),
        (T0 + timedelta(hours=5), "succeeded", None, False, "api"),
    ]
    assert all(f.revision_time is None for f in facts)  # not recorded: unknown, not guessed
    keys = four_keys("production", facts, since, until)
    # 3 successful changes; failures: the failed verification and the bad artifact (2 of 4);
    # restored once, from 11:00 to 15:00 (api's deployment)
    assert keys.deployment_frequency.deployments == 3
    assert (keys.change_failure_rate.failures, keys.change_failure_rate.deployments) == (2, 4)
    assert keys.time_to_restore.median_s == 4 * 3600
    assert (keys.lead_time.deployments, keys.lead_time.unknown) == (0, 3)

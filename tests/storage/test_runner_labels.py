"""Label routing and the runner registry on real SQLite and PostgreSQL: a claim hands a runner
only jobs whose labels it all carries, and nothing while it is drained; competing runners never
claim one job twice; an environment's labels are added whatever the pipeline says; a bad label
is refused naming its field; migration 0022 goes down and up again."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from core.commands import TriggerRun
from core.definition import parse_pipeline
from core.environments import Environments
from core.errors import CommandRefused, DefinitionError
from core.runtime.service import Service
from storage.runners import RunnerRegistry
from storage.store import SqlStore
from tests.helpers import ALICE
from tests.storage.test_migration_0018 import _migrate, _tables

MakeService = Callable[..., Service]
AT = datetime(2026, 12, 10, 9, 0, tzinfo=UTC)
GPU = """
name: gpu
stages:
  - name: fit
    runs_on: [linux]
    jobs:
      - {name: a, runs_on: [gpu], run: "true"}
      - {name: b, run: "true"}
"""


def test_a_claim_hands_out_only_jobs_the_runners_labels_satisfy(
    db_url: str, make_service: MakeService
) -> None:
    svc = make_service(db_url, GPU)
    svc.handle(TriggerRun(pipeline="gpu", actor=ALICE))
    assert svc.claim_jobs("bare", 5, 30) == []  # both need linux
    assert svc.claim_jobs("cpu", 5, 30, ["linux", "x86"])[0].name == "b"
    assert svc.claim_jobs("cpu", 5, 30, ["linux", "x86"]) == []  # a needs gpu as well
    assert [a.name for a in svc.claim_jobs("gpu", 5, 30, ["gpu", "linux"])] == ["a"]


def test_a_drained_runner_is_handed_nothing_until_resumed(db_url: str, make_service: MakeService) -> None:
    svc = make_service(db_url, GPU)
    svc.handle(TriggerRun(pipeline="gpu", actor=ALICE))
    assert isinstance(svc.store, SqlStore)
    registry = RunnerRegistry(svc.store)
    assert registry.seen("eu-1", labels=["linux"], version="1", capacity=2, lease_s=30, now=AT) is False
    assert registry.drain("eu-1", "ops", AT, "test").draining
    assert registry.seen("eu-1", labels=["linux"], version="1", capacity=2, lease_s=30, now=AT) is True
    assert svc.claim_jobs("eu-1", 5, 30, ["linux"]) == []
    assert svc.claim_jobs("eu-2", 5, 30, ["linux"])[0].name == "b"  # another runner is not affected
    with pytest.raises(CommandRefused, match="eu-2 holds 1 job"):
        registry.seen("eu-2", labels=["linux"], version="1", capacity=2, lease_s=30, now=AT)
        registry.delete("eu-2", "ops", AT + timedelta(hours=1), "test")
    with pytest.raises(CommandRefused, match="eu-1 is online"):
        registry.resume("eu-1", "ops", AT, "test")
        registry.delete("eu-1", "ops", AT + timedelta(seconds=1), "test")
    later = AT + timedelta(minutes=5)
    assert registry.delete("eu-1", "ops", later, "test").name == "eu-1"
    assert [r.name for r in registry.all()] == ["eu-2"]
    assert registry.get("eu-2").running == 1 and registry.get("eu-2").state(AT) == "online"
    assert registry.get("eu-2").state(later) == "offline"


def test_competing_runners_with_the_same_labels_never_claim_one_job_twice(
    db_url: str, make_service: MakeService
) -> None:
    svc = make_service(db_url, GPU)
    for _ in range(8):
        svc.handle(TriggerRun(pipeline="gpu", actor=ALICE))
    services = [make_service(db_url) for _ in range(4)]
    claimed: list[str] = []
    lock = threading.Lock()

    def claim(s: Service, name: str) -> None:
        while batch := s.claim_jobs(name, 2, 30, ["gpu", "linux"]):
            with lock:
                claimed.extend(a.job_id for a in batch)

    threads = [threading.Thread(target=claim, args=(s, f"r{i}")) for i, s in enumerate(services)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 16 and len(set(claimed)) == 16


def test_an_environments_labels_are_added_whatever_the_pipeline_says(sqlite_url: str) -> None:
    text = """
name: web
stages:
  - name: build
    jobs: [{name: compile, run: "true"}]
  - name: deploy
    environment: production
    runs_on: []
    jobs: [{name: ship, runs_on: [], run: "true"}]
"""
    store = SqlStore(sqlite_url)
    try:
        environments = Environments.model_validate({"production": {"runner_labels": ["prod-eu"]}})
        svc = Service(store, environments=environments)
        svc.register_pipeline(parse_pipeline(text), text)
        state = svc.handle(TriggerRun(pipeline="web", actor=ALICE)).state
        assert state is not None
        assert [(j.name, j.labels) for j in state.jobs] == [("compile", ()), ("ship", ("prod-eu",))]
    finally:
        store.dispose()


def test_a_bad_label_is_refused_naming_its_field() -> None:
    named = r"stages\[0\]\.jobs\[0\]\.runs_on: 'GPU!' is not a runner label"
    with pytest.raises(DefinitionError, match=named):
        parse_pipeline(
            "name: x\nstages:\n  - name: s\n    jobs: [{name: j, runs_on: ['GPU!'], run: 'true'}]\n"
        )
    with pytest.raises(ValueError, match="'Prod EU' is not a runner label"):
        Environments.model_validate({"production": {"runner_labels": ["Prod EU"]}})


def test_pipelines_without_labels_keep_their_digest() -> None:
    plain = parse_pipeline("name: x\nstages:\n  - name: s\n    jobs: [{name: j, run: 'true'}]\n")
    empty = parse_pipeline(
        "name: x\nstages:\n  - name: s\n    runs_on: []\n    jobs: [{name: j, run: 'true'}]\n"
    )
    labelled = parse_pipeline(
        "name: x\nstages:\n  - name: s\n    runs_on: [a]\n    jobs: [{name: j, run: 'true'}]\n"
    )
    assert plain.digest() == empty.digest() != labelled.digest()
    assert "runs_on" not in plain.model_dump_json(exclude_defaults=True)


def test_migration_0022_round_trip(db_url: str) -> None:
    SqlStore(db_url).dispose()  # (the schema at head)
    _migrate(db_url, "0021", down=True)
    assert "runner" not in _tables(db_url)
    _migrate(db_url, "head")
    assert "runner" in _tables(db_url)
    store = SqlStore(db_url)
    try:
        registry = RunnerRegistry(store)
        registry.seen("eu-1", labels=["b", "a", "a"], version="1", capacity=2, lease_s=30, now=AT)
        assert registry.get("eu-1").labels == ("a", "b")
    finally:
        store.dispose()

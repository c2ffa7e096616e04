"""What pipeline files say about webhooks: push triggers and external gates, and which engine
events become which webhook event types."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime

import pytest

from bot.webhooks.incoming import Ignored, NotAPush, Push, match_push, push_time
from bot.webhooks.messages import types_of
from core.definition import PipelineDef, parse_pipeline
from core.errors import DefinitionError
from core.events import Event

PUSHED = """
name: web
parameters:
  - {name: sha, default: ""}
  - {name: where, default: ""}
  - {name: dry_run, type: boolean, default: false}
triggers:
  - schedule: {cron: "0 2 * * *"}
  - push: {branches: [main], revision_parameter: sha, parameters: {dry_run: true}}
  - push: {branches: ["release/*"], branch_parameter: where}
stages:
  - name: scan
    gate: {type: external, timeout: 2h}
    jobs: [{name: ship, run: "true"}]
"""


def parse(text: str) -> PipelineDef:
    return parse_pipeline(textwrap.dedent(text))


def test_push_triggers_sit_beside_schedules_in_the_file() -> None:
    web = parse(PUSHED)
    assert [t.schedule.cron for t in web.triggers] == ["0 2 * * *"]  # what the scheduler reads
    assert [p.branches for p in web.push] == [["main"], ["release/*"]]
    again = PipelineDef.model_validate(web.model_dump(mode="json"))  # as stored and read back
    assert again == web and again.digest() == web.digest()
    assert web.stages[0].gate is not None and web.stages[0].gate.type == "external"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("gate: {type: external}", "an external gate needs `timeout`"),
        ("gate: {type: external, timeout: 1h, run: scan}", "takes no `run` or `approvers`"),
        ("gate: {type: external, timeout: 1h, approvers: [bob]}", "takes no `run` or `approvers`"),
    ],
)
def test_external_gates_need_a_timeout_and_nothing_else(change: str, problem: str) -> None:
    text = PUSHED.replace("gate: {type: external, timeout: 2h}", change)
    with pytest.raises(DefinitionError) as caught:
        parse(text)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ("{branches: []}", "branches"),
        ("{branches: [main], revision_parameter: commit}", "'commit' is not a parameter"),
        ("{branches: [main], parameters: {colour: red}}", "'colour' is not a parameter"),
        ("{branches: [main], tags: [v1]}", "unknown field"),
    ],
)
def test_bad_push_rules_are_named(rule: str, problem: str) -> None:
    text = PUSHED.replace('{branches: ["release/*"], branch_parameter: where}', rule)
    with pytest.raises(DefinitionError) as caught:
        parse(text)
    assert problem in str(caught.value)


def test_a_push_matches_the_first_rule_naming_its_branch() -> None:
    web = parse(PUSHED)
    sha = "f" * 40
    assert match_push(web, {"ref": "refs/heads/main", "after": sha}) == Push(
        "main", sha, {"dry_run": "true", "sha": sha}
    )
    assert match_push(web, {"ref": "refs/heads/release/2.0", "after": sha}) == Push(
        "release/2.0", sha, {"where": "release/2.0"}
    )
    ignored = match_push(web, {"ref": "refs/heads/mainline", "after": sha})
    assert isinstance(ignored, Ignored) and "branches: main, release/*" in ignored.reason
    with pytest.raises(NotAPush):
        match_push(web, {"ref": "refs/heads/main", "after": "HEAD"})
    with pytest.raises(NotAPush):
        match_push(web, ["not", "an", "object"])


@pytest.mark.parametrize(
    ("head_commit", "committed_at"),
    [
        ({"timestamp": "2026-11-26T12:00:00-08:00"}, datetime(2026, 11, 26, 20, 0, tzinfo=UTC)),
        ({"timestamp": "2026-11-26T20:00:00Z"}, datetime(2026, 11, 26, 20, 0, tzinfo=UTC)),
        ({"timestamp": "2026-11-26T20:00:00"}, None),  # no offset: unknown, not guessed
        ({"timestamp": "yesterday"}, None),
        # in range as written, out of the years a datetime holds in UTC: unknown, not a 500
        ({"timestamp": "0001-01-01T00:00:00+14:00"}, None),
        ({"timestamp": "9999-12-31T23:59:59-14:00"}, None),
        (None, None),
    ],
)
def test_a_push_carries_its_head_commits_time_when_it_reads_as_one(
    head_commit: dict[str, str] | None, committed_at: datetime | None
) -> None:
    sha = "f" * 40
    push = match_push(parse(PUSHED), {"ref": "refs/heads/main", "after": sha, "head_commit": head_commit})
    assert isinstance(push, Push) and push.committed_at == committed_at


def _event(subject: str, before: str | None, to: str | None, name: str = "") -> Event:
    return Event(
        name=name or f"{subject}.{to}",
        run_id="r",
        subject=subject,
        subject_id="r.x",
        at=datetime(2026, 1, 1, tzinfo=UTC),
        from_status=before,
        to_status=to,
    )


@pytest.mark.parametrize(
    ("event", "types"),
    [
        (_event("run", "pending", "running"), ["run.started"]),
        (_event("run", "queued", "running"), ["run.started"]),
        (_event("run", "waiting", "running"), []),
        (_event("run", "running", "succeeded"), ["run.finished"]),
        (_event("run", "pending", "canceled"), ["run.finished"]),
        (_event("stage", "running", "succeeded"), ["stage.finished", "deployment.finished"]),
        (_event("stage", "running", "partial"), ["stage.finished", "deployment.finished"]),
        (_event("stage", "waiting", "failed"), ["stage.finished"]),  # failed at its gate: nothing deployed
        (_event("stage", "pending", "skipped"), []),
        (_event("gate", "pending", "open"), ["gate.waiting"]),
        (_event("gate", "open", "approved"), ["gate.decided"]),
        (_event("gate", "open", "timed_out"), ["gate.decided"]),
        (_event("gate", "pending", "skipped"), []),
        (_event("gate", None, None, "gate.approval_added"), []),
        (_event("job", "running", "failed"), []),
    ],
)
def test_engine_events_map_to_webhook_event_types(event: Event, types: list[str]) -> None:
    assert types_of(event) == types


@pytest.mark.parametrize(
    ("pushed_at", "read"),
    [
        (1764158400, datetime(2025, 11, 26, 12, 0, tzinfo=UTC)),  # a push event's Unix time
        (1764158400.5, datetime(2025, 11, 26, 12, 0, 0, 500000, tzinfo=UTC)),
        ("2025-11-26T04:00:00-08:00", datetime(2025, 11, 26, 12, 0, tzinfo=UTC)),  # other events' text
        ("2025-11-26T12:00:00Z", datetime(2025, 11, 26, 12, 0, tzinfo=UTC)),
        ("2025-11-26T12:00:00", None),  # no offset: unknown, never guessed
        ("9999-12-31T23:59:59-14:00", None),  # past the years a datetime holds in UTC
        (10**20, None),
        (float("nan"), None),
        (True, None),
        (None, None),
        ("yesterday", None),
    ],
)
def test_when_a_push_was_made_is_read_from_its_signed_repository_pushed_at(
    pushed_at: object, read: object
) -> None:
    assert push_time({"repository": {"pushed_at": pushed_at}}) == read
    assert push_time({"repository": "acme/web"}) is None and push_time({}) is None

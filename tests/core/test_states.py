"""Every transition table: what ``check`` allows, how it explains a refusal, and the docs."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import pytest

from core import states
from core.errors import IllegalTransition
from core.locks import TRANSITIONS as LOCK_ACTIONS
from core.states import JobStatus, RunStatus, check

DOCS = Path(__file__).resolve().parents[2] / "docs" / "states.md"

ENUMS: dict[str, type[StrEnum]] = dict(states.ENUMS)
#: where each resource starts (the status its row is inserted with)
INITIAL = {
    "run": "pending",
    "stage": "pending",
    "job": "pending",
    "gate": "pending",
    "rollout": "pending",
    "lock": "free",
    "artifact": "registered",
    "webhook": "active",
    "delivery": "pending",
    "slack_post": "sending",
}

ALL_PAIRS = [(kind, old, new) for kind, enum in ENUMS.items() for old in enum for new in enum]
ALLOWED = [p for p in ALL_PAIRS if p[2] in states.TABLES[p[0]][p[1]]]
REFUSED = [p for p in ALL_PAIRS if p[2] not in states.TABLES[p[0]][p[1]]]


def _id(pair: tuple[str, StrEnum, StrEnum]) -> str:
    kind, old, new = pair
    return f"{kind}:{old}->{new}"


def refusal(kind: str, old: str, new: str, ident: str = "x1") -> str:
    with pytest.raises(IllegalTransition) as info:
        check(kind, ident, old, new)
    return info.value.message


# -- the tables are complete ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ENUMS)
def test_every_status_has_a_row_and_every_target_is_a_status(kind: str) -> None:
    assert set(states.TABLES) == set(ENUMS) == set(INITIAL) == set(states.TITLES)
    table = states.TABLES[kind]
    assert set(table) == set(ENUMS[kind])
    for targets in table.values():
        assert targets <= set(ENUMS[kind])


@pytest.mark.parametrize("kind", ENUMS)
def test_every_status_is_reachable_from_the_initial_one(kind: str) -> None:
    table = states.TABLES[kind]
    seen, todo = {INITIAL[kind]}, [INITIAL[kind]]
    while todo:
        for new in table[todo.pop()]:
            if new not in seen:
                seen.add(new)
                todo.append(new)
    assert seen == set(ENUMS[kind])


# -- every pair, allowed or refused -----------------------------------------------------------


def test_the_pair_lists_cover_every_pair_of_every_table() -> None:
    assert len(ALL_PAIRS) == 9 * 9 + 11 * 11 + 9 * 9 + 7 * 7 + 8 * 8 + 3 * 3 + 2 * 2 + 3 * 3 + 4 * 4 + 4 * 4
    assert len(ALLOWED) + len(REFUSED) == len(ALL_PAIRS)
    assert len(ALLOWED) == sum(len(t) for table in states.TABLES.values() for t in table.values())


@pytest.mark.parametrize("pair", ALLOWED, ids=_id)
def test_allowed_transition_passes_check(pair: tuple[str, str, str]) -> None:
    kind, old, new = pair
    assert states.can_transition(kind, old, new)
    check(kind, "x1", old, new)  # does not raise


@pytest.mark.parametrize("pair", REFUSED, ids=_id)
def test_refused_transition_names_kind_id_statuses_and_reason(pair: tuple[str, str, str]) -> None:
    kind, old, new = pair
    assert not states.can_transition(kind, old, new)
    message = refusal(kind, old, new, ident="web-42.s1")
    assert message.startswith(f"{kind} web-42.s1: ")
    assert f"{old} → {new}" in message
    head, _, reason = message.partition(" refused: ")
    assert head == f"{kind} web-42.s1: {old} → {new}"
    assert reason.strip(), message
    if not states.TABLES[kind][old]:
        assert reason == f"{old} is final"
    elif kind == "run" and old in ("pending", "queued") and new in ("succeeded", "failed"):
        assert reason == "a run cannot finish without having run"
    else:
        allowed = sorted(states.TABLES[kind][old])
        assert reason == f"from {old} a {kind} may only go to {', '.join(allowed)}"


# -- the rules people rely on -----------------------------------------------------------------

FINAL = {
    "run": {"succeeded", "failed", "canceled"},
    "stage": {"succeeded", "partial", "failed", "canceled", "skipped"},
    "job": {"succeeded", "canceled", "skipped"},
    "gate": {"approved", "rejected", "timed_out", "canceled", "skipped"},
    "rollout": {"promoted", "aborted", "failed"},
    "lock": set(),
    "artifact": {"bad"},
    "webhook": {"deleted"},
    "delivery": {"delivered", "failed"},
    "slack_post": {"sent", "gave_up"},
}


@pytest.mark.parametrize("kind", ENUMS)
def test_final_statuses_are_exactly_the_expected_ones(kind: str) -> None:
    assert {str(s) for s, targets in states.TABLES[kind].items() if not targets} == FINAL[kind]


@pytest.mark.parametrize(
    ("kind", "old"), [(kind, old) for kind, finals in FINAL.items() for old in sorted(finals)]
)
def test_final_status_has_no_way_out(kind: str, old: str) -> None:
    for new in ENUMS[kind]:
        assert not states.can_transition(kind, old, new)
        assert refusal(kind, old, new).endswith(f"refused: {old} is final")


def test_terminal_and_done_sets_agree_with_the_tables() -> None:
    assert states.RUN_TERMINAL == FINAL["run"]
    assert states.RUN_ACTIVE == set(RunStatus) - FINAL["run"]
    assert states.STAGE_DONE == FINAL["stage"]
    assert states.GATE_DONE == FINAL["gate"]
    # a failed job is done for its stage, but may still go back to queued for a retry
    assert states.JOB_FAILURES == {"failed", "timed_out", "lost"}
    assert states.JOB_DONE == FINAL["job"] | states.JOB_FAILURES


@pytest.mark.parametrize("failure", ["failed", "timed_out", "lost"])
def test_a_failed_job_can_only_be_retried(failure: str) -> None:
    assert states.JOB_TRANSITIONS[JobStatus(failure)] == {JobStatus.QUEUED}


@pytest.mark.parametrize(
    ("old", "new"), [("pending", "succeeded"), ("pending", "failed"), ("queued", "succeeded")]
)
def test_a_run_cannot_finish_without_having_run(old: str, new: str) -> None:
    message = refusal("run", old, new, ident="web#7")
    assert message == f"run web#7: {old} → {new} refused: a run cannot finish without having run"


@pytest.mark.parametrize(
    ("kind", "old", "new", "allowed"),
    [
        ("run", "pending", "canceled", True),  # cancel before anything ran
        ("run", "paused", "succeeded", True),  # the last jobs finished while paused
        ("run", "waiting", "succeeded", False),  # a gate must clear before the run can finish
        ("stage", "running", "partial", True),  # only allow_failure jobs failed
        ("stage", "pending", "partial", False),
        ("stage", "waiting", "failed", True),  # gate rejected or timed out
        ("job", "queued", "pending", True),  # the run was paused before a claim
        ("job", "running", "queued", True),  # interrupted by a clean shutdown
        ("job", "pending", "running", False),  # must be queued before a runner claims it
        ("job", "succeeded", "queued", False),  # a success is never retried
        ("gate", "pending", "approved", False),  # cannot approve a gate that is not open
        ("gate", "open", "approved", True),
    ],
)
def test_key_rules(kind: str, old: str, new: str, allowed: bool) -> None:
    assert states.can_transition(kind, old, new) is allowed


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("bogus", "running", "'bogus' is not a run status"),
        ("running", "exploded", "'exploded' is not a run status"),
    ],
)
def test_unknown_status_is_refused_with_a_reason(old: str, new: str, reason: str) -> None:
    assert refusal("run", old, new, ident="r9") == f"run r9: {old} → {new} refused: {reason}"


def test_every_lock_action_moves_along_the_lock_table() -> None:
    for allowed, to in LOCK_ACTIONS.values():
        for old in allowed:
            assert states.can_transition("lock", old, to), (old, to)


# -- the document -----------------------------------------------------------------------------


def test_render_lists_every_transition_and_every_final_status() -> None:
    text = states.render_markdown()
    for kind, old, new in ALLOWED:
        assert f"| `{old}` | `{new}` |" in text, (kind, old, new)
    for kind, finals in FINAL.items():
        assert f"### {states.TITLES[kind]}" in text
        for old in finals:
            assert f"| `{old}` | *(final)* | |" in text
    assert "| `queued` | `pending` | the run was paused before a runner claimed the job |" in text


def test_docs_states_md_holds_the_rendered_tables_verbatim() -> None:
    text = DOCS.read_text(encoding="utf-8")
    rendered = states.render_markdown()
    assert "## Transition tables" in text
    tables = text.split("## Transition tables", 1)[1]
    assert rendered in tables, "docs/states.md is stale: run `python -m core.states` and paste its output"
    assert tables.strip() == rendered.strip(), "docs/states.md has extra text after the tables"

"""Every state machine in Shipyard: one transition table per resource that has states.

Runs, stages, jobs, gates and a stage's rollout, and beside them environment locks, artifacts, webhook
subscriptions and deliveries, and the Slack notifier's thread posts. Each table has the same
shape (a status enum mapped to the statuses it may move to). Every status change is checked
here (``check``, raising ``IllegalTransition``) and then written to the database as a
conditional update on the expected old status (``storage.transition.move`` for single rows,
the store's batched updates for a run's parts), so the table is the single authority on what
may happen. ``docs/states.md`` is rendered from these tables
(``python -m core.states``) and a test keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

from core.errors import IllegalTransition


class RunStatus(StrEnum):
    PENDING = "pending"  #: created, not started yet
    QUEUED = "queued"  #: its next stage waits for its environment (busy, locked, frozen, or others first)
    RUNNING = "running"  #: a stage is executing
    WAITING = "waiting"  #: a gate is open and must be cleared before the next stage
    PAUSED = "paused"  #: running jobs finish, nothing new starts until resumed
    VERIFYING = "verifying"  #: a deploy stage succeeded; its environment's checks are measured
    SUCCEEDED = "succeeded"  #: every stage succeeded (possibly with warnings)
    FAILED = "failed"  #: a required job failed, or a gate was rejected or timed out
    CANCELED = "canceled"  #: stopped on request; running jobs were killed


class StageStatus(StrEnum):
    PENDING = "pending"  #: an earlier stage is still going
    WAITING = "waiting"  #: its gate is open
    QUEUED = "queued"  #: waits for its environment: a deployment there, a lock, a freeze, the queue
    RUNNING = "running"  #: its jobs are queued or running
    ROLLING_OUT = "rolling_out"  #: its jobs succeeded; its strategy moves traffic step by step
    VERIFYING = "verifying"  #: its jobs succeeded; its environment's checks are measured (``verify``)
    SUCCEEDED = "succeeded"  #: every job succeeded (and, where it is verified, verification passed)
    PARTIAL = "partial"  #: only ``allow_failure`` jobs failed; the run goes on with a warning
    FAILED = "failed"  #: a required job failed after its retries, or its gate failed
    CANCELED = "canceled"  #: the run was canceled while this stage was active
    SKIPPED = "skipped"  #: never started because the run ended before it


class JobStatus(StrEnum):
    PENDING = "pending"  #: its stage has not started (or the run is paused)
    QUEUED = "queued"  #: ready for a runner to claim
    RUNNING = "running"  #: claimed by a runner under a lease
    SUCCEEDED = "succeeded"  #: exited 0
    FAILED = "failed"  #: exited non-zero (queued again while retries remain)
    TIMED_OUT = "timed_out"  #: killed at its timeout (queued again while retries remain)
    LOST = "lost"  #: its runner vanished with it (queued again while retries remain)
    CANCELED = "canceled"  #: killed or dropped because the run was canceled or its stage failed
    SKIPPED = "skipped"  #: never ran because the run ended before its stage


class GateStatus(StrEnum):
    PENDING = "pending"  #: its stage has not been reached
    OPEN = "open"  #: collecting approvals, or polling its check
    APPROVED = "approved"  #: cleared; the stage may start
    REJECTED = "rejected"  #: refused by an approver; the run fails
    TIMED_OUT = "timed_out"  #: nobody cleared it in time (or its check never passed)
    CANCELED = "canceled"  #: the run ended while it was open
    SKIPPED = "skipped"  #: never reached


class RolloutStatus(StrEnum):
    PENDING = "pending"  #: its stage's jobs put the new version on the canary servers; no traffic yet
    PROGRESSING = "progressing"  #: taking its steps: moving traffic, pausing, measuring
    WAITING = "waiting"  #: an open-ended pause, or an inconclusive analysis: a person promotes or aborts
    PROMOTING = "promoting"  #: every step passed: the promote jobs run, then traffic returns to stable
    ABORTING = "aborting"  #: traffic goes back to stable, then the abort jobs run
    PROMOTED = "promoted"  #: the new version is stable and takes all the traffic
    ABORTED = "aborted"  #: all traffic is back on stable; the run failed or was canceled
    FAILED = "failed"  #: the router could not be driven; traffic stays where it was last confirmed


class LockState(StrEnum):
    FREE = "free"  #: no lock
    HELD = "held"  #: locked, and its time (if any) has not run out
    EXPIRED = "expired"  #: its time ran out; counts as free until the keeper sweeps it


class ArtifactStatus(StrEnum):
    REGISTERED = "registered"  #: may be deployed and promoted
    BAD = "bad"  #: marked bad by a person: never deployed or promoted again


class WebhookStatus(StrEnum):
    ACTIVE = "active"  #: receives deliveries
    DISABLED = "disabled"  #: paused by its owner or after failing for too long
    DELETED = "deleted"  #: gone; kept for its deliveries' history


class DeliveryStatus(StrEnum):
    PENDING = "pending"  #: queued in the outbox, due at its next attempt
    SENDING = "sending"  #: claimed by a sender under a lease
    DELIVERED = "delivered"  #: the subscriber answered 2xx
    FAILED = "failed"  #: retries ran out, or the subscription went away


class PostStatus(StrEnum):
    SENDING = "sending"  #: claimed, and a send is under way (or its process died during it)
    WAITING = "waiting"  #: a send failed, or a health change waits to settle; tried from ``next_try_at``
    SENT = "sent"  #: posted; ``ts`` is where
    GAVE_UP = "gave_up"  #: not sent: Slack refused it for good, retries ran out, or no longer called for


R, S, J, G, RO = RunStatus, StageStatus, JobStatus, GateStatus, RolloutStatus
L, A, W, D, P = LockState, ArtifactStatus, WebhookStatus, DeliveryStatus, PostStatus

RUN_TRANSITIONS: Final[Mapping[RunStatus, frozenset[RunStatus]]] = {
    R.PENDING: frozenset({R.RUNNING, R.QUEUED, R.CANCELED}),
    R.QUEUED: frozenset({R.RUNNING, R.FAILED, R.CANCELED}),
    R.RUNNING: frozenset({R.WAITING, R.PAUSED, R.QUEUED, R.VERIFYING, R.SUCCEEDED, R.FAILED, R.CANCELED}),
    R.WAITING: frozenset({R.RUNNING, R.QUEUED, R.PAUSED, R.FAILED, R.CANCELED}),
    R.PAUSED: frozenset({R.RUNNING, R.SUCCEEDED, R.FAILED, R.CANCELED}),
    R.VERIFYING: frozenset({R.RUNNING, R.SUCCEEDED, R.FAILED, R.CANCELED}),
    R.SUCCEEDED: frozenset(),
    R.FAILED: frozenset(),
    R.CANCELED: frozenset(),
}

STAGE_TRANSITIONS: Final[Mapping[StageStatus, frozenset[StageStatus]]] = {
    S.PENDING: frozenset({S.WAITING, S.QUEUED, S.RUNNING, S.CANCELED, S.SKIPPED}),
    S.WAITING: frozenset({S.QUEUED, S.RUNNING, S.FAILED, S.CANCELED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELED}),
    S.RUNNING: frozenset({S.ROLLING_OUT, S.VERIFYING, S.SUCCEEDED, S.PARTIAL, S.FAILED, S.CANCELED}),
    S.ROLLING_OUT: frozenset({S.VERIFYING, S.SUCCEEDED, S.FAILED, S.CANCELED}),
    S.VERIFYING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELED}),
    S.SUCCEEDED: frozenset(),
    S.PARTIAL: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELED: frozenset(),
    S.SKIPPED: frozenset(),
}

JOB_TRANSITIONS: Final[Mapping[JobStatus, frozenset[JobStatus]]] = {
    J.PENDING: frozenset({J.QUEUED, J.CANCELED, J.SKIPPED}),
    J.QUEUED: frozenset({J.RUNNING, J.PENDING, J.CANCELED}),
    J.RUNNING: frozenset({J.SUCCEEDED, J.FAILED, J.TIMED_OUT, J.LOST, J.CANCELED, J.QUEUED}),
    J.SUCCEEDED: frozenset(),
    J.FAILED: frozenset({J.QUEUED}),
    J.TIMED_OUT: frozenset({J.QUEUED}),
    J.LOST: frozenset({J.QUEUED}),
    J.CANCELED: frozenset(),
    J.SKIPPED: frozenset(),
}

GATE_TRANSITIONS: Final[Mapping[GateStatus, frozenset[GateStatus]]] = {
    G.PENDING: frozenset({G.OPEN, G.CANCELED, G.SKIPPED}),
    G.OPEN: frozenset({G.APPROVED, G.REJECTED, G.TIMED_OUT, G.CANCELED}),
    G.APPROVED: frozenset(),
    G.REJECTED: frozenset(),
    G.TIMED_OUT: frozenset(),
    G.CANCELED: frozenset(),
    G.SKIPPED: frozenset(),
}

ROLLOUT_TRANSITIONS: Final[Mapping[RolloutStatus, frozenset[RolloutStatus]]] = {
    RO.PENDING: frozenset({RO.PROGRESSING}),
    RO.PROGRESSING: frozenset({RO.WAITING, RO.PROMOTING, RO.ABORTING, RO.FAILED}),
    RO.WAITING: frozenset({RO.PROGRESSING, RO.PROMOTING, RO.ABORTING, RO.FAILED}),
    RO.PROMOTING: frozenset({RO.PROMOTED, RO.ABORTING, RO.FAILED}),
    RO.ABORTING: frozenset({RO.ABORTED, RO.FAILED}),
    RO.PROMOTED: frozenset(),
    RO.ABORTED: frozenset(),
    RO.FAILED: frozenset(),
}

LOCK_TRANSITIONS: Final[Mapping[LockState, frozenset[LockState]]] = {
    L.FREE: frozenset({L.HELD}),
    L.HELD: frozenset({L.HELD, L.EXPIRED, L.FREE}),
    L.EXPIRED: frozenset({L.HELD, L.FREE}),
}

#: marking bad is the only change, and it is final
ARTIFACT_TRANSITIONS: Final[Mapping[ArtifactStatus, frozenset[ArtifactStatus]]] = {
    A.REGISTERED: frozenset({A.BAD}),
    A.BAD: frozenset(),
}

WEBHOOK_TRANSITIONS: Final[Mapping[WebhookStatus, frozenset[WebhookStatus]]] = {
    W.ACTIVE: frozenset({W.DISABLED, W.DELETED}),
    W.DISABLED: frozenset({W.ACTIVE, W.DELETED}),
    W.DELETED: frozenset(),
}

DELIVERY_TRANSITIONS: Final[Mapping[DeliveryStatus, frozenset[DeliveryStatus]]] = {
    D.PENDING: frozenset({D.SENDING, D.FAILED}),
    D.SENDING: frozenset({D.DELIVERED, D.PENDING, D.FAILED, D.SENDING}),
    D.DELIVERED: frozenset(),
    D.FAILED: frozenset(),
}

POST_TRANSITIONS: Final[Mapping[PostStatus, frozenset[PostStatus]]] = {
    P.SENDING: frozenset({P.SENT, P.WAITING, P.GAVE_UP}),
    P.WAITING: frozenset({P.SENDING, P.GAVE_UP}),
    P.SENT: frozenset(),
    P.GAVE_UP: frozenset(),
}

#: Why some transitions exist at all, for the rendered document.
NOTES: Final[Mapping[tuple[str, str, str], str]] = {
    ("run", "pending", "queued"): "the first stage's environment is not free (busy, locked, frozen)",
    ("run", "running", "queued"): "the next stage's environment is not free (busy, locked, frozen)",
    ("run", "waiting", "queued"): "its gate was cleared; now the environment must be free",
    ("run", "queued", "running"): "admitted: the environment is free and the run is first in its queue",
    ("stage", "queued", "running"): "admitted into its environment (at most one deployment at a time)",
    ("stage", "running", "verifying"): "its jobs succeeded and its environment declares `verify`",
    ("stage", "verifying", "succeeded"): "verification passed, or a person said it looks good",
    ("stage", "verifying", "failed"): "verification failed, or a person chose to roll back",
    ("stage", "running", "rolling_out"): "its jobs succeeded and it declares a `strategy`",
    ("stage", "rolling_out", "succeeded"): "the rollout was promoted: the new version is stable",
    ("stage", "rolling_out", "failed"): "the rollout was aborted by its analysis, or its router failed",
    ("stage", "rolling_out", "canceled"): "a person aborted the rollout (traffic went back to stable first)",
    ("rollout", "progressing", "waiting"): "an open-ended pause, or an inconclusive analysis",
    ("rollout", "waiting", "progressing"): "a person promoted it past the pause",
    ("rollout", "progressing", "promoting"): "every step passed, or a person promoted it fully",
    ("rollout", "progressing", "aborting"): "an analysis failed, or a person aborted (or canceled the run)",
    ("rollout", "promoting", "aborting"): "a promote job failed",
    ("rollout", "progressing", "failed"): "the router could not be reached or did not apply the weights",
    ("run", "running", "verifying"): "a deploy stage is being verified (it keeps its environment)",
    ("run", "verifying", "running"): "verification passed; the next stage goes on",
    ("run", "pending", "canceled"): "canceled before it started; nothing ran",
    ("run", "paused", "succeeded"): "the last running jobs finished while paused",
    ("run", "paused", "failed"): "a job that was still running failed while paused",
    ("stage", "waiting", "failed"): "its gate was rejected or timed out",
    ("job", "queued", "pending"): "the run was paused before a runner claimed the job",
    ("job", "running", "queued"): "the server shut down cleanly; the job runs again on restart",
    ("job", "running", "canceled"): "the run was canceled or a sibling required job failed",
    ("job", "failed", "queued"): "a retry (retries remain)",
    ("job", "timed_out", "queued"): "a retry (retries remain)",
    ("job", "lost", "queued"): "a retry (retries remain)",
    ("lock", "free", "held"): "acquired by a deployer or an admin",
    ("lock", "held", "held"): "relocked, extended, handed over, a handover asked for or declined, a reminder",
    ("lock", "held", "expired"): "its time ran out (nothing is written: the clock moves it)",
    ("lock", "held", "free"): "released by its holder or an admin, or a rollback acknowledged",
    ("lock", "expired", "held"): "taken over by someone acquiring it before the keeper swept it",
    ("lock", "expired", "free"): "swept by the lock keeper, once",
    ("artifact", "registered", "bad"): "marked bad by a person",
    ("webhook", "active", "disabled"): "by its owner, or after failing for too long",
    ("delivery", "sending", "sending"): "another sender takes over after the first one's lease ran out",
    ("delivery", "sending", "pending"): "the attempt failed; tried again later",
    ("delivery", "pending", "failed"): "its subscription was deleted: it is never sent",
    ("delivery", "sending", "failed"): "retries ran out, or the subscription was deleted meanwhile",
    ("slack_post", "sending", "waiting"): "the send failed; tried again from its due time",
    ("slack_post", "waiting", "sending"): "a retry that came due is taken over by one replica",
    ("slack_post", "waiting", "gave_up"): "no longer called for",
    ("slack_post", "sending", "gave_up"): "Slack refused it for good, or retries ran out",
}

RUN_TERMINAL: Final = frozenset({R.SUCCEEDED, R.FAILED, R.CANCELED})
RUN_ACTIVE: Final = frozenset(RunStatus) - RUN_TERMINAL
STAGE_DONE: Final = frozenset(s for s, nxt in STAGE_TRANSITIONS.items() if not nxt)
JOB_DONE: Final = frozenset({J.SUCCEEDED, J.FAILED, J.TIMED_OUT, J.LOST, J.CANCELED, J.SKIPPED})
JOB_FAILURES: Final = frozenset({J.FAILED, J.TIMED_OUT, J.LOST})
GATE_DONE: Final = frozenset(s for s, nxt in GATE_TRANSITIONS.items() if not nxt)

TABLES: Final[Mapping[str, Mapping[Any, frozenset[Any]]]] = {
    "run": RUN_TRANSITIONS,
    "stage": STAGE_TRANSITIONS,
    "job": JOB_TRANSITIONS,
    "gate": GATE_TRANSITIONS,
    "rollout": ROLLOUT_TRANSITIONS,
    "lock": LOCK_TRANSITIONS,
    "artifact": ARTIFACT_TRANSITIONS,
    "webhook": WEBHOOK_TRANSITIONS,
    "delivery": DELIVERY_TRANSITIONS,
    "slack_post": POST_TRANSITIONS,
}
#: each table's statuses, in the order the document lists them
ENUMS: Final[Mapping[str, type[StrEnum]]] = {
    "run": RunStatus,
    "stage": StageStatus,
    "job": JobStatus,
    "gate": GateStatus,
    "rollout": RolloutStatus,
    "lock": LockState,
    "artifact": ArtifactStatus,
    "webhook": WebhookStatus,
    "delivery": DeliveryStatus,
    "slack_post": PostStatus,
}
#: the heading each table has in ``docs/states.md``
TITLES: Final[Mapping[str, str]] = {
    "run": "Run",
    "stage": "Stage",
    "job": "Job",
    "gate": "Gate",
    "rollout": "Rollout (a stage's canary)",
    "lock": "Environment lock",
    "artifact": "Artifact",
    "webhook": "Webhook subscription",
    "delivery": "Webhook delivery",
    "slack_post": "Slack thread post",
}


def can_transition(kind: str, old: str, new: str) -> bool:
    """Whether the table for ``kind`` allows ``old → new``."""
    return new in TABLES[kind].get(old, frozenset())


def check(kind: str, ident: str, old: str, new: str) -> None:
    """Raise ``IllegalTransition`` naming the transition and the reason it is refused."""
    if can_transition(kind, old, new):
        return
    table = TABLES[kind]
    if old not in table:
        why = f"{old!r} is not a {kind} status"
    elif new not in table:
        why = f"{new!r} is not a {kind} status"
    elif not table[old]:
        why = f"{old} is final"
    elif kind == "run" and old in (R.PENDING, R.QUEUED) and new in RUN_TERMINAL - {R.CANCELED}:
        why = "a run cannot finish without having run"
    else:
        allowed = ", ".join(sorted(table[old]))
        why = f"from {old} a {kind} may only go to {allowed}"
    raise IllegalTransition(f"{kind} {ident}: {old} → {new} refused: {why}")


def render_markdown() -> str:
    """The transition tables as the Markdown that ``docs/states.md`` holds."""
    lines = ["<!-- generated by `python -m core.states`; tests/core/test_states.py checks it -->"]
    for kind, table in TABLES.items():
        lines += ["", f"### {TITLES[kind]}", "", "| from | to | note |", "|---|---|---|"]
        for old in ENUMS[kind]:
            targets = sorted(table[old])
            if not targets:
                lines.append(f"| `{old}` | *(final)* | |")
            for new in targets:
                lines.append(f"| `{old}` | `{new}` | {NOTES.get((kind, old, new), '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")

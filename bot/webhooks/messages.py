"""From the engine's event log to webhook messages: which event types an engine event is, who
wants it, and the JSON each subscriber receives. Pure: the outbox calls ``plan`` inside the
transaction that moves its cursor.

| webhook event | engine event |
|---|---|
| ``run.started`` | the run's first move to ``running`` |
| ``run.finished`` | the run succeeded, failed or was canceled |
| ``stage.finished`` | a stage succeeded, partly succeeded, failed or was canceled (not skipped) |
| ``deployment.finished`` | the same, for a stage with an ``environment`` that ran |
| ``gate.waiting`` | a gate opened |
| ``gate.decided`` | an open gate was approved, rejected, timed out or canceled |
| ``environment.health_changed`` | an environment's health changed (``storage.analyses``) |
| ``rollout.step`` | a canary rollout took a step (``core.canary``) |
| ``rollout.promoted`` | a rollout's new version is stable and takes all the traffic |
| ``rollout.aborted`` | a rollout put all traffic back on stable and ran its abort jobs |

A message's ``position`` (the event's sequence number, then a rank for the two messages one
stage event can make) orders a run's messages for one subscriber. Health changes belong to no
run: their deliveries are ordered per environment (their ``run_id`` is ``env:<name>``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from core.events import Event
from core.model import Gate, RunState, Stage
from core.states import RUN_TERMINAL, STAGE_DONE
from storage.webhooks import NewDelivery, Webhook

EVENT_TYPES = (
    "run.started",
    "stage.finished",
    "deployment.finished",
    "gate.waiting",
    "gate.decided",
    "run.finished",
    "environment.health_changed",
    "rollout.step",
    "rollout.promoted",
    "rollout.aborted",
)
#: a rollout's events, sent under their own names (each is one message: it needs no rank of its own)
ROLLOUT_TYPES = frozenset({"rollout.step", "rollout.promoted", "rollout.aborted"})
#: orders the messages one event makes (a position is ``seq * 8 + rank``: ranks stay under 8)
RANK = {name: i for i, name in enumerate(EVENT_TYPES) if name not in ROLLOUT_TYPES} | dict.fromkeys(
    ROLLOUT_TYPES, 7
)
FINISHED_RUN = frozenset(str(s) for s in RUN_TERMINAL)
FINISHED_STAGE = frozenset(str(s) for s in STAGE_DONE) - {"skipped"}
HEALTH_CHANGED = "environment.health_changed"


def types_of(event: Event) -> list[str]:
    """The webhook event types an engine event is (most are none)."""
    to, before = event.to_status, event.from_status
    if event.name in ROLLOUT_TYPES and event.subject == "stage":
        return [event.name]
    if event.subject == "run":
        if to == "running" and before in ("pending", "queued"):
            return ["run.started"]
        if to in FINISHED_RUN:
            return ["run.finished"]
    elif event.subject == "stage" and to in FINISHED_STAGE:
        ran = before == "running"  # a stage that failed or was canceled at its gate deployed nothing
        return ["stage.finished", "deployment.finished"] if ran else ["stage.finished"]
    elif event.subject == "env" and event.name == HEALTH_CHANGED:
        return [HEALTH_CHANGED]
    elif event.subject == "gate":
        if to == "open":
            return ["gate.waiting"]
        if before == "open" and to is not None:
            return ["gate.decided"]
    return []


def plan(
    events: Sequence[Event],
    runs: Mapping[str, RunState],
    subscriptions: Sequence[Webhook],
    base_url: str,
) -> list[NewDelivery]:
    """Every message the ``events`` make for the ``subscriptions`` that want them."""
    out: list[NewDelivery] = []
    for event in events:
        if event.name == HEALTH_CHANGED and event.subject == "env":
            out += _health_changed(event, subscriptions)
            continue
        state = runs.get(event.run_id)
        if state is None:
            continue
        for event_type in types_of(event):
            if event_type == "deployment.finished":
                stage = _stage(state, event)
                if stage is None or stage.environment is None:
                    continue
            wanting = [s for s in subscriptions if _wants(s, event_type, event, state)]
            if not wanting:
                continue
            payload = _payload(event_type, event, state, base_url)
            text = encode(payload)
            if event_type == "run.started":  # a run may start again after waiting for a lock
                msg_id = f"msg_{event.run_id}.run.started"
            else:
                msg_id = f"msg_{event.seq}.{event_type}"
            gate = _gate(state, event)
            external = event_type == "gate.waiting" and gate is not None and gate.kind == "external"
            for sub in wanting:
                body = text
                if external and gate is not None:  # its callback names the subscriber
                    body = encode(_with_callback(payload, state, gate, sub.id, base_url))
                out.append(
                    NewDelivery(
                        webhook_id=sub.id,
                        key=msg_id,
                        msg_id=msg_id,
                        event_type=event_type,
                        event_seq=event.seq,
                        position=event.seq * 8 + RANK[event_type],
                        run_id=event.run_id,
                        subject_id=event.subject_id,
                        body=body,
                    )
                )
    return out


def _health_changed(event: Event, subscriptions: Sequence[Webhook]) -> list[NewDelivery]:
    """``environment.health_changed`` for the subscriptions that want it: those without a
    pipeline (a health belongs to no pipeline) and whose environment, if any, is this one."""
    env = event.subject_id
    wanting = [
        s
        for s in subscriptions
        if event.seq > s.from_seq
        and HEALTH_CHANGED in s.events
        and s.pipeline is None
        and s.environment in (None, env)
    ]
    if not wanting:
        return []
    payload = {
        "type": HEALTH_CHANGED,
        "timestamp": event.at,
        "data": {
            "environment": env,
            "from": event.from_status,
            "to": event.to_status,
            "reason": str(event.data.get("reason", "")),
            "at": event.at,
            "event": {"seq": event.seq, "name": event.name},
        },
    }
    body, msg_id = encode(payload), f"msg_{event.seq}.{HEALTH_CHANGED}"
    return [
        NewDelivery(
            webhook_id=sub.id,
            key=msg_id,
            msg_id=msg_id,
            event_type=HEALTH_CHANGED,
            event_seq=event.seq,
            position=event.seq * 8 + RANK[HEALTH_CHANGED],
            run_id=f"env:{env}"[:64],  # (the column's size)
            subject_id=env,
            body=body,
        )
        for sub in wanting
    ]


def encode(payload: Mapping[str, Any]) -> str:
    """The exact text sent (and signed): compact JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=_jsonable)


def _jsonable(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | frozenset | set):
        return list(value)
    return str(value)


def _wants(sub: Webhook, event_type: str, event: Event, state: RunState) -> bool:
    if event.seq <= sub.from_seq or event_type not in sub.events:
        return False
    if sub.pipeline is not None and state.run.pipeline != sub.pipeline:
        return False
    if sub.environment is not None:
        stage = _stage(state, event)
        if stage is not None:
            return stage.environment == sub.environment
        return any(s.environment == sub.environment for s in state.stages)
    return True


def _stage(state: RunState, event: Event) -> Stage | None:
    """The stage an event is about (a stage's or a gate's event), if any."""
    if event.subject == "stage":
        return next((s for s in state.stages if s.id == event.subject_id), None)
    gate = _gate(state, event)
    return state.stages[gate.stage_index] if gate is not None else None


def _gate(state: RunState, event: Event) -> Gate | None:
    if event.subject != "gate":
        return None
    return next((g for g in state.gates if g.id == event.subject_id), None)


def _payload(event_type: str, event: Event, state: RunState, base_url: str) -> dict[str, Any]:
    """``data.event`` is what happened; ``data.run`` (and stage, gate) is the run as it stood
    when the message was queued, a moment later."""
    data: dict[str, Any] = {
        "event": {
            "seq": event.seq,
            "name": event.name,
            "from": event.from_status,
            "to": event.to_status,
            "at": event.at,
            "reason": str(event.data.get("reason", "")),
        },
        "run": _run(state, base_url),
    }
    stage = _stage(state, event)
    if stage is not None:
        moved = event.subject == "stage" and event.to_status is not None  # (not a rollout's note)
        data["stage"] = _stage_out(stage, event if moved else None)
    gate = _gate(state, event)
    if gate is not None:
        data["gate"] = _gate_out(gate, event)
    if event_type in ROLLOUT_TYPES:
        data["rollout"] = _rollout_out(event)
    if event_type == "deployment.finished" and stage is not None:
        run = state.run
        data["deployment"] = {
            "environment": stage.environment,
            "pipeline": run.pipeline,
            "run_id": run.id,
            "run": run.ref,
            "stage": stage.name,
            "status": event.to_status,
            "revision": run.source_revision,
            "parameters": dict(run.parameters),
            "triggered_by": run.triggered_by,
            "started_at": stage.started_at,
            "finished_at": stage.finished_at or event.at,
        }
    return {"type": event_type, "timestamp": event.at, "data": data}


def _run(state: RunState, base_url: str) -> dict[str, Any]:
    run = state.run
    return {
        "id": run.id,
        "ref": run.ref,
        "pipeline": run.pipeline,
        "number": run.number,
        "pipeline_version": run.pipeline_version,
        "status": str(run.status),
        "reason": run.reason,
        "parameters": dict(run.parameters),
        "revision": run.source_revision,
        "triggered_by": run.triggered_by,
        "trigger_channel": run.trigger_channel,
        "warnings": list(run.warnings),
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "url": f"{base_url}/api/v1/runs/{run.id}",
    }


def _stage_out(stage: Stage, event: Event | None) -> dict[str, Any]:
    return {
        "id": stage.id,
        "name": stage.name,
        "index": stage.index,
        "environment": stage.environment,
        "status": event.to_status if event is not None else str(stage.status),
        "reason": stage.reason,
        "started_at": stage.started_at,
        "finished_at": stage.finished_at,
    }


def _rollout_out(event: Event) -> dict[str, Any]:
    """The rollout as the event recorded it: router, status, desired and applied weights, the
    canary's share, the step (``rollout.step``: its number, of how many, and what it does)."""
    keys = ("router", "status", "desired", "applied", "canary", "analysis", "step", "steps", "action")
    return {key: event.data[key] for key in keys if key in event.data}


def _gate_out(gate: Gate, event: Event) -> dict[str, Any]:
    return {
        "id": gate.id,
        "stage": gate.stage_name,
        "kind": gate.kind,
        "status": event.to_status,
        "approvers": list(gate.approvers),
        "min_approvals": gate.min_approvals,
        "approvals": [{"by": a.actor, "at": a.at, "comment": a.comment} for a in gate.approvals],
        "decided_by": gate.decided_by,
        "reason": gate.reason,
        "opened_at": gate.opened_at,
        "decided_at": gate.decided_at,
        "deadline": gate.deadline,
    }


def _with_callback(
    payload: dict[str, Any], state: RunState, gate: Gate, webhook_id: str, base_url: str
) -> dict[str, Any]:
    """An external gate's ``gate.waiting`` tells its subscriber how to clear (or fail) it."""
    url = f"{base_url}/api/v1/runs/{state.run.id}/gates/{gate.id}/callback?webhook={webhook_id}"
    callback = {
        "url": url,
        "method": "POST",
        "body": {"passed": True, "detail": "what the check found (up to 1000 characters)"},
        "signature": "Standard Webhooks headers (webhook-id, webhook-timestamp, webhook-signature) "
        "signed with this subscription's secret",
    }
    return {**payload, "data": {**payload["data"], "callback": callback}}

"""Terminal rendering of runs and their events, for ``shipyard run`` and ``shipyard status``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from core.duration import format_duration
from core.events import Event
from core.model import Job, RunState
from core.rollout import describe_weights

MARK = {
    "queued": "·",
    "running": "▸",
    "succeeded": "✓",
    "failed": "✗",
    "timed_out": "⏱",
    "lost": "?",
    "canceled": "⊘",
    "skipped": "-",
    "partial": "!",
    "waiting": "⏸",
    "open": "⏸",
    "approved": "✓",
    "rejected": "✗",
    "paused": "‖",
    "pending": " ",
    "verifying": "…",
    "rolling_out": "⇄",
}


def _rollout_line(event: Event) -> str | None:
    """A rollout's moves, for people watching ``shipyard run``: weights confirmed, and how it ended."""
    d = event.data
    where = f"{d.get('stage')} via {d.get('router')}"
    applied = d.get("applied")
    if event.name == "rollout.weights_applied" and isinstance(applied, dict):
        return f"  ⇄ {where}: {describe_weights(applied)}"
    if event.name in ("rollout.promoted", "rollout.aborted", "rollout.failed"):
        why = f" — {d['reason']}" if d.get("reason") else ""
        return f"⇄ rollout of {where} {event.name.removeprefix('rollout.')}{why}"
    if event.name == "rollout.waiting":
        return f"⏸ rollout of {where} waits: {d.get('reason')}"
    return None


def _took(start: datetime | None, end: datetime | None) -> str:
    return format_duration((end - start).total_seconds()) if start and end else ""


def describe_event(event: Event, state: RunState | None = None) -> str | None:
    """One line for an event worth showing, or None."""
    d = event.data
    to = event.to_status or ""
    if event.name == "run.created":
        params = " ".join(f"{k}={v}" for k, v in dict(d.get("parameters", {})).items())  # type: ignore[call-overload]
        return f"run created from {d.get('pipeline')} v{d.get('version')}" + (
            f" with {params}" if params else ""
        )
    if event.subject == "job" and to in ("running", "succeeded", "failed", "timed_out", "lost", "canceled"):
        job = state.job(event.subject_id) if state else None
        took = _took(job.started_at, job.finished_at) if job and to != "running" else ""
        attempt = d.get("attempt", 1)
        tries = f" (attempt {attempt})" if isinstance(attempt, int) and attempt > 1 else ""
        reason = f" — {d['reason']}" if d.get("reason") and to != "succeeded" else ""
        return f"  {MARK[to]} {d.get('stage')}/{d.get('job')} {to}{tries} {took}{reason}".rstrip()
    if event.subject == "job" and to == "queued" and str(d.get("reason", "")).startswith("retry"):
        return f"  ↻ {d.get('stage')}/{d.get('job')} {d['reason']}"
    if event.name.startswith("rollout."):
        return _rollout_line(event)
    if event.subject == "stage" and to in ("running", "rolling_out", "succeeded", "partial", "failed"):
        reason = f" — {d['reason']}" if d.get("reason") and to != "succeeded" else ""
        return f"{MARK[to]} stage {d.get('stage')} {to}{reason}"
    if event.subject == "gate" and to == "open":
        return f"⏸ gate {d.get('stage')} is open"
    if event.name == "gate.approval_added":
        return f"  ✓ {d.get('by')} approved gate {d.get('stage')} ({d.get('approvals')}/{d.get('needed')})"
    if event.subject == "gate" and to in ("approved", "rejected", "timed_out"):
        return f"{MARK[to]} gate {d.get('stage')} {to}" + (f" — {d['reason']}" if d.get("reason") else "")
    if event.subject == "run" and to in ("paused", "succeeded", "failed", "canceled"):
        reason = f" — {d['reason']}" if d.get("reason") else ""
        return f"run {to}{reason}"
    return None


def render_state(
    state: RunState,
    tail: Callable[[Job], list[str]] | None = None,
    waits: Mapping[str, str] | None = None,
) -> str:
    """``waits``: why queued jobs wait for a runner, by job id (``RunnerRegistry.waits``)."""
    run = state.run
    waits = waits or {}
    lines = [
        f"{run.ref}  {run.status}  (id {run.id}, {run.pipeline} v{run.pipeline_version})",
        f"  triggered by {run.triggered_by} via {run.trigger_channel} at {run.created_at:%Y-%m-%d %H:%M:%S}Z"
        + (f", revision {run.source_revision}" if run.source_revision else ""),
    ]
    if run.parameters:
        lines.append("  parameters: " + " ".join(f"{k}={v}" for k, v in run.parameters.items()))
    if run.reason:
        lines.append(f"  {run.reason}")
    for warning in run.warnings:
        lines.append(f"  warning: {warning}")
    for stage in state.stages:
        env = f" → {stage.environment}" if stage.environment else ""
        lines.append(f"{MARK.get(stage.status, ' ')} {stage.name}{env}: {stage.status}")
        gate = state.gate_of(stage.index)
        if gate is not None and gate.status != "pending":
            who = ", ".join(a.actor for a in gate.approvals)
            why = f" — {gate.reason}" if gate.reason and gate.status != "approved" else ""
            lines.append(f"    gate ({gate.kind}): {gate.status}" + (f" by {who}" if who else "") + why)
        for job in state.jobs_of(stage.index):
            took = _took(job.started_at, job.finished_at)
            extra = f" — {job.reason}" if job.reason and job.status != "succeeded" else ""
            if job.id in waits:
                extra = f" — {waits[job.id]}"
            lines.append(f"    {MARK.get(job.status, ' ')} {job.name}: {job.status} {took}".rstrip() + extra)
            if tail is not None and job.failed:
                lines.extend(f"        | {line}" for line in tail(job))
    return "\n".join(lines)

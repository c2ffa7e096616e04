"""W3C trace context for runs, computed from ids alone.

A run outlives the process that started it and is moved along by several replicas, so nothing
can hold a live span for it. Its trace id is derived from the run id, and each stage's, job
attempt's and gate's span id from its own id: any replica, the exporter, a runner and a job's
own scripts all name the same spans without sharing state, and without OpenTelemetry installed.
"""

from __future__ import annotations

import hashlib

#: a sampled trace (W3C trace-flags), so a team's scripts that join it record their spans
SAMPLED = "01"


def _digest(*parts: str, size: int) -> str:
    raw = hashlib.sha256("\0".join(parts).encode()).digest()[:size]
    if not any(raw):  # all-zero ids are invalid in W3C trace context
        raw = raw[:-1] + b"\x01"
    return raw.hex()


def trace_id(run_id: str) -> str:
    """The run's trace id: 32 lowercase hex digits."""
    return _digest("trace", run_id, size=16)


def run_span_id(run_id: str) -> str:
    """The span id of the run's root span."""
    return _digest("run", run_id, size=8)


def stage_span_id(stage_id: str) -> str:
    return _digest("stage", stage_id, size=8)


def job_span_id(job_id: str, attempt: int) -> str:
    """Each attempt of a job is its own span (a retry is a sibling, not the same span)."""
    return _digest("job", job_id, str(attempt), size=8)


def gate_span_id(gate_id: str) -> str:
    return _digest("gate", gate_id, size=8)


def traceparent(trace: str, span: str) -> str:
    """The W3C ``traceparent`` header value naming ``span`` as the parent."""
    return f"00-{trace}-{span}-{SAMPLED}"


def job_traceparent(run_id: str, job_id: str, attempt: int) -> str:
    """What a job receives as ``TRACEPARENT``: its spans become children of its attempt's span."""
    return traceparent(trace_id(run_id), job_span_id(job_id, attempt))


def gate_traceparent(run_id: str, gate_id: str) -> str:
    return traceparent(trace_id(run_id), gate_span_id(gate_id))


def run_traceparent(run_id: str) -> str:
    """Sent with a run's webhook deliveries: the receiver's spans join the run's trace."""
    return traceparent(trace_id(run_id), run_span_id(run_id))

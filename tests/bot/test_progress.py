"""``shipyard run`` tells a rollout as it goes: each confirmed weight change, a wait for a
person, and how it ended, besides the stage entering ``rolling_out``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bot.progress import describe_event
from core.events import Event

AT = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _event(name: str, to: str | None = None, **data: Any) -> Event:
    facts = {"stage": "production", "router": "web", **data}
    return Event(name=name, run_id="r1", subject="stage", subject_id="r1.s0", at=AT, to_status=to, data=facts)


def test_a_rollout_reads_as_its_weights_its_waits_and_its_end() -> None:
    assert describe_event(_event("stage.rolling_out", "rolling_out")) == "⇄ stage production rolling_out"
    applied = _event("rollout.weights_applied", applied={"stable": 90, "canary": 10})
    assert describe_event(applied) == "  ⇄ production via web: stable 90 / canary 10"
    waiting = _event("rollout.waiting", reason="paused at step 4 of 5")
    assert describe_event(waiting) == "⏸ rollout of production via web waits: paused at step 4 of 5"
    aborted = _event("rollout.aborted", reason="rollout aborted by ana: latency")
    assert (
        describe_event(aborted) == "⇄ rollout of production via web aborted — rollout aborted by ana: latency"
    )
    assert describe_event(_event("rollout.promoted")) == "⇄ rollout of production via web promoted"
    assert describe_event(_event("rollout.analysis_ended", analysis="rollout:r1:0:1")) is None

"""How a canary rollout reads in a run's message: the weight bar, the step in words with the
time it has left, the router being set, the step's last measurements, why it waits or ended.
Text only (``block_kit.run_message`` makes the blocks and the buttons), so the console and
Slack show the same words."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from core.checks import Measurement
from core.duration import format_duration
from core.model import RunState, Stage
from core.rollout import CANARY, ROLLOUT_DONE, STABLE, Rollout, describe_weights, step_words
from core.states import RolloutStatus, RunStatus

#: cells of the weight bar: one per ten points of traffic
CELLS = 10
STABLE_CELL, CANARY_CELL = "▮", "▯"
#: rollout statuses a person may promote past or abort
STEERABLE = frozenset({RolloutStatus.PROGRESSING, RolloutStatus.WAITING})
#: run statuses in which the rollout's clock runs (Pause offered) or stands (Resume offered)
PAUSABLE = frozenset({RunStatus.RUNNING, RunStatus.WAITING})


def rolling_stage(state: RunState) -> Stage | None:
    """The stage whose rollout the message shows: the one under way, else the last that had one."""
    with_rollout = [s for s in state.stages if s.rollout is not None]
    live = [s for s in with_rollout if s.rollout is not None and s.rollout.status not in ROLLOUT_DONE]
    shown = live or with_rollout
    return shown[-1] if shown else None


def weight_bar(weights: Mapping[str, int], pools: tuple[str, str] = (STABLE, CANARY)) -> str:
    """``stable ▮▮▮▮▮▮▮▮▮▯ canary``: a cell per ten points; a canary with any traffic shows at
    least one cell, and so does a stable pool with any (``pools``: serving, then new)."""
    old, new = pools
    canary = int(weights.get(new, 0))
    cells = round(canary * CELLS / 100)
    if canary > 0:
        cells = max(cells, 1)
    if canary < 100:
        cells = min(cells, CELLS - 1)
    return f"{old} {STABLE_CELL * (CELLS - cells)}{CANARY_CELL * cells} {new}"


def time_left(rollout: Rollout, now: datetime | None) -> str:
    """`` · 4m 10s left (until 14:05:03 UTC)`` for a timed step; what a paused run keeps."""
    if rollout.paused_left is not None:
        return f" · {format_duration(rollout.paused_left)} left when the run resumes"
    if rollout.step_until is None:
        return ""
    until = f"until {rollout.step_until:%H:%M:%S} UTC"
    if now is None:
        return f" · {until}"
    left = max(0.0, (rollout.step_until - now).total_seconds())
    return f" · {format_duration(round(left))} left ({until})"


def rollout_lines(
    state: RunState,
    stage: Stage,
    now: datetime | None = None,
    measured: Sequence[Measurement] | None = None,
) -> list[str]:
    """The rollout of ``stage``, as lines of mrkdwn: the bar first. ``measured``: the current
    analysis step's newest measurement of each check (None: not read, nothing is said)."""
    rollout = stage.rollout
    assert rollout is not None
    sdef = state.definition.stages[stage.index]
    assert sdef.strategy is not None
    strategy = sdef.strategy
    kind = "canary" if strategy.kind == "canary" else "blue/green"
    lines = [f"*{kind}* of _{stage.name}_ through router `{rollout.router}` — {rollout.status}"]
    if rollout.applied is not None:  # (what the router confirmed: the traffic it serves)
        lines.append(f"`{weight_bar(rollout.applied, rollout.pools)}`  {describe_weights(rollout.applied)}")
    else:  # (the weights wanted are not traffic until the router confirms them)
        lines.append("traffic: as the router had it (it has confirmed no weights of this rollout)")
    if rollout.router_wait and rollout.status not in ROLLOUT_DONE:
        lines.append(f":hourglass_flowing_sand: {rollout.router_wait}")
    elif rollout.router_pending:
        lines.append(f":hourglass_flowing_sand: setting router… to {describe_weights(rollout.desired)}")
    if rollout.status in STEERABLE and 0 <= rollout.step < len(strategy.steps):
        lines.append(step_words(strategy, rollout.step) + time_left(rollout, now))
    elif rollout.status is RolloutStatus.PROMOTING and strategy.kind == "canary":
        lines.append("every step passed: the promote jobs put the new version on the stable servers")
    elif rollout.status is RolloutStatus.PROMOTING:
        lines.append(f"switched: {rollout.pools[1]} serves; {rollout.pools[0]} is retired next")
    if rollout.analysis is not None and measured:
        lines.append("last measured: " + "; ".join(_measurement(m) for m in measured))
    elif rollout.analysis is not None and measured is not None:
        lines.append("last measured: nothing yet")
    if rollout.reason:
        lines.append(rollout.reason)
    return lines


def _measurement(m: Measurement) -> str:
    return f"{m.check} {m.result} ({m.detail or m.value or 'no value'}) at {m.at:%H:%M:%S}"


def step_checks(state: RunState, stage: Stage, step: int) -> list[str]:
    """The checks canary step ``step`` of ``stage`` measures (none unless it is an analysis)."""
    sdef = state.definition.stages[stage.index]
    steps = sdef.strategy.steps if sdef.strategy is not None else []
    analysis = steps[step].analysis if 0 <= step < len(steps) else None
    return list(analysis.checks) if analysis is not None else []


def can_promote(state: RunState, rollout: Rollout) -> bool:
    """Promote is offered where it can go through: in a pause or an analysis, or waiting."""
    if rollout.status is RolloutStatus.WAITING:
        return True
    if rollout.status is not RolloutStatus.PROGRESSING:
        return False
    stage = rolling_stage(state)
    if stage is None:
        return False
    sdef = state.definition.stages[stage.index]
    assert sdef.strategy is not None
    steps = sdef.strategy.steps
    return 0 <= rollout.step < len(steps) and steps[rollout.step].set_weight is None

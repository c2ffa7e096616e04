"""``/deploy promote-canary <run> [step=N] [--full] [comment]`` and ``/deploy abort <run> [reason]``:
steering a canary rollout from chat, as its run message's buttons do (``promote`` is taken: it
deploys a known artifact). Registered on import
(``bot.chat``). As over REST, ``core.access.authorize`` decides who may: promoting past an
open-ended pause is a gate (its approvers, not who triggered the run); approvers may abort
any rollout, deployers their own. Pausing and resuming are the run's ``pause`` and ``resume``."""

from __future__ import annotations

from bot.chat import block_kit
from bot.chat.parse import Line
from bot.chat.rollout_blocks import STEERABLE, rolling_stage
from bot.chat.verbs import ChatBackend, Refusal, Reply, Who, _decide, _usage, verb
from core.access import Action
from core.commands import AbortRollout, PromoteRollout
from core.model import RunState
from core.rollout import describe_step, describe_weights
from core.states import RolloutStatus


async def _rolling(backend: ChatBackend, name: str, line: Line) -> RunState:
    if not line.words:
        raise Refusal(_usage(name))
    state = await backend.find(line.words[0])
    if not any(s.rollout is not None for s in state.stages):
        raise Refusal(f"{state.run.ref} has no rollout: none of its stages has a canary strategy.")
    return state


@verb(
    "promote-canary",
    "promote-canary <run> [step=N] [--full] [comment]",
    "promote a rollout past the step it is in (step=N: only while it is at step N; --full: every step left)",
    None,
)
async def promote(backend: ChatBackend, who: Who, line: Line) -> Reply:
    state = await _rolling(backend, "promote-canary", line)
    words = line.words[1:]
    typed, words = _typed_step(line, words)
    full = "--full" in words
    comment = " ".join(w for w in words if w != "--full")
    # a promote names its step, as the buttons do: without one typed, the step the rollout is at
    # now (as read here), so two people typing it at one pause promote it once, not two steps
    step = typed if typed is not None else _step_now(state, line.words[0])
    command = PromoteRollout(run_id=state.run.id, actor=who.actor, full=full, comment=comment, step=step)
    decision = await _decide(backend, command)
    assert decision.state is not None
    said = f"{block_kit.who(who.user)} promoted {state.run.ref}" + (" fully" if full else "")
    if step is not None:
        said += f" past {_step_named(state, step)}"
    stage = next((s for s in decision.state.stages if s.rollout is not None), None)
    if stage is not None and stage.rollout is not None:
        said += f", now wanting {describe_weights(stage.rollout.desired)}"
    return Reply(said + (f": {comment}" if comment else "."), public=True)


def _typed_step(line: Line, words: list[str]) -> tuple[int | None, list[str]]:
    """The step typed (``step=2``, or ``step 2`` right after the run), 0-based, and the words
    left; a Refusal saying how to type it when it is not a step number."""
    typed: str | None = line.params.get("step")
    if typed is None and len(words) >= 2 and words[0].lower() == "step":
        typed, words = words[1], words[2:]
    if typed is None:
        return None, words
    if not (typed.isascii() and typed.isdigit()) or int(typed) < 1:
        raise Refusal(
            f"`{typed}` is not a step: give the step the rollout is at, as its message shows it "
            f"(from 1), e.g. `/deploy promote-canary {line.words[0]} step=2`"
        )
    return int(typed) - 1, words


def _step_now(state: RunState, typed_run: str) -> int | None:
    """The step the rollout under way is at, as read now (None when none is under way: the
    engine says so). Only a step that waits for a person is promoted without being named: a
    timed pause or an analysis that is measuring may be the step a promote typed a moment ago
    just began, and a second person's promote of the pause before would cut it short."""
    stage = rolling_stage(state)
    rollout = stage.rollout if stage is not None else None
    if rollout is None or rollout.status not in STEERABLE or rollout.step < 0:
        return None
    if rollout.status is not RolloutStatus.WAITING:
        raise Refusal(
            f"{state.run.ref}'s rollout is at {_step_named(state, rollout.step)}, which waits for "
            "no one: name the step to cut it short, "
            f"`/deploy promote-canary {typed_run} step={rollout.step + 1}` (nothing was promoted)"
        )
    return rollout.step


def _step_named(state: RunState, step: int) -> str:
    """``step 2 of 4 (pause until a person promotes)``."""
    stage = rolling_stage(state)
    assert stage is not None
    strategy = state.definition.stages[stage.index].strategy
    assert strategy is not None
    steps = strategy.steps
    action = f" ({describe_step(steps[step], strategy.kind)})" if step < len(steps) else ""
    return f"step {step + 1} of {len(steps)}{action}"


# (deployers their own runs, approvers any: ``core.access`` decides, as over REST)
@verb("abort", "abort <run> [reason]", "abort a rollout: traffic back to stable, the run ends", Action.READ)
async def abort(backend: ChatBackend, who: Who, line: Line) -> Reply:
    state = await _rolling(backend, "abort", line)
    reason = " ".join(line.words[1:])
    await _decide(backend, AbortRollout(run_id=state.run.id, actor=who.actor, reason=reason))
    said = f"{block_kit.who(who.user)} aborted the rollout of {state.run.ref}"
    return Reply(said + (f": {reason}" if reason else "."), public=True)

"""``/deploy promote-canary <run> [--full] [comment]`` and ``/deploy abort <run> [reason]``:
steering a canary rollout from chat, as its run message's buttons do (``promote`` is taken: it
deploys a known artifact). Registered on import
(``bot.chat``). As over REST, ``core.access.authorize`` decides who may: promoting past an
open-ended pause is a gate (its approvers, not who triggered the run); approvers may abort
any rollout, deployers their own. Pausing and resuming are the run's ``pause`` and ``resume``."""

from __future__ import annotations

from bot.chat import block_kit
from bot.chat.parse import Line
from bot.chat.verbs import ChatBackend, Refusal, Reply, Who, _decide, _usage, verb
from core.access import Action
from core.commands import AbortRollout, PromoteRollout
from core.model import RunState
from core.rollout import describe_weights


async def _rolling(backend: ChatBackend, name: str, line: Line) -> RunState:
    if not line.words:
        raise Refusal(_usage(name))
    state = await backend.find(line.words[0])
    if not any(s.rollout is not None for s in state.stages):
        raise Refusal(f"{state.run.ref} has no rollout: none of its stages has a canary strategy.")
    return state


@verb(
    "promote-canary",
    "promote-canary <run> [--full] [comment]",
    "promote a rollout past the step it is in (--full: past every step left)",
    None,
)
async def promote(backend: ChatBackend, who: Who, line: Line) -> Reply:
    state = await _rolling(backend, "promote-canary", line)
    words = line.words[1:]
    full = "--full" in words
    comment = " ".join(w for w in words if w != "--full")
    command = PromoteRollout(run_id=state.run.id, actor=who.actor, full=full, comment=comment)
    decision = await _decide(backend, command)
    assert decision.state is not None
    said = f"{block_kit.who(who.user)} promoted {state.run.ref}" + (" fully" if full else "")
    stage = next((s for s in decision.state.stages if s.rollout is not None), None)
    if stage is not None and stage.rollout is not None:
        said += f" (wants {describe_weights(stage.rollout.desired)})"
    return Reply(said + (f": {comment}" if comment else "."), public=True)


# (deployers their own runs, approvers any: ``core.access`` decides, as over REST)
@verb("abort", "abort <run> [reason]", "abort a rollout: traffic back to stable, the run ends", Action.READ)
async def abort(backend: ChatBackend, who: Who, line: Line) -> Reply:
    state = await _rolling(backend, "abort", line)
    reason = " ".join(line.words[1:])
    await _decide(backend, AbortRollout(run_id=state.run.id, actor=who.actor, reason=reason))
    said = f"{block_kit.who(who.user)} aborted the rollout of {state.run.ref}"
    return Reply(said + (f": {reason}" if reason else "."), public=True)

"""``/deploy approve <run> [comment]`` and ``/deploy reject <run> <reason>``: clearing the manual
gate a run waits at. Registered on import (``bot.chat``). No role is checked here: as over
REST, the engine decides by what the caller held when the gate opened, and its refusal says
why. The gate card's Approve and Reject buttons go through ``verbs.press``."""

from __future__ import annotations

from bot.chat import block_kit
from bot.chat.parse import Line
from bot.chat.verbs import ChatBackend, Refusal, Reply, Who, _decide, _usage, verb
from core.commands import ApproveGate, RejectGate
from core.model import RunState
from core.states import GateStatus


async def _open_gate(backend: ChatBackend, ref: str) -> tuple[RunState, str]:
    state = await backend.find(ref)
    gate = next((g for g in state.gates if g.status is GateStatus.OPEN and g.kind == "manual"), None)
    if gate is None:
        raise Refusal(f"{state.run.ref} has no gate waiting for people (it is {state.run.status}).")
    return state, gate.id


# who may clear a gate is fixed when it opens: core.access.authorize checks the roles and groups
# held then, so a role revoked since still counts and one granted since does not
@verb("approve", "approve <run> [comment]", "approve the gate a run waits at", None)
async def approve(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if not line.words:
        raise Refusal(_usage("approve"))
    state, gate = await _open_gate(backend, line.words[0])
    comment = " ".join(line.words[1:])
    await _decide(backend, ApproveGate(run_id=state.run.id, gate=gate, actor=who.actor, comment=comment))
    return Reply(f"{block_kit.who(who.user)} approved {state.run.ref}.", public=True)


@verb("reject", "reject <run> <reason>", "reject the gate a run waits at (the run fails)", None)
async def reject(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if len(line.words) < 2:
        raise Refusal("Say why: " + _usage("reject"))
    state, gate = await _open_gate(backend, line.words[0])
    reason = " ".join(line.words[1:])
    await _decide(backend, RejectGate(run_id=state.run.id, gate=gate, actor=who.actor, reason=reason))
    return Reply(f"{block_kit.who(who.user)} rejected {state.run.ref}: {reason}", public=True)

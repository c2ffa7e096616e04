"""App Home: what runs where, the gates waiting for the viewer, the viewer's recent runs."""

from __future__ import annotations

from slack_sdk.web.async_client import AsyncWebClient

from bot.chat import blocks as bk
from bot.chat.verbs import Desk
from core.states import GateStatus
from storage.reads import RunFilter


async def publish_home(desk: Desk, client: AsyncWebClient, user: str) -> None:
    reads = desk.reads
    blocks: list[bk.Block] = [{"type": "header", "text": {"type": "plain_text", "text": "Environments"}}]
    for name in await desk.read(reads.environment_names):
        live = await desk.read(reads.current_deployment, name)
        if live is None:
            blocks.append(bk.text(f"*{name}*: nothing deployed yet"))
        else:
            what = f"`{live.revision}`" if live.revision else f"{live.pipeline}#{live.run_number}"
            blocks.append(
                bk.text(
                    f"*{name}*: {what} since {live.finished_at:%Y-%m-%d %H:%M} UTC "
                    f"by {bk.who(live.triggered_by)} ({live.pipeline}#{live.run_number})"
                )
            )
    waiting = await desk.read(reads.runs, RunFilter(status="waiting"), None, 20)
    gates = [
        (state, gate)
        for state in waiting
        for gate in state.gates
        if gate.status is GateStatus.OPEN and gate.kind == "manual" and user not in state.run.requested_by
    ]
    blocks.append({"type": "header", "text": {"type": "plain_text", "text": "Waiting for approval"}})
    if not gates:
        blocks.append(bk.context("Nothing is waiting for you."))
    for state, gate in gates[:10]:
        _, card = bk.gate_card(state, gate, None)
        blocks.extend(card)
    mine = await desk.read(reads.runs, RunFilter(triggered_by=user), None, 10)
    blocks.append({"type": "header", "text": {"type": "plain_text", "text": "Your recent runs"}})
    if not mine:
        blocks.append(bk.context("You have not started a run yet. Try `/deploy help`."))
    for state in mine:
        blocks.append(bk.context(bk.run_summary(state) + f" · {state.run.created_at:%Y-%m-%d %H:%M} UTC"))
    await client.views_publish(user_id=user, view={"type": "home", "blocks": blocks[:100]})

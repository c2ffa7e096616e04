"""``/deploy runners``: the runners the server has seen (``GET /api/v1/runners`` in chat): each
one's labels, state, the jobs it runs and when it was last seen; and, with none, how to start one."""

from __future__ import annotations

from datetime import datetime

from bot.backend import now
from bot.chat import block_kit
from bot.chat.parse import Line
from bot.chat.verbs import ChatBackend, Reply, Who, verb
from core.duration import format_duration
from core.labels import RunnerSeen, describe

STATE = {"online": ":large_green_circle:", "offline": ":red_circle:", "draining": ":large_yellow_circle:"}
#: runners listed at most (a message holds 50 blocks)
SHOWN = 40
NONE_YET = (
    "No runner has connected yet. `shipyard serve` runs jobs itself unless "
    "`SHIPYARD_RUNNER_CAPACITY=0`; to run them on another machine, create a token "
    "(`shipyard token create eu-1 --role runner`) and start "
    "`shipyard runner --url <this server> --name eu-1 --labels linux,prod-eu` there (docs/runners.md)."
)


def runner_line(r: RunnerSeen, at: datetime) -> str:
    state = r.state(at)
    ago = format_duration(max(0.0, (at - r.last_seen).total_seconds()))
    return (
        f"{STATE[state]} *{r.name}* — {state} · labels: {describe(r.labels)} · "
        f"{r.running}/{r.capacity} job(s) running · last seen {r.last_seen:%Y-%m-%d %H:%M} UTC ({ago} ago)"
    )


@verb("runners", "runners", "the runners: labels, online/offline/draining, jobs running, last seen", words=0)
async def runners(backend: ChatBackend, who: Who, line: Line) -> Reply:
    found = await backend.read(backend.shipyard.runners.all)
    if not found:
        return Reply(NONE_YET, [block_kit.text(NONE_YET)])
    at = now()
    summary = f"{len(found)} runner(s):"
    more = [block_kit.context(f"…and {len(found) - SHOWN} more")] if len(found) > SHOWN else []
    shown = [block_kit.text(runner_line(r, at)) for r in found[:SHOWN]]
    return Reply(summary, [block_kit.text(summary), *shown, *more])

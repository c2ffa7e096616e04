"""App Home: what runs where (whether it is locked, how healthy it is, DORA's four keys over
30 days), the viewer's paused schedules and why, the gates waiting for the viewer, the viewer's
recent runs. Published when the viewer opens it and again when something it shows changes (the
notifier: runs, gates, deployments, locks and schedules paused or resumed).

"Waiting for you" lists only gates the viewer could clear (``core.access.authorize``: the
approver role and, when the gate names approvers, one of them by name, group or role, as held
when the gate opened; not the viewer's own runs unless the gate allows self-approval), minus
gates they already approved.
"""

from __future__ import annotations

from datetime import datetime

from slack_sdk.web.async_client import AsyncWebClient

from bot.backend import now
from bot.chat import block_kit, lock_blocks
from bot.chat.cards import gate_card, healths, watched
from bot.chat.dora import home_line, read_keys
from bot.chat.health import line as health_line
from bot.chat.runners import runner_line
from bot.chat.verbs import ChatBackend
from core.access import Grant, authorize
from core.commands import ApproveGate
from core.dora import DEFAULT_WINDOW, parse_window
from core.errors import Forbidden
from core.model import Actor, Gate, RunState
from core.states import GateStatus
from storage.locks import LockStore
from storage.reads import RunFilter
from storage.schedules import ScheduleStore

#: gates and runs shown at most (a home view holds 100 blocks)
GATES_SHOWN, RUNS_SHOWN = 10, 10
#: runners listed at most
RUNNERS_SHOWN = 10
#: the viewer's paused schedules listed at most
SCHEDULES_SHOWN = 5


async def publish_home(backend: ChatBackend, client: AsyncWebClient, user: str) -> None:
    await client.views_publish(user_id=user, view=await home_view(backend, user))


async def home_view(backend: ChatBackend, user: str) -> dict[str, object]:
    at = now()
    blocks = [_header("Environments"), *await _environments(backend, at)]
    if (public := backend.shipyard.settings.public_url) is not None:
        board = f"{public.rstrip('/')}/ui/environments"
        blocks.append(
            block_kit.context(
                f":globe_with_meridians: <{board}|Open board>: what runs where, and the history"
            )
        )
    blocks.extend(await _stranded_runners(backend, at))
    blocks.extend(await _paused_schedules(backend, user))
    blocks.append(_header("Waiting for your approval"))
    grants = await _grants(backend, user)
    gates = [(s, g) for s, g in await _waiting(backend) if may_approve(grants, user, s, g)]
    if not gates:
        blocks.append(block_kit.context("Nothing is waiting for you."))
    for state, gate in gates[:GATES_SHOWN]:
        blocks.extend((await gate_card(backend, state, gate))[1])  # (the card the thread shows)
    blocks.append(_header("Your recent runs"))
    mine = await backend.read(backend.reads.runs, RunFilter(triggered_by=user), None, RUNS_SHOWN)
    if not mine:
        blocks.append(block_kit.context("You have not started a run yet. Try `/deploy help`."))
    for state in mine:
        blocks.append(
            block_kit.context(block_kit.run_summary(state) + f" · {state.run.created_at:%Y-%m-%d %H:%M} UTC")
        )
    return {"type": "home", "blocks": blocks[:100]}


def may_approve(grants: list[Grant], user: str, state: RunState, gate: Gate) -> bool:
    if gate.status is not GateStatus.OPEN or gate.kind != "manual":
        return False
    if any(a.actor == user for a in gate.approvals):
        return False
    try:  # the question Slack's Approve button would ask
        authorize(state, ApproveGate(run_id=state.run.id, gate=gate.id, actor=Actor(user, "slack")), grants)
    except Forbidden:
        return False
    return True


async def _environments(backend: ChatBackend, at: datetime) -> list[block_kit.Block]:
    locks = {lock.environment: lock for lock in await backend.read(LockStore(backend.shipyard.store).all, at)}
    names = sorted(set(await backend.read(backend.reads.environment_names)) | set(locks))
    names = sorted(
        set(names) | {n for n in backend.shipyard.settings.environments.root if watched(backend, n)}
    )
    health = await healths(backend, names)
    blocks = []
    for name in names:
        live = await backend.read(backend.reads.current_deployment, name)
        line = f"*{name}*: " + (block_kit.live_line(live) if live is not None else "nothing deployed yet")
        lock = locks.get(name)
        line += f"\n:lock: {lock_blocks.told(lock, at)}" if lock is not None else "\n:unlock: not locked"
        if name in health:
            line += f"\n{health_line(health[name])}"
        line += "\n" + home_line(await read_keys(backend, name, parse_window(DEFAULT_WINDOW)))
        blocks.append(block_kit.text(line))
    return blocks


async def _stranded_runners(backend: ChatBackend, at: datetime) -> list[block_kit.Block]:
    """Offline (or draining) runners that jobs wait for; nothing when all is well."""
    found = await backend.read(backend.shipyard.runners.stranded, at)
    if not found:
        return []
    lines = [f"{runner_line(r, at)}\n:hourglass_flowing_sand: {n} job(s) wait for it" for r, n in found]
    return [_header("Runners"), *(block_kit.text(line) for line in lines[:RUNNERS_SHOWN])]


async def _paused_schedules(backend: ChatBackend, user: str) -> list[block_kit.Block]:
    """The viewer's schedules that are paused, each with why; nothing when none is."""
    found = await backend.read(ScheduleStore(backend.shipyard.store).paused_of, user, SCHEDULES_SHOWN)
    if not found:
        return []
    lines = [
        f":double_vertical_bar: `{s.id[:8]}` {s.describe()}: paused, {s.paused_reason}. "
        f"`/deploy resume-schedule {s.id[:8]}` once that is fixed."
        for s in found
    ]
    return [_header("Your paused schedules"), *(block_kit.text(line) for line in lines)]


async def _waiting(backend: ChatBackend) -> list[tuple[RunState, Gate]]:
    states = await backend.read(backend.reads.waiting_for_people, 100)
    return [(s, g) for s in states for g in s.gates if g.status is GateStatus.OPEN and g.kind == "manual"]


async def _grants(backend: ChatBackend, user: str) -> list[Grant]:
    def read() -> list[Grant]:
        with backend.shipyard.store.reading() as tx:
            return tx.grants_of(user)

    return await backend.read(read)


def _header(title: str) -> block_kit.Block:
    return {"type": "header", "text": {"type": "plain_text", "text": title}}

"""``shipyard console``: the Slack bot in a terminal, for people without a workspace.

It reads ``/deploy …`` lines and hands them to the very same verbs (``bot.chat.verbs``) against
an engine running in this process, renders their Block Kit as text, shows buttons as numbered
choices (``press N [reason]``) that go through the same ``verbs.press`` as Slack's, and prints
each run's message as it changes, while it waits for the next line too. A few words of its own
help scripting: ``as USER`` switches who is typing, ``wait RUN [STATUS]`` waits until a run
reaches a status (default: finished), ``quit``.

What Slack would post in a run's thread is printed here too, decided and drawn by the same
``bot.chat.threads`` from the run's events (the approval card, printed again when it changes as
Slack edits it; every failed job with its last log lines and buttons, Cancel run while the run
goes on; a lost job; the result with its Roll back buttons; a rollback's lock), and so is what
the lock keeper would tell a holder (a handover request, an expiry reminder), for the person
typing; so every button the Slack app answers can be pressed here.

A button keeps its number for as long as the console runs, however often its message is
printed again, so a script's ``press 2`` means the same button whatever the timing.

At the end of its input (or ``quit``) it waits up to ``SETTLE_S`` for the runs it started to
finish or to wait for a person, prints where each one is, and exits. Runs still moving then go
on the next time Shipyard runs against the same database: the engine hands their jobs back.

Who may do what comes from the database, as for Slack users (``shipyard access grant``). The
console's own user (``console``, when no ``--user`` is given) may deploy for the session if the
database gives it no role: nothing is written, so no one gains a lasting role by trying the
console. A named user is exactly who the database says."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TextIO

from bot.backend import now
from bot.bootstrap import build
from bot.chat import block_kit, cards, lock_blocks, threads
from bot.chat.locks import tell_with
from bot.chat.verbs import ChatBackend, Reply, Who, dispatch, press
from bot.config import Settings
from core.access import Principal, Role
from core.errors import DatabaseUnreachable
from core.events import Event
from core.locks import Lock
from core.model import RunState
from core.states import RUN_TERMINAL, RunStatus
from storage.locks import LockStore

log = logging.getLogger(__name__)
CHANNEL = "console"
#: who the console is when no ``--user`` is given (``shipyard console``'s default)
DEFAULT_USER = "console"
#: at the end of the input, how long to wait for the runs the session started to settle
SETTLE_S = 5.0
#: a run at rest: finished, or waiting for a person
RESTING = RUN_TERMINAL | {RunStatus.WAITING, RunStatus.PAUSED}
#: the least time between two looks for other processes' changes while waiting for input
LOOK_EVERY_S = 0.2
#: the emoji the blocks use, as terminal marks
EMOJI_TEXT = {
    ":white_circle:": "·",
    ":hourglass_flowing_sand:": "…",
    ":arrows_counterclockwise:": "▸",
    ":double_vertical_bar:": "‖",
    ":white_check_mark:": "✓",
    ":warning:": "!",
    ":x:": "✗",
    ":alarm_clock:": "⏱",
    ":grey_question:": "?",
    ":no_entry_sign:": "⊘",
    ":fast_forward:": "-",
    ":raised_hand:": "✋",
    ":raising_hand:": "✋",
    ":lock:": "🔒",
    ":unlock:": "🔓",
    ":rewind:": "⏪",
}

Number = Callable[[str, str], int]
#: what a terminal would obey rather than show (escape sequences, carriage returns, bells):
#: C0 controls but newline and tab, DEL and C1 controls
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def render(blocks: list[block_kit.Block], number: Number) -> str:
    """Block Kit as terminal text; each button is shown with ``number(action_id, value)``."""
    lines = []
    for block in blocks:
        kind = block.get("type")
        if kind == "section":
            lines.append(plain(block["text"]["text"]))
        elif kind == "context":
            lines.extend("  " + plain(e.get("text", "")) for e in block.get("elements", []))
        elif kind == "header":
            lines.append(f"== {block['text']['text']} ==")
        elif kind == "actions":
            shown = [
                f"[{number(e['action_id'], e.get('value', ''))}] {e['text']['text']}"
                for e in block.get("elements", [])
            ]
            lines.append("  " + "  ".join(shown))
    return "\n".join(lines)


def plain(mrkdwn: str) -> str:
    text = re.sub(r":[a-z_]+:", lambda m: EMOJI_TEXT.get(m.group(0), m.group(0)), mrkdwn)
    text = re.sub(r"<@([A-Za-z0-9._-]+)>", r"@\1", text)
    return text.replace("*", "").replace("```", "\n")


class ConsoleDesk(ChatBackend):
    """The chat backend with one difference: the console's own user may deploy for the
    session when the database gives it no role (nothing is granted, nothing is audited)."""

    async def principal(self, user: str) -> Principal:
        found = await super().principal(user)
        if user == DEFAULT_USER and not found.roles:
            return replace(found, roles=frozenset({Role.DEPLOYER}))
        return found


@dataclass
class Console:
    backend: ChatBackend
    out: TextIO
    user: str
    #: the buttons shown so far, by number (1-based); a button keeps its number
    buttons: list[tuple[str, str]] = field(default_factory=list)
    numbers: dict[tuple[str, str], int] = field(default_factory=dict)
    #: run id -> its message as last shown, for the runs followed until they finish
    following: dict[str, str] = field(default_factory=dict)
    #: the runs this session started, in order
    started: list[str] = field(default_factory=list)
    #: what was printed once and is not to be printed again (thread posts, lock questions)
    told: set[str] = field(default_factory=set)
    #: run id -> the last of its events whose thread posts were printed
    seen: dict[str, int] = field(default_factory=dict)
    #: (run id, gate id) -> its approval card as last printed (printed again when it changes)
    cards: dict[tuple[str, str], str] = field(default_factory=dict)
    #: one speaker at a time: a command and its reply are never cut by an update
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)

    def say(self, text: str) -> None:
        """Print ``text``, its control characters as ``\\xNN`` (a job's output in a failure post
        must not move the cursor, retitle the window or write the clipboard)."""
        print(CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text), file=self.out, flush=True)

    def number(self, action_id: str, value: str) -> int:
        key = (action_id, value)
        if key not in self.numbers:
            self.buttons.append(key)
            self.numbers[key] = len(self.buttons)
        return self.numbers[key]

    def show(self, reply: Reply) -> None:
        self.say(render(reply.blocks, self.number) if reply.blocks else plain(reply.text))

    def once(self, key: str, blocks: list[block_kit.Block]) -> None:
        if key not in self.told:
            self.told.add(key)
            self.say(render(blocks, self.number))

    async def tell(self, to: str, text: str) -> object:
        """What Slack would send someone else (a direct message, the deploy channel)."""
        self.say(f"(to {plain(block_kit.who(to))}) {plain(text)}")
        return None

    async def follow(self, run_id: str) -> None:
        self.following.setdefault(run_id, "")
        if run_id not in self.started:
            self.started.append(run_id)

    async def refresh(self) -> None:
        """Print what changed: followed runs' messages and thread posts, and lock questions
        for the person typing."""
        for run_id, shown in list(self.following.items()):
            events = await self._new_events(run_id)  # (before the run: it is at least as new)
            state = await self.backend.read(self.backend.reads.run, run_id)
            if state is None:
                continue
            text = render(block_kit.run_message(state)[1], self.number)
            if text != shown:
                self.following[run_id] = text
                self.say(text)
            await self._thread(state, events)
            if state.run.status in RUN_TERMINAL:
                del self.following[run_id]
        await self._lock_questions()

    async def _new_events(self, run_id: str) -> list[Event]:
        events: list[Event] = []
        while True:
            after = events[-1].seq if events else self.seen.get(run_id, 0)
            page = await self.backend.read(self.backend.shipyard.store.events_after, after, 500, run_id)
            events += page
            if len(page) < 500:
                return events

    async def _thread(self, state: RunState, events: list[Event]) -> None:
        """What the Slack notifier posts in a run's thread for its new ``events``, with the same
        blocks; and its approval cards again where they changed (Slack edits them)."""
        run_id = state.run.id
        for event in events:
            self.seen[run_id] = event.seq
            for post in threads.posts_for(state, event):
                said = await cards.compose(self.backend, state, post)
                if said is None:
                    continue
                if not isinstance(post, threads.GateCard):
                    self.once(f"{run_id}:{post.key}", said[1])
                elif (run_id, post.gate.id) not in self.cards:
                    self.cards[(run_id, post.gate.id)] = text = render(said[1], self.number)
                    self.say(text)
        for gate in state.gates if events else ():  # (a card changes with an event of its run)
            shown = self.cards.get((run_id, gate.id))
            if shown is None:
                continue
            text = render((await cards.gate_card(self.backend, state, gate))[1], self.number)
            if text != shown:
                self.cards[(run_id, gate.id)] = text
                self.say(text)

    async def _lock_questions(self) -> None:
        """What the lock keeper asks a holder, for the person typing: a handover request (Hand
        over / Keep it) and, ahead of expiry, a reminder (Extend 1h / Release). Read only, so a
        server's keeper on the same database still tells its Slack users."""
        at = now()
        locks = await self.backend.read(LockStore(self.backend.shipyard.store).all, at)
        asked: set[str] = set()
        for lock in (lock for lock in locks if lock.holder == self.user):
            since = lock.since.isoformat()
            if lock.handover_requested_by:
                key = f"handover:{lock.environment}:{since}:{lock.handover_requested_by}"
                asked.add(key)
                if key not in self.told:  # (asked again after "Keep it": asked again here)
                    self.say(render(lock_blocks.handover_prompt(lock, at)[1], self.number))
            if self._expires_soon(lock, at):
                self.once(
                    f"reminder:{lock.environment}:{since}:{lock.expires_at}",
                    lock_blocks.reminder(lock, at)[1],
                )
        self.told = {key for key in self.told if not key.startswith("handover:")} | asked

    def _expires_soon(self, lock: Lock, at: datetime) -> bool:
        if lock.expires_at is None:
            return False
        lead = self.backend.shipyard.settings.environment(lock.environment).lock_reminder
        return lock.expires_at - at <= timedelta(seconds=lead)

    async def line(self, text: str) -> bool:
        """Handle one input line; False to stop."""
        words = text.strip().split(maxsplit=2)
        if not words or words[0].startswith("#"):
            return True
        head = words[0]
        if head in ("quit", "exit"):
            return False
        async with self.turn:
            await self._line(text, words)
            await self.refresh()
        return True

    async def _line(self, text: str, words: list[str]) -> None:
        head = words[0]
        who = Who(self.user, CHANNEL, "console")
        if head == "as" and len(words) > 1:
            self.user = words[1]
            self.say(f"(you are now {self.user})")
            await self.introduce()
        elif head == "press" and len(words) > 1 and words[1].isascii() and words[1].isdigit():
            index = int(words[1])
            if not 1 <= index <= len(self.buttons):
                self.say(f"no button {index}")
            else:
                action, value = self.buttons[index - 1]
                reply = await press(self.backend, who, action, value, words[2] if len(words) > 2 else "")
                self.show(reply or Reply("ok"))
        elif head == "wait" and len(words) > 1:
            await self.wait(words[1], words[2] if len(words) > 2 else None)
        elif head.startswith("/deploy") or head == "deploy":
            self.show(await dispatch(self.backend, who, text.strip().partition(" ")[2]))
        else:
            self.say("say `/deploy help`, `press N [reason]`, `as USER`, `wait RUN [STATUS]` or `quit`")

    async def introduce(self) -> None:
        """Say what the person typing may do when the database gives them no role."""
        found = await self.backend.read(self.backend.directory.principal, self.user, now())
        if found.roles:
            return
        if self.user == DEFAULT_USER:
            self.say(
                f"(you are `{DEFAULT_USER}`: you may deploy in this console session; nothing is "
                "granted in the database. For a lasting role: `shipyard access grant NAME deployer`)"
            )
        else:
            self.say(
                f"({self.user} has no role here, so only what anyone may do works; an admin "
                f"grants one with `shipyard access grant {self.user} deployer`)"
            )

    async def wait(self, ref: str, status: str | None, timeout: float = 600) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            state = await self.backend.read(self.backend.reads.run, ref)
            await self.refresh()
            if state is not None and (
                state.run.status == status or (status is None and state.run.status in RUN_TERMINAL)
            ):
                return
            await self.backend.shipyard.orchestrator.wait_for_events(LOOK_EVERY_S)
        self.say(f"(gave up waiting for {ref})")

    async def watch(self) -> None:
        """While the person types (or the script is read): print updates as they happen."""
        orchestrator = self.backend.shipyard.orchestrator
        every = max(self.backend.shipyard.settings.poll_interval, LOOK_EVERY_S)
        while True:
            await orchestrator.wait_for_events(every)  # (this engine's events wake it at once)
            try:
                async with self.turn:
                    await self.refresh()
            except DatabaseUnreachable:  # (said once by the engine's health): look again next time
                log.debug("the console waits for the database")
            except Exception:
                log.warning("could not refresh the console", exc_info=True)

    async def settle(self, timeout: float) -> None:
        """At the end: wait (up to ``timeout``) for the runs this session started to finish or
        to wait for a person, then say where each one is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self.turn:
            while True:
                states = [
                    s for r in self.started if (s := await self.backend.read(self.backend.reads.run, r))
                ]
                moving = [s for s in states if s.run.status not in RESTING]
                left = deadline - loop.time()
                if not moving or left <= 0:
                    break
                await self.backend.shipyard.orchestrator.wait_for_events(min(LOOK_EVERY_S, left))
                await self.refresh()
            await self.refresh()
            for state in states:
                self.say(_where(state))


def _where(state: RunState) -> str:
    run = state.run
    if run.status in RUN_TERMINAL:
        return f"{run.ref}: {run.status}"
    if run.status in RESTING:
        return f"{run.ref}: {run.status}" + (f" ({run.reason})" if run.reason else "")
    return (
        f"{run.ref}: still {run.status}; it goes on the next time Shipyard runs against this "
        "database (`shipyard serve` or `shipyard console`)"
    )


async def run_console(
    settings: Settings, user: str, lines: TextIO, out: TextIO, *, settle_s: float = SETTLE_S
) -> int:
    shipyard = build(settings)
    await shipyard.start()
    backend = ConsoleDesk()
    backend.bind(shipyard)
    watching: asyncio.Task[None] | None = None
    try:
        console = Console(backend, out, user)
        backend.on_run_started = console.follow
        tell_with(backend, console.tell)
        await console.introduce()
        watching = asyncio.create_task(console.watch(), name="shipyard-console-watch")
        reader = _reader(lines)
        while True:
            text = await reader()
            if text is None or not await console.line(text):
                break
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await console.settle(settle_s)
        return 0
    finally:
        if watching is not None and not watching.done():
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        await backend.close()
        await shipyard.stop()


def _reader(lines: TextIO) -> Callable[[], Any]:
    async def read() -> str | None:
        text = await asyncio.to_thread(lines.readline)
        return text if text else None

    return read


def main(settings: Settings, user: str) -> int:
    return asyncio.run(run_console(settings, user, sys.stdin, sys.stdout))

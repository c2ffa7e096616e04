"""``shipyard console``: the Slack bot in a terminal, for people without a workspace.

It reads ``/deploy …`` lines and hands them to the very same verbs (``bot.chat.verbs``) against
an engine running in this process, renders their Block Kit as text, shows buttons as numbered
choices (``press N [reason]``), and prints each run's message as it changes. A few words of
its own help scripting: ``as USER`` switches who is typing, ``wait RUN [STATUS]`` waits until a
run reaches a status (default: finished), ``quit``. It exits at the end of its input."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from bot.backend import now
from bot.bootstrap import build
from bot.chat import blocks as bk
from bot.chat.verbs import Desk, Reply, Who, dispatch, press
from bot.config import Settings
from core.access import Role
from core.states import RUN_TERMINAL

CHANNEL = "console"


def render(blocks: list[bk.Block], buttons: list[tuple[str, str]]) -> str:
    """Block Kit as terminal text; buttons are appended to ``buttons`` and shown numbered."""
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
            shown = []
            for element in block.get("elements", []):
                buttons.append((element["action_id"], element.get("value", "")))
                shown.append(f"[{len(buttons)}] {element['text']['text']}")
            lines.append("  " + "  ".join(shown))
    return "\n".join(lines)


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
}


def plain(mrkdwn: str) -> str:
    text = re.sub(r":[a-z_]+:", lambda m: EMOJI_TEXT.get(m.group(0), m.group(0)), mrkdwn)
    text = re.sub(r"<@([A-Za-z0-9._-]+)>", r"@\1", text)
    return text.replace("*", "").replace("```", "\n")


@dataclass
class Console:
    desk: Desk
    out: TextIO
    user: str
    buttons: list[tuple[str, str]] = field(default_factory=list)
    following: dict[str, str] = field(default_factory=dict)  # run id -> last message shown

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def show(self, reply: Reply) -> None:
        self.say(render(reply.blocks, self.buttons) if reply.blocks else plain(reply.text))

    async def follow(self, run_id: str, channel: str) -> None:
        self.following.setdefault(run_id, "")

    async def refresh(self) -> None:
        """Print the message of each followed run whose content changed."""
        for run_id, shown in list(self.following.items()):
            state = await self.desk.read(self.desk.reads.run, run_id)
            if state is None:
                continue
            _, blocks = bk.run_message(state)
            for gate in state.gates:
                if gate.status == "open" and gate.kind == "manual":
                    blocks = blocks + bk.gate_card(state, gate, None)[1]
            text = render(blocks, [])
            if text != shown:
                self.following[run_id] = text
                self.say(render(blocks, self.buttons))
            if state.run.status in RUN_TERMINAL:
                del self.following[run_id]

    async def line(self, text: str) -> bool:
        """Handle one input line; False to stop."""
        words = text.strip().split(maxsplit=2)
        if not words or words[0].startswith("#"):
            return True
        head = words[0]
        who = Who(self.user, CHANNEL, "console")
        if head in ("quit", "exit"):
            return False
        if head == "as" and len(words) > 1:
            self.user = words[1]
            self.say(f"(you are now {self.user})")
        elif head == "press" and len(words) > 1 and words[1].isdigit():
            index = int(words[1])
            if not 1 <= index <= len(self.buttons):
                self.say(f"no button {index}")
            else:
                action, value = self.buttons[index - 1]
                reply = await press(self.desk, who, action, value, words[2] if len(words) > 2 else "")
                self.show(reply or Reply("ok"))
        elif head == "wait" and len(words) > 1:
            await self.wait(words[1], words[2] if len(words) > 2 else None)
        elif head.startswith("/deploy") or head == "deploy":
            self.show(await dispatch(self.desk, who, text.strip().partition(" ")[2]))
        else:
            self.say("say `/deploy help`, `press N [reason]`, `as USER`, `wait RUN [STATUS]` or `quit`")
        await self.refresh()
        return True

    async def wait(self, ref: str, status: str | None, timeout: float = 600) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            state = await self.desk.read(self.desk.reads.run, ref)
            if state is not None and (
                state.run.status == status or (status is None and state.run.status in RUN_TERMINAL)
            ):
                await self.refresh()
                return
            await self.refresh()
            await self.desk.yard.orchestrator.wait_for_events(0.2)
        self.say(f"(gave up waiting for {ref})")


async def run_console(settings: Settings, user: str, lines: TextIO, out: TextIO) -> int:
    yard = build(settings)
    await yard.start()
    desk = Desk()
    desk.bind(yard)
    try:
        principal = await desk.principal(user)
        if not principal.roles:
            await desk.write(desk.directory.grant, user, "role", str(Role.DEPLOYER), now())
            print(f"(granted {user} the deployer role, so you can try things)", file=out)
        console = Console(desk, out, user)
        desk.on_run_started = console.follow
        reader = _reader(lines)
        while True:
            text = await reader()
            if text is None or not await console.line(text):
                break
        return 0
    finally:
        desk.close()
        await yard.stop()


def _reader(lines: TextIO) -> Callable[[], Any]:
    async def read() -> str | None:
        text = await asyncio.to_thread(lines.readline)
        return text if text else None

    return read


def main(settings: Settings, user: str) -> int:
    return asyncio.run(run_console(settings, user, sys.stdin, sys.stdout))

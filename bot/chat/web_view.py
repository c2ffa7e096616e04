"""``/deploy login``: a one-time link, for the asker alone, that signs them in to the web view
as their Slack identity (valid five minutes, used once; ``storage.web``)."""

from __future__ import annotations

from bot.backend import now
from bot.chat.parse import Line
from bot.chat.verbs import ChatBackend, Reply, Who, verb
from bot.web.signin import web_sessions
from storage.web import LINK_TTL


@verb("login", "login", "a link that signs you in to the web view (for you alone, 5 minutes, once)", words=0)
async def login(backend: ChatBackend, who: Who, line: Line) -> Reply:
    secret = await backend.write(web_sessions(backend.shipyard).new_link, who.user, now())
    url = f"{backend.shipyard.settings.base_url}/ui/login/{secret}"
    minutes = int(LINK_TTL.total_seconds() // 60)
    return Reply(
        f"<{url}|Sign in to Shipyard's web view> as {who.user}: the link works once, "
        f"within {minutes} minutes. Do not share it."
    )

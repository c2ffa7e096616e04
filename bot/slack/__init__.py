"""Shipyard's Slack app: what it asks of Slack (``manifest``), the Bolt app (``bot``), run
messages (``notifier``), App Home (``home``) and the Socket Mode connection (``socket``).
``setup`` mounts it in the web application and tells ``/readyz`` how it hears from Slack."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from bot.config import Settings

log = logging.getLogger(__name__)


class Connection(Protocol):
    def detail(self) -> dict[str, Any]: ...


@dataclass
class SlackStatus:
    """How Shipyard hears from Slack, for ``/readyz``: ``off``, ``http`` (Slack posts to
    ``/slack/events``) or ``socket`` (with the Socket Mode connection's state). Slack's state
    never makes the service unready: HTTP, runs and schedules go on without it."""

    mode: str
    link: Connection | None = None
    #: set once the first reading of the user groups (``slack_roles``) is done or failed
    roles_read: asyncio.Event = field(default_factory=asyncio.Event)

    def detail(self) -> dict[str, Any]:
        return self.link.detail() if self.link is not None else {"mode": self.mode}


SLACK = web.AppKey("slack", SlackStatus)


def setup(app: web.Application, settings: Settings) -> Callable[[Any], AsyncIterator[None]] | None:
    """Mount the Slack app if it is configured; returns its lifecycle (given the running
    Shipyard), or None after saying once that Slack is off. Starting it waits for no Slack
    call: the Socket Mode connection and the user groups' members come in the background."""
    if not settings.slack_enabled:
        app[SLACK] = SlackStatus("off")
        log.info(
            "Slack is off: set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET (HTTP) or SLACK_APP_TOKEN "
            "(Socket Mode) to turn it on; `shipyard console` speaks the same commands"
        )
        return None
    from bot.chat.verbs import ChatBackend
    from bot.slack.bot import Backlog, build_bolt, mount
    from bot.slack.notifier import Notifier

    backend = ChatBackend()
    work = Backlog()
    bolt = build_bolt(settings, backend, work)
    client = bolt.client
    status = app[SLACK] = SlackStatus("socket" if settings.slack_app_token is not None else "http")
    if settings.slack_signing_secret is not None:
        mount(app, bolt)

    async def lifecycle(shipyard: Any) -> AsyncIterator[None]:
        from bot.slack import roles
        from bot.slack.socket import SocketLink

        backend.bind(shipyard)
        await roles.grant(backend, settings.slack_roles)
        syncing = None
        if settings.slack_roles:
            syncing = asyncio.create_task(
                roles.keep_synced(backend, client, settings.slack_roles, status.roles_read)
            )
        else:
            status.roles_read.set()
        notifier = Notifier(backend, client, settings.slack_channel)
        await notifier.start()
        link = None
        if settings.slack_app_token is not None:
            link = SocketLink(
                bolt,
                settings.slack_app_token.get_secret_value(),
                settings.slack_api_url,
                on_connected=notifier.slack_is_back,
            )
            status.link = link
            link.start()
        else:
            log.info("Slack: receiving commands and events at /slack/events")
        try:
            yield
        finally:
            if link is not None:
                await link.stop()
            await work.drain()
            await notifier.stop()
            if syncing is not None:
                syncing.cancel()
                await asyncio.gather(syncing, return_exceptions=True)
            await backend.close()

    return lifecycle

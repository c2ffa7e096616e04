"""Who may do what in Slack, from configuration (``slack_roles``): Slack user IDs and user-group
IDs mapped to the same roles API tokens have. A user group's members are read from Slack
(``usergroups.users.list``) at start and every few minutes, and kept as membership grants, so
a gate still knows who was in the group when it opened. The configured roles are written as the
service starts; the groups are read in the background, so Slack being down delays no start."""

from __future__ import annotations

import asyncio
import logging

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.backend import Backend, now
from bot.slack.notifier import SEND_FAILED
from core.errors import DatabaseUnreachable

log = logging.getLogger(__name__)
#: how often user-group membership is read again
REFRESH_S = 300.0


async def grant(backend: Backend, roles: dict[str, list[str]]) -> None:
    """The roles the configuration gives, written as they are now (no Slack call)."""
    for who, granted in roles.items():
        await backend.write(backend.directory.sync_roles, who, set(granted), now())


async def sync(backend: Backend, client: AsyncWebClient, roles: dict[str, list[str]]) -> None:
    """The configured roles, then each user group's members as Slack has them now. A group
    Slack does not answer for keeps the members it had (Slack unreachable: all of them)."""
    await grant(backend, roles)
    for who in roles:
        if who.startswith("S"):
            try:
                answer = await client.usergroups_users_list(usergroup=who)
            except SlackApiError as exc:
                log.warning("cannot read members of user group %s: %s", who, exc.response.get("error"))
                continue
            members = {str(m) for m in answer.get("users") or []}
            added, removed = await backend.write(backend.directory.sync_members, who, members, now())
            if added or removed:
                log.info("user group %s: %d joined, %d left", who, added, removed)


async def keep_synced(
    backend: Backend, client: AsyncWebClient, roles: dict[str, list[str]], synced: asyncio.Event
) -> None:
    """Read the user groups now and every ``REFRESH_S``; ``synced`` is set after the first
    round (done or failed). Slack unreachable is one WARNING line until it answers again."""
    failing = False
    while True:
        try:
            await sync(backend, client, roles)
        except DatabaseUnreachable:  # (said once by the engine's health): next round
            log.debug("syncing Slack roles waits for the database")
        except SEND_FAILED as exc:  # Slack unreachable or failing: next round
            if not failing:
                log.warning("reading Slack user groups failed (%r); trying again in %.0f s", exc, REFRESH_S)
            failing = True
        except Exception:  # anything else: next round
            log.exception("syncing Slack roles failed")
        else:
            if failing:
                log.info("reading Slack user groups works again")
            failing = False
        synced.set()
        await asyncio.sleep(REFRESH_S)

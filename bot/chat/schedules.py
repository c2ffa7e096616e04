"""``/deploy schedule``, ``/deploy schedules`` and ``/deploy unschedule``: pipelines that run on
a cron expression in a time zone. A schedule made in chat belongs to whoever made it, and its
runs are theirs; one declared in a pipeline file is changed in the file. Registered on import
(``bot.chat``)."""

from __future__ import annotations

from bot.backend import now
from bot.chat import block_kit
from bot.chat.parse import Line
from bot.chat.verbs import ChatBackend, Refusal, Reply, Who, _usage, verb
from core import schedule as timing
from core.access import Action, Role
from core.definition import resolve_parameters
from storage.schedules import ScheduleStore


@verb(
    "schedule",
    'schedule <pipeline> "<cron>" [tz=Europe/Berlin] [key=value…]',
    "run a pipeline on a schedule (you own it; its runs are yours)",
    Action.TRIGGER,
)
async def schedule(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if len(line.words) != 2:
        raise Refusal(
            'Put the cron expression in quotes: `/deploy schedule web "0 2 * * 1-5" tz=Europe/Berlin`'
        )
    pipeline, expression = line.words
    info = await backend.pipeline(pipeline)
    tz = line.params.pop("tz", "UTC")
    expression = timing.check_cron(expression)
    timing.zone(tz)
    resolve_parameters(info.latest.definition, line.params)  # (else every fire is refused)
    at = now()
    schedule_store = ScheduleStore(backend.shipyard.store)
    created = await backend.write(
        lambda: schedule_store.new(
            pipeline=pipeline,
            cron=expression,
            timezone=tz,
            parameters=dict(line.params),
            owner=who.user,
            source="slack",
            grace_s=timing.DEFAULT_GRACE_S,
            next_fire_at=timing.next_fire(expression, tz, at),
            now=at,
        )
    )
    backend.schedule_added()
    return Reply(
        f"Scheduled `{created.id[:8]}`: {created.describe()}; next run "
        f"{created.next_fire_at:%Y-%m-%d %H:%M} UTC. Remove it with `/deploy unschedule {created.id[:8]}`.",
        public=True,
    )


@verb("schedules", "schedules [pipeline]", "the schedules and when each fires next", words=1)
async def schedules(backend: ChatBackend, who: Who, line: Line) -> Reply:
    found = await backend.read(
        ScheduleStore(backend.shipyard.store).all, line.words[0] if line.words else None
    )
    if not found:
        return Reply('No schedules. Add one: `/deploy schedule web "0 2 * * 1-5" tz=Europe/Berlin`')
    rows = [
        f"`{s.id[:8]}` {s.describe()} — next {s.next_fire_at:%Y-%m-%d %H:%M} UTC, by {block_kit.who(s.owner)}"
        + (" (pipeline file)" if s.source == "file" else "")
        for s in found[:40]
    ]
    return Reply("\n".join(rows))


@verb("unschedule", "unschedule <id>", "remove a schedule you own", Action.TRIGGER, words=1)
async def unschedule(backend: ChatBackend, who: Who, line: Line) -> Reply:
    if not line.words:
        raise Refusal(_usage("unschedule"))
    schedule_store = ScheduleStore(backend.shipyard.store)
    matches = [s for s in await backend.read(schedule_store.all, None) if s.id.startswith(line.words[0])]
    if len(matches) != 1:
        raise Refusal(f"No single schedule starts with `{line.words[0]}`; see `/deploy schedules`.")
    found = matches[0]
    if found.source == "file":
        raise Refusal(f"That schedule is declared in {found.pipeline}'s pipeline file; change the file.")
    principal = await backend.principal(who.user)
    if found.owner != who.user and Role.ADMIN not in principal.roles:
        raise Refusal(
            f"That schedule belongs to {block_kit.who(found.owner)}; only they or an admin may remove it."
        )
    await backend.write(schedule_store.remove, found.id, now())
    return Reply(f"Removed schedule `{found.id[:8]}` ({found.describe()}).", public=True)

"""``/deploy schedule``, ``/deploy schedules`` and ``/deploy unschedule``: pipelines that run on
a cron expression in a time zone. A schedule made in chat belongs to whoever made it, and its
runs are theirs; one declared in a pipeline file is changed in the file. Registered on import
(``bot.chat``)."""

from __future__ import annotations

from bot.backend import now
from bot.chat import block_kit
from bot.chat.parse import Line
from bot.chat.verbs import ChatBackend, Refusal, Reply, Who, _usage, verb
from bot.scheduler import pause_by_hand, resume_by_hand
from core import schedule as timing
from core.access import Action, Role
from core.definition import resolve_parameters
from core.errors import Conflict
from core.schedule import Schedule
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


#: schedules ``/deploy schedules`` shows (one message); it says how many more there are
LISTED = 40


@verb("schedules", "schedules [pipeline]", "the schedules and when each fires next", words=1)
async def schedules(backend: ChatBackend, who: Who, line: Line) -> Reply:
    found = await backend.read(
        ScheduleStore(backend.shipyard.store).all, line.words[0] if line.words else None
    )
    if not found:
        return Reply('No schedules. Add one: `/deploy schedule web "0 2 * * 1-5" tz=Europe/Berlin`')
    rows = [_row(s) for s in found[:LISTED]]
    if len(found) > LISTED:
        rows.append(
            f"… and {len(found) - LISTED} more: `/deploy schedules <pipeline>` lists one pipeline's, "
            "`GET /api/v1/schedules` all."
        )
    return Reply("\n".join(rows))


def _row(s: Schedule) -> str:
    """One schedule as ``/deploy schedules`` lists it: a paused one says why, and not when."""
    source = " (pipeline file)" if s.source == "file" else ""
    if s.paused_reason:
        resume = "" if s.source == "file" else f"; `/deploy resume-schedule {s.id[:8]}`"
        return (
            f"`{s.id[:8]}` {s.describe()} — :double_vertical_bar: *paused*: {s.paused_reason}{resume}, "
            f"by {block_kit.who(s.owner)}{source}"
        )
    when = f"next {s.next_fire_at:%Y-%m-%d %H:%M} UTC"
    return f"`{s.id[:8]}` {s.describe()} — {when}, by {block_kit.who(s.owner)}{source}"


@verb("unschedule", "unschedule <id>", "remove a schedule you own", Action.TRIGGER, words=1)
async def unschedule(backend: ChatBackend, who: Who, line: Line) -> Reply:
    found = await _own(backend, who, line, "unschedule", "remove")
    schedule_store = ScheduleStore(backend.shipyard.store)
    if not await backend.write(schedule_store.remove, found.id, now()):
        raise Refusal(f"Schedule `{found.id[:8]}` was removed meanwhile; see `/deploy schedules`.")
    return Reply(f"Removed schedule `{found.id[:8]}` ({found.describe()}).", public=True)


@verb(
    "pause-schedule",
    "pause-schedule <id>",
    "stop a schedule you own firing until resumed",
    Action.TRIGGER,
    words=1,
)
async def pause_schedule(backend: ChatBackend, who: Who, line: Line) -> Reply:
    found = await _own(backend, who, line, "pause-schedule", "pause")
    try:
        await pause_by_hand(backend, found, who.user)
    except Conflict as exc:
        raise Refusal(f"Schedule `{found.id[:8]}` {exc.message}; see `/deploy schedules`.") from None
    return Reply(
        f"Paused schedule `{found.id[:8]}` ({found.describe()}). "
        f"Resume it with `/deploy resume-schedule {found.id[:8]}`.",
        public=True,
    )


@verb(
    "resume-schedule",
    "resume-schedule <id>",
    "fire a paused schedule again (from its next fire; what it missed meanwhile does not run)",
    Action.TRIGGER,
    words=1,
)
async def resume_schedule(backend: ChatBackend, who: Who, line: Line) -> Reply:
    found = await _own(backend, who, line, "resume-schedule", "resume")
    try:
        following = await resume_by_hand(backend, found, who.user)
    except Conflict as exc:
        raise Refusal(f"Schedule `{found.id[:8]}` {exc.message}; see `/deploy schedules`.") from None
    return Reply(
        f"Resumed schedule `{found.id[:8]}` ({found.describe()}); next run {following:%Y-%m-%d %H:%M} UTC.",
        public=True,
    )


async def _own(backend: ChatBackend, who: Who, line: Line, verb_name: str, doing: str) -> Schedule:
    """The one schedule whose id starts with the line's word, if ``who`` may change it."""
    if not line.words:
        raise Refusal(_usage(verb_name))
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
            f"That schedule belongs to {block_kit.who(found.owner)}; only they or an admin may {doing} it."
        )
    return found

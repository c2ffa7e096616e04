"""Run messages, driven by the engine's event log.

Each run that reports to Slack gets one message, posted on its first event and edited in place
as it moves (at most about once a second per run, however busy it is); notable events go to
its thread: a gate waiting (the approval card, edited when decided), a failed job with its last
log lines, the result. The position in the log and every message's ts are stored, and each
thread post is claimed in the database before it is sent, so neither a restart nor a Slack
outage loses or repeats one: a send that fails is tried again later, with a growing wait
(``POST_BACKOFF``), by handling the event that called for it again (``storage.slack`` keeps
where each post is, so a restart carries on). Gate cards are edited like run messages (with
the run's, at most about once a second): approvals so far, then who decided. Which event
becomes which thread post, and what it says, is ``bot.chat.threads`` (the console tells the same).

Slack errors are of two kinds. Transient ones (rate limits, 5xx, timeouts, Slack unreachable)
are tried again: a thread post with the backoff above, a run message by the next step. Final
ones (``channel_not_found``, ``not_in_channel``, ``is_archived``, ``invalid_auth`` …: Slack
understood and refused, see ``is_final``) are not: the post, or the run's message, is recorded
as given up (``storage.slack``) and logged once at WARNING with the run, the channel and the
error, and the notifier goes on with the next events, so one bad channel holds up no other run.
An outage is one WARNING line (no traceback) and one line when Slack answers again; then, or
when the Socket Mode connection is made (``slack_is_back``), it catches up at once: the thread
posts waiting for a retry are due now, and run messages whose edits were given up are edited.

A change of an environment's health (``environment.health_changed`` in the event log) is posted
in the environment's channel (its ``slack_channel``; the default ``slack_channel`` when it names
none), claimed and retried like a thread post (its key: ``health:<env>:<event seq>``, of no run).

App Home views of the people who opened them are published again when what they show
changes: runs, gates, deployments, environment locks and health, all read from the event log
(every lock change appends its event, whichever door it came through)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot import metrics
from bot.backend import now
from bot.chat import block_kit, cards, lock_blocks, rollout_blocks, threads
from bot.chat import health as health_words
from bot.chat.environments import review_reminder
from bot.chat.locks import released
from bot.chat.verbs import ChatBackend
from bot.slack.home import publish_home
from core.admission import QueueEntry
from core.analysis import Health, HealthChange, announced_as
from core.checks import Measurement
from core.errors import DatabaseUnreachable
from core.events import NO_RUN, Event
from core.labels import WAIT_S
from core.locks import EVENT_NAMES, Lock, LockAction
from core.model import RunState
from core.review import REMIND_EVERY_S, reminder_number
from core.runtime.waiting import wait_event
from core.states import RUN_TERMINAL, JobStatus
from storage import analyses
from storage.reviews import ReviewStore
from storage.slack import PendingPost, SlackState
from storage.store import SqlStore

log = logging.getLogger(__name__)
CURSOR = "slack"
#: the event of an environment's health changing, posted in its channel
HEALTH_CHANGED = "environment.health_changed"
LOCK_ACQUIRED = EVENT_NAMES[LockAction.ACQUIRE]
LOCK_RELEASED = EVENT_NAMES[LockAction.RELEASE]
#: where a lock may be taken or released that the deploy channel does not see (a Slack command
#: answers in the channel itself): such a change is told there from its event
OUTSIDE_SLACK = {"rest": "the API", "web": "the web view", "console": "the console"}
#: the longest the notifier goes without looking for reminders due (a gate opening, which it
#: sees as an event, makes it look at once)
REMIND_IDLE_S = 300.0
#: App Home views refreshed at most per batch of events (the rest refresh when next opened)
HOME_REFRESH_MAX = 50
#: set in tests only: the process exits with this code right before posting a run's message
#: (after the run's commit), as a crash there would
CRASH_BEFORE_POST = "SHIPYARD_TEST_CRASH_BEFORE_POST"
CRASH_EXIT_CODE = 86
FINISHED = threads.FINISHED
#: the least time between two edits of one run's message
EDIT_EVERY_S = 1.0
#: how often the message of a run in a timed rollout step is edited with no event (its time
#: left and the step analysis' newest measurements)
ROLLOUT_REFRESH_S = 15.0
#: how often the message of a run with a job waiting for a runner is looked at again with no
#: event (a runner going offline is no event); it is edited only when what it says changes
RUNNER_RECHECK_S = 30.0
#: the waits before each new try of a thread post whose send failed (about an hour in all),
#: after which it is given up
POST_BACKOFF = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0] + [300.0] * 11
#: how often posts waiting for a retry are looked for in the database (another replica's, or
#: this process's before a restart); this process's own are tried when due
PENDING_LOOK_S = 30.0
#: the health changes read to decide whether one held (``_settled``)
HISTORY = 200
#: how long a stop waits for the step under way (Slack calls time out after their own limit)
STOP_GRACE_S = 5.0
#: the waits before each new try of a run message's edit that failed (kept in memory: after a
#: restart the message is edited again on the run's next event)
EDIT_BACKOFF = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
#: errors after which an edit is not tried again (the message or channel is gone, or refused it)
EDIT_FINAL = frozenset(
    {"message_not_found", "channel_not_found", "cant_update_message", "edit_window_closed", "is_archived"}
)
#: what a failed send to Slack raises: Slack answered an error, or could not be reached
SEND_FAILED = (SlackClientError, aiohttp.ClientError, TimeoutError, OSError)
#: errors Slack answers about its own state, not the request: worth trying again
TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


def is_final(exc: BaseException) -> bool:
    """Whether trying the send again cannot help: Slack was reached and refused the request
    itself (``channel_not_found``, ``not_in_channel``, ``is_archived``, ``invalid_auth``,
    ``invalid_blocks`` …). Rate limits, 5xx answers, errors about Slack's own state, timeouts
    and unreachable Slack are worth another try."""
    if not isinstance(exc, SlackApiError):
        return False
    status = exc.response.status_code
    return status != 429 and status < 500 and str(exc.response.get("error")) not in TRANSIENT_ERRORS


def _error(exc: BaseException) -> str:
    return str(exc.response.get("error")) if isinstance(exc, SlackApiError) else repr(exc)


class Notifier:
    def __init__(self, backend: ChatBackend, client: AsyncWebClient, default_channel: str | None) -> None:
        self.backend = backend
        self.client = client
        self.default_channel = default_channel
        self.state = SlackState(backend.shipyard.store)
        self._dirty: dict[str, float] = {}  # run id -> when its message may next be edited
        self._refreshes: set[str] = set()  # runs in _dirty only to refresh a rollout's clock
        self._edited: dict[str, float] = {}
        self._cards: dict[str, set[str]] = {}  # run id -> gates whose cards to edit with it
        #: runs with queued jobs -> when to look again at what they wait for (monotonic)
        self._wait_checks: dict[str, float] = {}
        #: run id -> why its jobs wait for a runner, as its message last said (or a look found)
        self._waits_said: dict[str, tuple[tuple[str, str], ...]] = {}
        self._edit_failures: dict[str, int] = {}
        #: run id -> when the oldest change its message does not show yet happened (edit lag)
        self._changed: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._next_reminders = 0.0
        self._pending_due = 0.0  # epoch seconds: the soonest retry of a post known here
        self._pending_look = 0.0  # monotonic: when to look for other processes' again
        self._stale: set[str] = set()  # runs whose message's edit was given up (Slack was down)
        self._unreachable: str | None = None  # why the last step could not reach Slack
        self._back = False  # Slack answers again: catch up (``slack_is_back``)
        self._nudge = asyncio.Event()  # ends the pause after a failed step

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="shipyard-slack-notifier")

    async def stop(self) -> None:
        """Let the step under way finish (a send whose answer came back is recorded, so a
        failed post is retried after a restart instead of left ``sending``), then end; a step
        stuck on Slack for longer than ``STOP_GRACE_S`` is cancelled."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        self._nudge.set()
        done, _ = await asyncio.wait({self._task}, timeout=STOP_GRACE_S)
        if not done:
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def slack_is_back(self) -> None:
        """Slack answers again (the Socket Mode connection is up): what waits for it is tried
        now rather than at the end of its backoff: the step, the thread posts waiting for a
        retry (this process's and others'), and the edits of run messages given up meanwhile."""
        self._back = True
        self._nudge.set()
        self._wake.set()

    async def _loop(self) -> None:
        orchestrator = self.backend.shipyard.orchestrator
        interval = self.backend.shipyard.settings.poll_interval
        self._wake = appended = orchestrator.listen()
        while not self._stopping:
            appended.clear()
            self._nudge.clear()
            try:
                busy = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Slack or the database is down: try again shortly
                self._failed(exc)
                busy = False
                await wait_event(self._nudge, min(5.0, interval * 5))  # (or once Slack is back)
            else:
                self._answered()
            if busy or self._stopping:
                continue
            wait = interval  # other processes' events are found by polling
            if self._dirty:
                wait = min(wait, max(0.01, min(self._dirty.values()) - time.monotonic()))
            wait = min(wait, max(0.01, self._pending_due - time.time()))
            if self._wait_checks:
                wait = min(wait, max(0.01, min(self._wait_checks.values()) - time.monotonic()))
            await wait_event(appended, wait)

    def _failed(self, exc: Exception) -> None:
        """A failed step, logged once while Slack stays unreachable or failing (no traceback:
        an outage is not a bug); anything else with its traceback."""
        if isinstance(exc, DatabaseUnreachable):  # (said once by the engine's health)
            log.debug("slack notifier waits for the database")
        elif not isinstance(exc, SEND_FAILED) or is_final(exc):
            log.exception("slack notifier step failed; retrying")
        elif self._unreachable is None:
            self._unreachable = (
                _error(exc) if isinstance(exc, SlackApiError) else f"{type(exc).__name__}: {exc}"
            )
            log.warning(
                "Slack: cannot post run messages (%s); they wait and are posted once Slack answers",
                self._unreachable,
            )

    def _answered(self) -> None:
        if self._unreachable is not None:
            self._unreachable = None
            self._back = True  # (the edits given up meanwhile are made next step)
            log.info("Slack: posting run messages again")

    async def _catch_up(self) -> None:
        """After an outage: the thread posts waiting for a retry are due now, and the run
        messages whose edits were given up are edited again."""
        self._back = False
        await self.backend.write(self.state.retry_now, now())
        self._pending_due = 0.0
        for run_id in self._stale:
            self._due(run_id, 0.0)
        self._stale.clear()

    async def step(self) -> bool:
        """Read new events, post what they call for, edit messages that are due. Runs are
        handled side by side (each run's events in order), so a burst of finishing runs does
        not queue behind one slow Slack call."""
        if self._back:
            await self._catch_up()
        cursor = await self.backend.read(self.state.cursor, CURSOR, quick=True)
        events = await self.backend.read(self.backend.shipyard.store.events_after, cursor, 500)
        by_run: dict[str, list[Event]] = {}
        for event in events:
            if event.run_id != NO_RUN:  # locks, artifacts, ...: nothing for a run's thread (App Home below)
                by_run.setdefault(event.run_id, []).append(event)
        limit = asyncio.Semaphore(8)

        async def one(run_events: list[Event]) -> None:
            async with limit:
                await self._on_events(run_events)

        # every run is handled before a failure (Slack down) ends the step: the step is done
        # again, each post claimed once, and no run's handling is left running behind it
        done = await asyncio.gather(*(one(e) for e in by_run.values()), return_exceptions=True)
        for event in events:
            if event.run_id == NO_RUN:
                await self._on_environment(event)
        if failures := [e for e in done if isinstance(e, BaseException)]:
            raise failures[0]
        if any(_changes_home(e) for e in events):
            viewers = sorted(self.backend.home_viewers)[:HOME_REFRESH_MAX]
            await asyncio.gather(*(self._home(user) for user in viewers))
        if events and not await self.backend.write(self.state.advance, CURSOR, cursor, events[-1].seq):
            log.info("another process moved the slack cursor; following it")
        await self._look_at_waits()
        await self._flush()
        await self._retry_posts()
        if time.monotonic() >= self._next_reminders:
            wait = await self._remind()
            self._next_reminders = time.monotonic() + min(max(wait, 0.5), REMIND_IDLE_S)
        return len(events) == 500

    def _due(self, run_id: str, at: float) -> None:
        """Edit the run's message at ``at`` (monotonic) unless an edit is planned already (one
        planned after a failed edit keeps its backoff); a rollout's mere refresh gives way."""
        if run_id in self._refreshes:
            self._refreshes.discard(run_id)
            self._dirty.pop(run_id, None)
        self._dirty.setdefault(run_id, at)

    async def _on_events(self, events: list[Event]) -> None:
        state = await self.backend.read(self.backend.reads.run, events[0].run_id, quick=True)
        if state is None:
            return
        message = await self._message(state)
        if message is None:
            return
        if any(j.status is JobStatus.QUEUED for j in state.jobs):  # (shortly: before it is said)
            self._wait_checks[state.run.id] = time.monotonic() + WAIT_S + 0.5
        for event in events:
            await self._on_event(state, message, event)

    async def _look_at_waits(self) -> None:
        """Runs with queued jobs: edit the message when why they wait for a runner changed
        (a runner went offline or came back, which is no event); look again slowly meanwhile."""
        due = [run_id for run_id, at in self._wait_checks.items() if at <= time.monotonic()]
        changed = False
        for run_id in due:
            state = await self.backend.read(self.backend.reads.run, run_id, quick=True)
            if state is None or not any(j.status is JobStatus.QUEUED for j in state.jobs):
                self._wait_checks.pop(run_id, None)
                self._waits_said.pop(run_id, None)
                continue
            self._wait_checks[run_id] = time.monotonic() + RUNNER_RECHECK_S
            waits = await self.backend.read(self.backend.shipyard.runners.waits, state.jobs, now())
            if tuple(sorted(waits.items())) != self._waits_said.get(run_id, ()):
                self._due(run_id, self._edited.get(run_id, 0.0) + EDIT_EVERY_S)
                changed = True
        if changed:  # (App Home lists the runners jobs wait for)
            viewers = sorted(self.backend.home_viewers)[:HOME_REFRESH_MAX]
            await asyncio.gather(*(self._home(user) for user in viewers))

    async def _on_event(self, state: RunState, message: tuple[str, str], event: Event) -> None:
        channel, ts = message
        run_id = state.run.id
        self._due(run_id, self._edited.get(run_id, 0.0) + EDIT_EVERY_S)
        self._changed.setdefault(run_id, event.at)
        if event.subject == "stage" and event.to_status in ("running", "queued", "canceled"):
            stage = next((s for s in state.stages if s.id == event.subject_id), None)
            if stage is not None and stage.environment is not None:  # the others' places moved
                queue = await self.backend.read(self.backend.shipyard.service.queue, stage.environment)
                for entry in queue.waiting:
                    self._due(entry.run_id, self._edited.get(entry.run_id, 0.0) + EDIT_EVERY_S)
        if event.subject == "gate" and event.to_status == "open":
            self._next_reminders = 0.0  # its reminders are to be planned
        elif event.subject == "gate" and (
            event.name == "gate.approval_added" or (event.from_status == "open" and event.to_status != "open")
        ):
            self._cards.setdefault(run_id, set()).add(event.subject_id)  # edited with the run message
        elif event.subject == "run" and event.to_status in FINISHED:
            self._dirty[run_id] = 0.0  # the final state shows at once
        for post in threads.posts_for(state, event):
            said = await cards.compose(self.backend, state, post)
            if said is not None:
                await self._thread(state, channel, ts, post.key, *said, seq=event.seq)

    async def _message(self, state: RunState) -> tuple[str, str] | None:
        """The run's (channel, thread its posts go to), posting its message first if it has
        none yet. A run started from chat was routed in its own transaction; any other goes to
        its pipeline's channel, else the default one."""
        found = await self.backend.read(self.state.message, state.run.id, quick=True)
        if found is None:
            channel = state.definition.channel or self.default_channel
            if channel is None:
                return None  # a run nobody asked to hear about in Slack
            await self.backend.write(self.state.route, state.run.id, channel, now())
            found = await self.backend.read(self.state.message, state.run.id, quick=True)
            assert found is not None
        if found.ts is not None:
            return found.channel, found.thread or found.ts
        if found.gave_up_at is not None:
            return None  # (Slack refused it for good: the run is not reported there)
        summary, blocks = block_kit.run_message(state, link=self._link(state))
        if os.environ.get(CRASH_BEFORE_POST):
            os._exit(CRASH_EXIT_CODE)
        try:
            answer = await self.client.chat_postMessage(
                channel=found.channel, thread_ts=found.thread, text=summary, blocks=blocks
            )
        except SEND_FAILED as exc:
            final = is_final(exc)
            if await self.backend.write(self.state.message_failed, state.run.id, _error(exc), now(), final):
                log.warning(
                    "gave up posting the message of %s to Slack channel %s: %s (it is not reported there)",
                    state.run.ref,
                    found.channel,
                    _error(exc),
                )
            if final:
                return None
            raise  # (tried again with the step)
        ts = str(answer["ts"])
        if not await self.backend.write(self.state.posted, state.run.id, ts):
            # another process posted it first: keep theirs, remove ours
            await self.client.chat_delete(channel=found.channel, ts=ts)
            again = await self.backend.read(self.state.message, state.run.id)
            assert again is not None and again.ts is not None
            return again.channel, again.thread or again.ts
        self._edited[state.run.id] = time.monotonic()
        return found.channel, found.thread or ts

    async def _thread(
        self, state: RunState, channel: str, ts: str, key: str, summary: str, blocks: Any, *, seq: int = 0
    ) -> None:
        """Post ``key`` in the run's thread once. ``seq``: the event that calls for it, handled
        again when the send fails and its retry is due (0: a reminder, made again by the
        reminder pass)."""
        await self._post(state.run.id, state.run.ref, channel, ts, key, summary, blocks, seq)

    async def _post(
        self,
        run_id: str,
        about: str,
        channel: str,
        thread: str | None,
        key: str,
        summary: str,
        blocks: Any,
        seq: int,
    ) -> None:
        """Send post ``key`` (of ``run_id``; ``NO_RUN`` for one about no run) once, claimed in
        the database first; a failed send is planned again with ``POST_BACKOFF``."""
        if not await self.backend.write(self.state.claim_post, run_id, key, now()):
            return
        try:
            answer = await self.client.chat_postMessage(
                channel=channel, thread_ts=thread, text=summary, blocks=blocks
            )
        except SEND_FAILED as exc:
            error, final = _error(exc), is_final(exc)
            due: datetime | None = await self.backend.write(
                self.state.post_failed, run_id, key, seq, POST_BACKOFF, now(), error, final
            )
            if due is None:
                why = "Slack refuses it" if final else "no tries left"
                log.warning(
                    "gave up posting %s of %s to Slack channel %s: %s (%s)", key, about, channel, error, why
                )
            else:
                log.warning("could not post %s of %s to Slack (%s); trying again later", key, about, error)
                self._pending_due = min(self._pending_due, due.timestamp())
            return
        await self.backend.write(self.state.post_sent, run_id, key, str(answer["ts"]))

    async def _on_environment(self, event: Event) -> None:
        if event.name == HEALTH_CHANGED:
            await self._on_health(event)
        elif event.name == LOCK_ACQUIRED and event.data.get("previous_holder"):
            await self._on_lock_taken_over(event)
        elif event.name in (LOCK_ACQUIRED, LOCK_RELEASED) and event.data.get("channel") in OUTSIDE_SLACK:
            await self._on_lock_elsewhere(event)
        elif event.name == "schedule.paused" and event.data.get("by") == "clock":
            await self._on_schedule_paused(event)

    async def _on_lock_elsewhere(self, event: Event) -> None:
        """A lock taken or released over the API, the web view or the console: the deploy
        channel is told as when it is done with ``/deploy lock`` there, once (claimed by the
        event's number)."""
        if self.default_channel is None:
            return
        data = event.data
        expires = data.get("expires_at")
        lock = Lock(
            environment=event.subject_id,
            holder=str(data.get("holder", "")),
            reason=str(data.get("reason", "")),
            since=event.at,
            expires_at=datetime.fromisoformat(str(expires)) if expires else None,
            kind="rollback" if data.get("kind") == "rollback" else "manual",
        )
        where = OUTSIDE_SLACK[str(data["channel"])]
        if event.name == LOCK_ACQUIRED:
            summary = f":lock: {lock_blocks.told(lock, event.at)} (from {where})."
        else:
            summary = f"{released(lock, str(data.get('by', ''))).rstrip('.')} (from {where})."
        key = f"lock:{event.subject_id}:{event.seq}"
        blocks = [block_kit.text(summary)]
        await self._post(
            NO_RUN, event.subject_id, self.default_channel, None, key, summary, blocks, event.seq
        )

    async def _on_schedule_paused(self, event: Event) -> None:
        """The clock paused a schedule that can no longer start a run: its owner is told, once
        (the post is claimed by the event's number), in the pipeline's channel (where its runs
        report), else the default one."""
        pipeline = str(event.data.get("pipeline", ""))
        info = await self.backend.read(self.backend.reads.pipeline, pipeline)
        channel = (info.latest.definition.channel if info is not None else None) or self.default_channel
        if channel is None:
            return
        owner, reason = str(event.data.get("owner", "")), str(event.data.get("reason", ""))
        short = event.subject_id[:8]
        if event.data.get("source") == "file":
            whose, fix = f"The schedule `{short}` in {pipeline}'s pipeline file", "Correct it in the file."
        else:
            whose = f"{block_kit.who(owner)}: your schedule `{short}` of {pipeline}"
            fix = f"`/deploy resume-schedule {short}` once that is fixed, or remove it."
        summary = f"{whose} is paused, it can no longer start a run: {reason}. See `/deploy schedules`. {fix}"
        key = f"schedule:{event.subject_id}:{event.seq}"
        await self._post(
            NO_RUN, event.subject_id, channel, None, key, summary, [block_kit.text(summary)], event.seq
        )

    async def _on_lock_taken_over(self, event: Event) -> None:
        """A lock ran out and someone locked the environment before the keeper swept it (which
        tells the channel of the expiries it makes): the channel is told here instead, with the
        previous holder mentioned, once (claimed by the event's number)."""
        if self.default_channel is None:
            return
        summary = lock_blocks.taken_over(
            event.subject_id,
            str(event.data["previous_holder"]),
            str(event.data.get("previous_reason", "")),
            str(event.data.get("holder", "")),
        )
        key = f"lock:{event.subject_id}:{event.seq}"
        blocks = [block_kit.text(summary)]
        await self._post(
            NO_RUN, event.subject_id, self.default_channel, None, key, summary, blocks, event.seq
        )

    async def _on_health(self, event: Event) -> None:
        """An environment's health changed: say so in its channel (its ``slack_channel``, else the
        default one), once, whatever the restarts and replicas (the post is claimed by the event's
        number); nothing when there is no channel."""
        policy = self.backend.shipyard.settings.environment(event.subject_id)
        channel = policy.slack_channel or self.default_channel
        if channel is None or event.name != HEALTH_CHANGED:
            return
        change = HealthChange(
            0,
            event.subject_id,
            event.at,
            Health(event.from_status or Health.UNKNOWN),
            Health(event.to_status or Health.UNKNOWN),
            str(event.data.get("reason", "")),
        )
        key = f"health:{change.environment}:{event.seq}"
        told = await self._settled(change, key, event.seq, policy.health_settle)
        if told is None:
            return
        said = health_words.changed(told)
        blocks = [block_kit.text(said)]
        summary = f"{told.environment} is {told.to_state} (was {told.from_state})"
        await self._post(NO_RUN, told.environment, channel, None, key, summary, blocks, event.seq)

    async def _settled(
        self, change: HealthChange, key: str, seq: int, settle_s: float
    ) -> HealthChange | None:
        """``change`` as it is to be posted once it held for ``settle_s`` (``health_settle``),
        told as a change from what the channel last heard (``core.analysis.announced_as``); None
        when it is not posted, or not yet: a change younger than that is planned for when it
        will have held (a post waiting like a retry, ``_retry_posts``), decided then."""
        if settle_s <= 0:
            return change
        due = change.at + timedelta(seconds=settle_s)
        if now() < due:
            if await self.backend.write(self.state.defer_post, NO_RUN, key, seq, due):
                self._pending_due = min(self._pending_due, due.timestamp())
            return None
        history = await self.backend.read(self.backend.analyses.history, change.environment, None, HISTORY)
        mine = next(
            (c for c in history if c.at == change.at and c.to_state is change.to_state),
            change,
        )
        was = announced_as(history if mine in history else [*history, mine], mine, settle_s)
        return None if was is None else replace(change, from_state=was)

    async def _retry_posts(self) -> None:
        """Send again the thread posts whose retry is due, by doing again what called for them:
        their event is handled anew (its post, rendered from the run as it is now, then goes
        through the claim, which takes the due retry over), or the reminder pass runs. A post
        that is no longer called for (the run moved on so that it would not be said) is given up."""
        clock = now()
        if clock.timestamp() < self._pending_due and time.monotonic() < self._pending_look:
            return
        self._pending_look = time.monotonic() + PENDING_LOOK_S
        self._pending_due = math.inf
        due: list[PendingPost] = []
        for post in await self.backend.read(self.state.pending_posts):
            if post.due <= clock:
                due.append(post)
            else:
                self._pending_due = min(self._pending_due, post.due.timestamp())
        try:
            if any(p.seq == 0 for p in due):
                await self._remind()
            for post in due:
                if post.seq != 0:
                    await self._handle_again(post)
                await self.backend.write(self.state.give_up_post, post)  # (a no-op if it was taken over)
        except Exception:
            self._pending_due = 0.0  # (Slack or the database failed us: look again next step)
            raise

    async def _handle_again(self, post: PendingPost) -> None:
        found = await self.backend.read(
            self.backend.shipyard.store.events_after, post.seq - 1, 1, post.run_id
        )
        if post.run_id == NO_RUN:  # a post about no run: an environment's health or lock
            if found and found[0].seq == post.seq:
                await self._on_environment(found[0])
            return
        state = await self.backend.read(self.backend.reads.run, post.run_id)
        if not found or found[0].seq != post.seq or state is None:
            return
        message = await self._message(state)
        if message is not None:
            await self._on_event(state, message, found[0])

    async def _update_gate_card(self, state: RunState, channel: str, gate_id: str) -> bool:
        gate = next((g for g in state.gates if g.id == gate_id), None)
        post_ts = await self.backend.read(self.state.post_ts, state.run.id, f"gate:{gate_id}")
        if gate is None or post_ts is None:
            return True  # (a card still to be posted shows the gate as it is then)
        summary, blocks = await cards.gate_card(self.backend, state, gate)
        return await self._edit(channel, post_ts, summary, blocks)

    async def _remind(self) -> float:
        """Gates with ``remind_every`` get a reminder in the thread each time one is due; the
        reminder's number is its key, so each is posted once whatever the restarts. Returns the
        seconds until the next reminder is due, so waiting gates are not read every second."""
        at = now()
        wait = REMIND_IDLE_S
        for state in await self.backend.read(self.backend.reads.waiting_for_people):
            for gate in state.gates:
                spec = state.definition.stages[gate.stage_index].gate
                if gate.status != "open" or spec is None or not spec.remind_every or gate.opened_at is None:
                    continue
                waited = (at - gate.opened_at).total_seconds()
                count = int(waited // spec.remind_every)
                wait = min(wait, (count + 1) * spec.remind_every - waited)
                if count < 1:
                    continue
                message = await self._message(state)
                if message is None:
                    continue
                channel, ts = message
                key = f"remind:{gate.id}:{count}"
                mentions = await cards.approver_mentions(self.backend, gate)
                await self._thread(
                    state, channel, ts, key, *block_kit.gate_reminder(state, gate, waited, mentions)
                )
        for review in await self.backend.read(ReviewStore(self.backend.shipyard.store).pending):
            number = reminder_number(review, at)
            wait = min(wait, (number + 1) * REMIND_EVERY_S - (at - review.opened_at).total_seconds())
            owing = await self.backend.read(self.backend.reads.run, review.run_id, quick=True)
            message = await self._message(owing) if owing is not None else None
            if owing is None or message is None:
                continue
            channel, ts = message
            key = f"review:{review.run_id}:{number}"
            await self._thread(owing, channel, ts, key, *review_reminder(owing, review, at))
        return wait

    async def _home(self, user: str) -> None:
        try:
            await publish_home(self.backend, self.client, user)
        except SlackApiError as exc:
            log.warning("could not refresh App Home of %s: %s", user, exc.response.get("error"))

    async def _flush(self) -> None:
        """Edit the messages that are due: each run's message and its gate cards that changed."""
        due = [run_id for run_id, at in self._dirty.items() if at <= time.monotonic()]
        for run_id in due:
            del self._dirty[run_id]
            self._refreshes.discard(run_id)
            cards = self._cards.pop(run_id, set())
            state = await self.backend.read(self.backend.reads.run, run_id, quick=True)
            message = await self.backend.read(self.state.message, run_id, quick=True)
            if state is None or message is None or message.ts is None:
                self._changed.pop(run_id, None)
                continue
            measured = await self._measured(state)
            clock = self.backend.shipyard.service.clock()
            waits = await self.backend.read(self.backend.shipyard.runners.waits, state.jobs, now())
            self._waits_said[run_id] = tuple(sorted(waits.items()))
            summary, blocks = block_kit.run_message(
                state,
                await self._place(state),
                now=clock,
                measured=measured,
                waits=waits,
                link=self._link(state),
            )
            done = await self._edit(message.channel, message.ts, summary, blocks)
            if done and (changed := self._changed.pop(run_id, None)) is not None:
                lag = self.backend.shipyard.service.clock() - changed
                metrics.slack_message_edited(lag.total_seconds())
            if _rollout_ticking(state) and run_id not in self._dirty:
                # its time left and measurements move without events
                self._dirty[run_id] = time.monotonic() + ROLLOUT_REFRESH_S
                self._refreshes.add(run_id)
            failed_cards = {g for g in cards if not await self._update_gate_card(state, message.channel, g)}
            self._edited[run_id] = time.monotonic()
            if done and not failed_cards:
                self._edit_failures.pop(run_id, None)
            else:  # Slack is down or pushing back: try again a little later
                failures = self._edit_failures[run_id] = self._edit_failures.get(run_id, 0) + 1
                if failures <= len(EDIT_BACKOFF):
                    self._dirty[run_id] = time.monotonic() + EDIT_BACKOFF[failures - 1]
                    if failed_cards:
                        self._cards.setdefault(run_id, set()).update(failed_cards)
                    continue
                self._edit_failures.pop(run_id, None)
                self._stale.add(run_id)  # (edited again when Slack is back, its cards with it)
                self._cards.setdefault(run_id, set()).update(failed_cards)
            if state.run.status in RUN_TERMINAL:
                self._edited.pop(run_id, None)

    async def _measured(self, state: RunState) -> list[Measurement] | None:
        """The newest measurement of each check of the rollout step being analysed, if one is."""
        stage = rollout_blocks.rolling_stage(state)
        rollout = stage.rollout if stage is not None else None
        if stage is None or rollout is None or rollout.analysis is None or stage.environment is None:
            return None
        checks = rollout_blocks.step_checks(state, stage, rollout.step)
        store = self.backend.shipyard.store
        return await self.backend.read(_newest, store, stage.environment, checks, rollout.analysis)

    async def _place(self, state: RunState) -> QueueEntry | None:
        """Where a queued run waits in its environment's queue."""
        env = next((s.environment for s in state.stages if s.status == "queued"), None)
        if env is None:
            return None
        queue = await self.backend.read(self.backend.shipyard.service.queue, env)
        return next((e for e in queue.waiting if e.run_id == state.run.id), None)

    def _link(self, state: RunState) -> str | None:
        return block_kit.run_page(self.backend.shipyard.settings.public_url, state.run)

    async def _edit(self, channel: str, ts: str, summary: str, blocks: Any) -> bool:
        """Edit a message; False when it is worth trying again (Slack down or failing)."""
        try:
            await self.client.chat_update(channel=channel, ts=ts, text=summary, blocks=blocks)
            return True
        except SlackApiError as exc:
            error = str(exc.response.get("error"))
            log.warning("could not edit Slack message %s in %s: %s", ts, channel, error)
            return error in EDIT_FINAL  # (a deleted message has nothing to edit)
        except SEND_FAILED as exc:
            log.warning("could not edit Slack message %s in %s: %r", ts, channel, exc)
            return False


def _newest(store: SqlStore, environment: str, checks: list[str], analysis_id: str) -> list[Measurement]:
    """Each check's newest measurement in one analysis."""
    with store.reading() as tx:
        found = analyses.recent(tx.conn, environment, checks, 1, analysis_id)
    return [measured[0] for measured in found.values() if measured]


def _rollout_ticking(state: RunState) -> bool:
    """Whether the run's message shows a rollout step's clock (a timed pause, an analysis)."""
    stage = rollout_blocks.rolling_stage(state)
    rollout = stage.rollout if stage is not None else None
    return (
        rollout is not None
        and rollout.status in rollout_blocks.STEERABLE
        and rollout.step_until is not None
        and state.run.status not in RUN_TERMINAL
    )


def _changes_home(event: Event) -> bool:
    """Does App Home show what this event changed (gates waiting and their approvals, what runs
    where, the viewer's runs, environment locks)?"""
    if event.subject in ("lock", "env"):  # (locks, environment health)
        return True
    if event.subject == "schedule":  # (the viewer's paused schedules)
        return event.name in ("schedule.paused", "schedule.resumed", "schedule.deleted")
    if event.subject == "gate":
        return event.to_status == "open" or event.from_status == "open" or event.name == "gate.approval_added"
    if event.subject == "run":
        return event.to_status is not None
    return event.subject == "stage" and event.to_status in FINISHED | {"succeeded", "partial"}

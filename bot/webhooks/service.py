"""The webhook worker inside ``shipyard serve``: it moves the event log into the outbox, sends
what is due, records each attempt, retries with backoff and disables subscriptions that keep
failing. (External gates nobody called back are timed out by the engine's clock, with the
other gate deadlines.)

One loop does it all, without waiting for slow receivers: up to ``CONCURRENCY`` deliveries are
in flight (at most ``PER_WEBHOOK`` per subscription, so one dead receiver cannot take every
slot), and it wakes when this process appends events, when a send finishes, when the next retry
is due, or every poll interval (events other replicas append are found that way).

Retries wait a random time below the next step of ``webhook_retry_seconds`` (full jitter: many
failing deliveries spread out instead of returning together). ``step(now)`` runs one round at a
given time, which is how tests go through hours of backoff without waiting.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiohttp
from aiohttp import web
from yarl import URL

from bot import metrics
from bot.backend import Backend, now
from bot.config import Settings
from bot.webhooks import messages, signing
from bot.webhooks.policy import AddressRefused, AllowList, GuardedResolver, Policy
from core.errors import DatabaseUnreachable
from core.events import Event
from core.model import RunState
from core.tracing import run_traceparent
from storage.webhooks import Claimed, Disabled, NewDelivery, Outcome, Webhook, WebhookStore

log = logging.getLogger(__name__)
USER_AGENT = "Shipyard-Webhooks/1"
#: deliveries in flight at once, in all and per subscription
CONCURRENCY = 64
PER_WEBHOOK = 16
#: events moved into the outbox per transaction
BATCH = 500
#: with no active subscription, how often the table is read again for one another replica
#: added (this process's own changes ``poke`` the loop; the cursor catching up loses nothing)
LISTEN_RECHECK_S = 10.0


def retry_delay(failed_attempt: int, schedule: Sequence[float], rng: random.Random) -> float | None:
    """Seconds to wait after attempt ``failed_attempt`` (1-based) failed, or None to give up:
    uniform below the schedule's step for that attempt (full jitter)."""
    if failed_attempt > len(schedule):
        return None
    return rng.uniform(0, schedule[failed_attempt - 1])


@dataclass(frozen=True)
class Config:
    policy: Policy
    base_url: str
    timeout_s: float = 10.0
    schedule: tuple[float, ...] = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 28800)
    max_failures: int = 100
    failing_for: timedelta = timedelta(hours=24)
    poll_interval: float = 1.0
    #: finished deliveries are kept this long (the deliveries API shows them), then deleted
    keep: timedelta = timedelta(days=30)
    concurrency: int = CONCURRENCY
    per_webhook: int = PER_WEBHOOK

    @classmethod
    def of(cls, settings: Settings) -> Config:
        return cls(
            policy=Policy(AllowList.parse(settings.webhook_allow)),
            base_url=settings.base_url,
            timeout_s=settings.webhook_timeout_seconds,
            schedule=tuple(settings.webhook_retry_seconds),
            max_failures=settings.webhook_disable_after_failures,
            failing_for=timedelta(hours=settings.webhook_disable_after_hours),
            poll_interval=settings.poll_interval,
            keep=timedelta(days=settings.webhook_keep_days),
        )

    @property
    def lease(self) -> timedelta:
        """How long a claim holds: past it, the delivery is sent again (its sender died). The
        attempt's timeout plus a margin for a busy event loop."""
        return timedelta(seconds=self.timeout_s + max(5.0, self.timeout_s))


@dataclass
class _Flight:
    claimed: Claimed
    task: asyncio.Task[Outcome] = field(repr=False)


class Webhooks:
    def __init__(
        self,
        backend: Backend,
        config: Config,
        *,
        clock: Callable[[], datetime] = now,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.config = config
        self.webhook_store = WebhookStore(backend.shipyard.store)
        self.clock = clock  #: decides what is due (tests pass their own time to ``step``)
        self.rng = rng or random.Random()
        self.wall = wall  #: signs: receivers check signatures against their own clocks
        self.session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._flights: dict[int, _Flight] = {}
        self._done: list[Outcome] = []
        self._wake = asyncio.Event()
        self._moved = -1  #: the outbox cursor as this process last saw it
        self._listening = False  #: whether any subscription is active (looked up once a second)
        self._listening_checked = 0.0
        #: subscriptions disabled by this process (for logs and tests)
        self.disabled: list[Disabled] = []

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, run: bool = True) -> None:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.config.policy), limit=self.config.concurrency
        )
        self.session = aiohttp.ClientSession(connector=connector, trust_env=False)
        if run:
            self._wake = self.backend.shipyard.orchestrator.listen()
            self._task = asyncio.create_task(self._loop(), name="shipyard-webhooks")

    async def stop(self) -> None:
        """Stop sending; deliveries in flight get a moment to finish and be recorded (any not
        recorded are sent again after their lease)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        tasks = [f.task for f in self._flights.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=min(5.0, self.config.timeout_s))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._record(self.clock())
        except DatabaseUnreachable:  # sent again after their lease
            log.warning("could not record the last webhook attempts: the database is unreachable")
        except Exception:
            log.exception("could not record the last webhook attempts")
        if self.session is not None:
            await self.session.close()
            self.session = None

    # -- one round, at a given time -----------------------------------------------------------
    def poke(self) -> None:
        """Subscriptions changed: look again at once (another replica's changes are seen within
        ``LISTEN_RECHECK_S``; the cursor catching up later loses nothing, see
        ``WebhookStore.move``)."""
        self._listening_checked = 0.0
        self._wake.set()

    async def pump(self, at: datetime | None = None) -> int:
        """Move every new event into the outbox; returns how many deliveries were queued. Quick
        reads first: with no active subscription, or no new event, nothing takes a write lock."""
        at = at or self.clock()
        if time.monotonic() - self._listening_checked >= (1.0 if self._listening else LISTEN_RECHECK_S):
            self._listening = await self.backend.read(self.webhook_store.listening, quick=True)
            self._listening_checked = time.monotonic()
        if not self._listening:
            return 0
        last = await self.backend.read(self.backend.shipyard.store.last_event_seq, quick=True)
        if last <= self._moved:
            return 0
        queued = 0
        while True:
            read, added, self._moved = await self.backend.write(
                self.webhook_store.move, _wanted, self._plan, at, BATCH
            )
            queued += added
            if read < BATCH:
                return queued

    async def step(self, at: datetime | None = None) -> list[Outcome]:
        """Fill the outbox, send everything due at ``at`` (each run's next message), record it."""
        at = at or self.clock()
        await self.pump(at)
        claimed = await self.backend.write(
            self.webhook_store.claim, at, 10_000, self.config.lease, (), self.clock
        )
        outcomes = list(await asyncio.gather(*(self.send(c, at) for c in claimed)))
        self.disabled += await self.backend.write(self._write_outcomes, outcomes, at)
        return outcomes

    def _write_outcomes(self, outcomes: list[Outcome], at: datetime) -> list[Disabled]:
        config = self.config
        return self.webhook_store.record(
            outcomes, at, max_failures=config.max_failures, failing_for=config.failing_for
        )

    def _plan(
        self, events: list[Event], runs: dict[str, RunState], webhooks: list[Webhook]
    ) -> list[NewDelivery]:
        return messages.plan(events, runs, webhooks, self.config.base_url)

    async def send(self, claimed: Claimed, at: datetime) -> Outcome:
        """One signed POST; what came of it, with when to retry if it failed."""
        assert self.session is not None, "start() first"
        body = claimed.body.encode()
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **signing.headers(claimed.secret, claimed.msg_id, int(self.wall()), body),
        }
        if claimed.run_id:  # the receiver's own spans join the run's trace
            headers["traceparent"] = run_traceparent(claimed.run_id)
        status: int | None = None
        error = response = ""
        started = time.monotonic()
        timeout = self.config.timeout_s
        try:
            url = URL(claimed.url)
            refused = self.config.policy.check_literal(url.host or "")
            if refused is not None:  # aiohttp connects to an address in the URL without resolving
                raise AddressRefused(refused)
            async with self.session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as reply:
                status = reply.status
                response = (await reply.content.read(1024)).decode("utf-8", "replace")
        except AddressRefused as exc:
            error = f"refused: {exc}"
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error
            error = f"refused: {cause}" if isinstance(cause, AddressRefused) else f"cannot connect: {cause}"
        except TimeoutError:
            error = f"no answer within {timeout:g} s"
        except (aiohttp.ClientError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        took = time.monotonic() - started
        ok = status is not None and 200 <= status < 300
        if status is not None and not ok:
            error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
        delay = None if ok else retry_delay(claimed.attempt, self.config.schedule, self.rng)
        ended = at + timedelta(seconds=took)
        _count(ok, status, claimed, self.clock())
        return Outcome(
            delivery_id=claimed.delivery_id,
            attempt=claimed.attempt,
            webhook_id=claimed.webhook_id,
            at=at,
            duration_ms=took * 1000,
            ok=ok,
            status=status,
            error=error,
            response=response,
            request_headers={k: v for k, v in headers.items() if k != "webhook-signature"},
            retry_at=ended + timedelta(seconds=delay) if delay is not None else None,
            gone=status == 410,
        )

    # -- the loop -----------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            full = False
            try:
                at = self.clock()
                await self.pump(at)
                full = await self._launch(at)
                await self._record(at)
            except asyncio.CancelledError:
                raise
            except DatabaseUnreachable:  # (said once by the engine's health): try again shortly
                log.debug("webhook round waits for the database")
                await asyncio.sleep(min(5.0, self.config.poll_interval * 5))
                continue
            except Exception:
                log.exception("webhook round failed; retrying")
                await asyncio.sleep(min(5.0, self.config.poll_interval * 5))
                continue
            if full:
                continue
            # (with no active subscription there is nothing to send: look again for one now and
            # then, or when this process changes them)
            rest = self.config.poll_interval if self._listening or self._flights else LISTEN_RECHECK_S
            wait = await self._wait(rest)
            if wait > 0:
                try:
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _wait(self, wait: float) -> float:
        """How long the loop may rest: ``wait`` at most, less when a delivery is due sooner."""
        if self._done:
            return 0.0
        if self._listening and len(self._flights) < self.config.concurrency:
            try:
                due = await self.backend.read(self.webhook_store.next_due, self._busy(self._in_flight()))
            except DatabaseUnreachable:
                return wait
            if due is not None:
                wait = min(wait, max(0.02, (due - self.clock()).total_seconds()))
        return wait

    async def _launch(self, at: datetime) -> bool:
        """Claim what is due into the free slots; True if every slot asked for was filled."""
        free = self.config.concurrency - len(self._flights)
        if free <= 0 or not self._listening:  # (no active subscription: nothing is claimable)
            return False
        per = self._in_flight()
        busy = self._busy(per)
        claimed = await self.backend.write(
            self.webhook_store.claim,
            at,
            free,
            self.config.lease,
            busy,
            self.clock,
            lambda webhook_id: self.config.per_webhook - per[webhook_id],
        )
        for c in claimed:
            task = asyncio.create_task(self.send(c, at))
            self._flights[c.delivery_id] = _Flight(c, task)
            task.add_done_callback(functools.partial(self._landed, c))
        return len(claimed) == free

    def _in_flight(self) -> Counter[str]:
        """How many of each subscription's deliveries are being sent."""
        return Counter(f.claimed.webhook_id for f in self._flights.values())

    def _busy(self, per: Counter[str]) -> list[str]:
        """The subscriptions whose share of the slots (``per_webhook``) is in flight."""
        return sorted(w for w, n in per.items() if n >= self.config.per_webhook)

    def _landed(self, claimed: Claimed, task: asyncio.Task[Outcome]) -> None:
        self._flights.pop(claimed.delivery_id, None)
        if task.cancelled():
            return
        if task.exception() is not None:  # a bug: the claim runs out and the delivery goes again
            log.error("sending webhook delivery %s failed", claimed.delivery_id, exc_info=task.exception())
        else:
            self._done.append(task.result())
        self._wake.set()

    async def _record(self, at: datetime) -> None:
        done, self._done = self._done, []
        if not done:
            return
        try:
            disabled = await self.backend.write(self._write_outcomes, done, at)
        except BaseException:
            self._done = done + self._done  # keep them for the next round
            raise
        for d in disabled:
            log.warning(
                "webhook %s disabled: %s (owner %s told in the audit log)", d.webhook_id, d.reason, d.owner
            )
        self.disabled += disabled


def _count(ok: bool, status: int | None, claimed: Claimed, now: datetime) -> None:
    """One attempt in the metrics; a delivered one with how long it waited in the outbox."""
    if not ok:
        metrics.webhook_attempted("unreachable" if status is None else "http_error")
        return
    queued = claimed.created_at
    lag = (now - queued.replace(tzinfo=now.tzinfo)).total_seconds() if queued is not None else None
    metrics.webhook_attempted("delivered", lag)


def _wanted(event: Event) -> bool:
    return bool(messages.types_of(event))


#: the application's webhook worker (``bot.app`` creates and starts it)
WEBHOOKS = web.AppKey("webhooks", Webhooks)

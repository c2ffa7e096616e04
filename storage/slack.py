"""What the Slack notifier keeps: each run's message (channel, ts), the thread posts already
claimed, and its cursor into the event log. All writes are conditional, so a restart (or a
second replica) never posts a run's message or a thread post twice.

A run's message is routed (its row inserted) before it is posted: a run started from chat in
its own transaction (``ReportTarget``), any other by the notifier to the pipeline's or the
default channel; ``ts`` is set once it is posted, in ``thread`` when it was asked for in one.
When Slack refuses it for good (the channel is gone, the bot is not in it …), ``gave_up_at``
and ``last_error`` say so, and the run is not reported there.

A thread post is claimed (its row inserted) before it is sent; its ``status`` says where its
sending is (``core.states.PostStatus``; every change is ``storage.transition.move``),
``attempts`` counts the failed sends, ``last_error`` keeps the latest failure, and ``ts`` is
the posted message's once it is sent. A post ``waiting`` for a retry is tried again from
``next_try_at`` by handling event ``seq`` again (0: a reminder, which the reminder pass makes
again).

Taking a due retry over is a compare-and-set on (``status``, ``attempts``), so of several
replicas one sends it, and a restart finds it. A process that dies while a send is under way
leaves the row ``sending``: whether Slack got that post cannot be known, so it is not sent
again (at most once there, rather than twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from core.states import PostStatus
from storage.store import SqlStore
from storage.tables import T
from storage.transition import move

MESSAGE, POST, CURSOR = T["slack_message"], T["slack_post"], T["cursor"]
#: the longest error kept (the column's size)
ERROR_MAX = 200


@dataclass(frozen=True, slots=True)
class RunMessage:
    run_id: str
    channel: str
    ts: str | None
    #: when Slack refused it for good (then it is never posted)
    gave_up_at: datetime | None = None
    last_error: str | None = None
    #: the thread it was asked for in (None: the channel itself)
    thread: str | None = None


@dataclass(frozen=True, slots=True)
class PendingPost:
    """A thread post whose send failed, waiting to be tried again."""

    run_id: str
    key: str
    #: failed sends so far
    attempts: int
    #: when to try again
    due: datetime
    #: the event that called for it; 0 for a reminder
    seq: int
    last_error: str | None = None


def _message(row: sa.RowMapping) -> RunMessage:
    return RunMessage(
        row["run_id"], row["channel"], row["ts"], row["gave_up_at"], row["last_error"], row["thread"]
    )


class SlackState:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def route(self, run_id: str, channel: str, now: datetime) -> None:
        """Send ``run_id``'s message to ``channel`` (first caller wins)."""
        with self.store.engine.begin() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(MESSAGE).values(run_id=run_id, channel=channel, created_at=now))
            except IntegrityError:
                pass

    def message(self, run_id: str) -> RunMessage | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(MESSAGE).where(MESSAGE.c.run_id == run_id)).mappings().first()
        return _message(row) if row else None

    def messages(self, run_ids: list[str]) -> dict[str, RunMessage]:
        if not run_ids:
            return {}
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(MESSAGE).where(MESSAGE.c.run_id.in_(run_ids))).mappings().all()
        return {r["run_id"]: _message(r) for r in rows}

    def posted(self, run_id: str, ts: str) -> bool:
        """Record the message's ts, unless one was recorded already (then it is not ours)."""
        with self.store.engine.begin() as conn:
            done = conn.execute(
                sa.update(MESSAGE)
                .where(MESSAGE.c.run_id == run_id, MESSAGE.c.ts.is_(None))
                .values(ts=ts, last_error=None)
            )
            return bool(done.rowcount == 1)

    def message_failed(self, run_id: str, error: str, now: datetime, final: bool) -> bool:
        """Posting the run's message failed with ``error``; ``final``: Slack refused it for good,
        so give it up. True when this call gave it up (it was not given up, nor posted, before)."""
        where = (MESSAGE.c.run_id == run_id, MESSAGE.c.ts.is_(None), MESSAGE.c.gave_up_at.is_(None))
        values: dict[str, object] = {"last_error": error[:ERROR_MAX]}
        if final:
            values["gave_up_at"] = now
        with self.store.engine.begin() as conn:
            return (
                bool(conn.execute(sa.update(MESSAGE).where(*where).values(**values)).rowcount == 1) and final
            )

    def claim_post(self, run_id: str, key: str, now: datetime) -> bool:
        """Claim the thread post ``key`` of a run; False if it was claimed before, unless it
        waits for a retry that is due at ``now``: then this caller takes it."""
        with self.store.engine.begin() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(POST).values(run_id=run_id, key=key, status=PostStatus.SENDING))
                return True
            except IntegrityError:
                pass
            due = sa.and_(POST.c.run_id == run_id, POST.c.key == key, POST.c.next_try_at <= now)
            return (
                move(
                    conn,
                    "slack_post",
                    key,
                    due,
                    PostStatus.WAITING,
                    PostStatus.SENDING,
                    {"next_try_at": None},
                )
                == 1
            )

    def defer_post(self, run_id: str, key: str, seq: int, due: datetime) -> bool:
        """Plan post ``key`` (told by event ``seq``) for ``due`` rather than now: it waits like a
        retry (``pending_posts``), then whoever takes it decides again whether it is still to be
        said. False if it was planned or claimed before (another replica, a restart)."""
        with self.store.engine.begin() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(
                        sa.insert(POST).values(
                            run_id=run_id, key=key, status=PostStatus.WAITING, next_try_at=due, seq=seq
                        )
                    )
                return True
            except IntegrityError:
                return False

    def post_ts(self, run_id: str, key: str) -> str | None:
        """The posted message's ts; None while it is not posted (or never will be)."""
        with self.store.engine.connect() as conn:
            ts = conn.execute(sa.select(POST.c.ts).where(POST.c.run_id == run_id, POST.c.key == key)).scalar()
        return str(ts) if ts is not None else None

    def post_sent(self, run_id: str, key: str, ts: str) -> None:
        with self.store.engine.begin() as conn:
            row = sa.and_(POST.c.run_id == run_id, POST.c.key == key)
            move(
                conn,
                "slack_post",
                key,
                row,
                PostStatus.SENDING,
                PostStatus.SENT,
                {"ts": ts, "next_try_at": None},
            )

    def post_failed(
        self,
        run_id: str,
        key: str,
        seq: int,
        backoff: Sequence[float],
        now: datetime,
        error: str,
        final: bool = False,
    ) -> datetime | None:
        """A send of a claimed post failed with ``error``: plan its next try after
        ``backoff[n - 1]`` seconds (``n``: failed sends so far), or give it up when ``backoff``
        has no more waits or the failure is ``final`` (retrying cannot help). Returns when it is
        due, None when given up."""
        with self.store.engine.begin() as conn:
            row = sa.and_(POST.c.run_id == run_id, POST.c.key == key)
            sending = sa.and_(row, POST.c.status == PostStatus.SENDING)
            attempts = conn.execute(sa.select(POST.c.attempts).where(sending)).scalar()
            if attempts is None:
                return None  # (not a send of ours under way: nothing to plan)
            attempts += 1
            values: dict[str, object] = {"attempts": attempts, "last_error": error[:ERROR_MAX], "seq": seq}
            due = None
            to = PostStatus.GAVE_UP
            if not final and attempts <= len(backoff):
                due = now + timedelta(seconds=backoff[attempts - 1])
                to, values["next_try_at"] = PostStatus.WAITING, due
            move(
                conn,
                "slack_post",
                key,
                sa.and_(row, POST.c.attempts == attempts - 1),
                PostStatus.SENDING,
                to,
                values,
            )
            return due

    def pending_posts(self) -> list[PendingPost]:
        """Every post waiting for a retry, the soonest first."""
        query = (
            sa.select(
                POST.c.run_id, POST.c.key, POST.c.attempts, POST.c.next_try_at, POST.c.seq, POST.c.last_error
            )
            .where(POST.c.status == PostStatus.WAITING)
            .order_by(POST.c.next_try_at)
        )
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [PendingPost(r[0], r[1], int(r[2]), r[3], int(r[4]), r[5]) for r in rows]

    def retry_now(self, now: datetime) -> int:
        """Slack answers again: every post waiting for a retry is due at ``now`` rather than at
        the end of its backoff (its status and attempts stay: taking it over is unchanged).
        Returns how many were brought forward."""
        with self.store.engine.begin() as conn:
            done = conn.execute(
                sa.update(POST)
                .where(POST.c.status == PostStatus.WAITING, POST.c.next_try_at > now)
                .values(next_try_at=now)
            )
            return int(done.rowcount)

    def give_up_post(self, pending: PendingPost) -> bool:
        """The post is no longer called for: stop retrying it (False: someone took it first)."""
        row = sa.and_(
            POST.c.run_id == pending.run_id, POST.c.key == pending.key, POST.c.attempts == pending.attempts
        )
        with self.store.engine.begin() as conn:
            values = {"next_try_at": None}
            return (
                move(conn, "slack_post", pending.key, row, PostStatus.WAITING, PostStatus.GAVE_UP, values)
                == 1
            )

    # -- the event-log cursor --------------------------------------------------------------------
    def cursor(self, name: str) -> int:
        with self.store.engine.begin() as conn:
            seq = conn.execute(sa.select(CURSOR.c.seq).where(CURSOR.c.name == name)).scalar()
            if seq is None:
                try:
                    with conn.begin_nested():
                        conn.execute(sa.insert(CURSOR).values(name=name, seq=0))
                except IntegrityError:
                    pass
                return 0
            return int(seq)

    def advance(self, name: str, old: int, new: int) -> bool:
        """Move the cursor from ``old`` to ``new``; False if someone else moved it."""
        with self.store.engine.begin() as conn:
            done = conn.execute(
                sa.update(CURSOR).where(CURSOR.c.name == name, CURSOR.c.seq == old).values(seq=new)
            )
            return bool(done.rowcount == 1)

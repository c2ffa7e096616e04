"""What the Slack notifier keeps: each run's message (channel, ts), the thread posts already
claimed, and its cursor into the event log. All writes are conditional, so a restart (or a
second replica) never posts a run's message or a thread post twice.

A thread post is claimed (its row inserted) before it is sent; its ``ts`` column then says
where the post is:

* ``NULL`` — the first send is under way;
* ``sending:<n>`` — a retry is under way, after ``n`` failed sends;
* ``retry:<n>:<due>:<seq>`` — ``n`` sends failed (Slack answered an error, or could not be
  reached); try again from ``due`` (epoch seconds) by handling event ``seq`` again (0: a
  reminder, which the reminder pass makes again);
* ``gave-up:<n>`` — given up after ``n`` failed sends, or no longer called for;
* anything else — the posted message's ts.

Taking a due retry over is a compare-and-set on the row's value, so of several replicas one
sends it, and a restart finds it. A process that dies while a send is under way leaves the
row as it was (``NULL``/``sending``): whether Slack got that post cannot be known, so it is
not sent again (at most once there, rather than twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from storage.store import SqlStore
from storage.tables import T

MESSAGE, POST, CURSOR, AUDIT = T["slack_message"], T["slack_post"], T["cursor"], T["audit"]
SENDING, RETRY, GAVE_UP = "sending:", "retry:", "gave-up:"
#: audited actions that change an environment's lock (``storage.locks``, the engine's rollback lock)
LOCK_ACTIONS: Final = frozenset(
    {
        "lock_environment",
        "relock_environment",
        "unlock_environment",
        "acknowledge_rollback",
        "expire_lock",
        "extend_lock",
        "hand_over_lock",
        "request_lock_handover",
        "keep_lock",
    }
)


@dataclass(frozen=True, slots=True)
class RunMessage:
    run_id: str
    channel: str
    ts: str | None


@dataclass(frozen=True, slots=True)
class PendingPost:
    """A thread post whose send failed, waiting to be tried again."""

    run_id: str
    key: str
    #: failed sends so far
    attempts: int
    #: when to try again (epoch seconds)
    due: float
    #: the event that called for it; 0 for a reminder
    seq: int
    #: the row's value, for the compare-and-set that takes it over
    mark: str

    @classmethod
    def parse(cls, run_id: str, key: str, mark: str) -> PendingPost | None:
        try:
            _, attempts, due, seq = mark.split(":")
            return cls(run_id, key, int(attempts), float(due), int(seq), mark)
        except ValueError:
            return None


def is_ts(value: str | None) -> bool:
    """Whether a post's ``ts`` column holds a posted message's ts (not a send's state)."""
    return value is not None and not value.startswith((SENDING, RETRY, GAVE_UP))


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
        return RunMessage(row["run_id"], row["channel"], row["ts"]) if row else None

    def messages(self, run_ids: list[str]) -> dict[str, RunMessage]:
        if not run_ids:
            return {}
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(MESSAGE).where(MESSAGE.c.run_id.in_(run_ids))).mappings().all()
        return {r["run_id"]: RunMessage(r["run_id"], r["channel"], r["ts"]) for r in rows}

    def posted(self, run_id: str, ts: str) -> bool:
        """Record the message's ts, unless one was recorded already (then it is not ours)."""
        with self.store.engine.begin() as conn:
            done = conn.execute(
                sa.update(MESSAGE).where(MESSAGE.c.run_id == run_id, MESSAGE.c.ts.is_(None)).values(ts=ts)
            )
            return bool(done.rowcount == 1)

    def claim_post(self, run_id: str, key: str, now: float = 0.0) -> bool:
        """Claim the thread post ``key`` of a run; False if it was claimed before, unless it
        waits for a retry that is due at ``now`` (epoch seconds): then this caller takes it."""
        with self.store.engine.begin() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(POST).values(run_id=run_id, key=key))
                return True
            except IntegrityError:
                pass
            mark = conn.execute(
                sa.select(POST.c.ts).where(POST.c.run_id == run_id, POST.c.key == key)
            ).scalar()
            pending = PendingPost.parse(run_id, key, mark) if mark and mark.startswith(RETRY) else None
            if pending is None or pending.due > now:
                return False
            return _swap(conn, pending, f"{SENDING}{pending.attempts}")

    def post_ts(self, run_id: str, key: str) -> str | None:
        """The posted message's ts; None while it is not posted (or never will be)."""
        with self.store.engine.connect() as conn:
            ts = conn.execute(sa.select(POST.c.ts).where(POST.c.run_id == run_id, POST.c.key == key)).scalar()
        return ts if is_ts(ts) else None

    def set_post_ts(self, run_id: str, key: str, ts: str) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(sa.update(POST).where(POST.c.run_id == run_id, POST.c.key == key).values(ts=ts))

    def post_failed(self, run_id: str, key: str, seq: int, backoff: list[float], now: float) -> float | None:
        """A send of a claimed post failed: plan its next try after ``backoff[n - 1]`` seconds
        (``n``: failed sends so far), or give it up when ``backoff`` has no more waits.
        Returns when it is due (epoch seconds), None when given up."""
        with self.store.engine.begin() as conn:
            where = (POST.c.run_id == run_id, POST.c.key == key)
            mark = conn.execute(sa.select(POST.c.ts).where(*where)).scalar()
            if mark is not None and not mark.startswith(SENDING):
                return None  # (not a send of ours under way: nothing to plan)
            attempts = 1 + (int(mark.removeprefix(SENDING)) if mark else 0)
            if attempts > len(backoff):
                new, due = f"{GAVE_UP}{attempts}", None
            else:
                due = now + backoff[attempts - 1]
                new = f"{RETRY}{attempts}:{due:.3f}:{seq}"
            conn.execute(sa.update(POST).where(*where, _is(POST.c.ts, mark)).values(ts=new))
            return due

    def pending_posts(self) -> list[PendingPost]:
        """Every post waiting for a retry, the soonest first."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(POST.c.run_id, POST.c.key, POST.c.ts).where(POST.c.ts.like(f"{RETRY}%"))
            ).all()
        found = [p for r in rows if (p := PendingPost.parse(r[0], r[1], r[2])) is not None]
        return sorted(found, key=lambda p: p.due)

    def give_up_post(self, pending: PendingPost) -> bool:
        """The post is no longer called for: stop retrying it (False: someone took it first)."""
        with self.store.engine.begin() as conn:
            return _swap(conn, pending, f"{GAVE_UP}{pending.attempts}")

    def release_post(self, pending: PendingPost) -> bool:
        """Unclaim a waiting post, so whoever makes it again (a reminder pass) claims it anew."""
        with self.store.engine.begin() as conn:
            where = (POST.c.run_id == pending.run_id, POST.c.key == pending.key, POST.c.ts == pending.mark)
            return bool(conn.execute(sa.delete(POST).where(*where)).rowcount == 1)

    # -- what App Home shows that the event log does not: environment locks ----------------------
    def last_audit_id(self) -> int:
        with self.store.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(AUDIT.c.id))).scalar() or 0)

    def lock_changes_after(self, audit_id: int, limit: int = 1000) -> tuple[int, bool]:
        """Audit entries after ``audit_id``: (the last one's id, whether any changed a lock).
        Every lock change is audited in its own transaction, whichever door it came through
        (Slack, REST, CLI, the lock keeper, a rollback)."""
        query = (
            sa.select(AUDIT.c.id, AUDIT.c.action, AUDIT.c.outcome)
            .where(AUDIT.c.id > audit_id)
            .order_by(AUDIT.c.id)
            .limit(limit)
        )
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return audit_id, False
        changed = any(action in LOCK_ACTIONS and outcome == "accepted" for _, action, outcome in rows)
        return int(rows[-1][0]), changed

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


def _is(column: sa.ColumnElement[str | None], value: str | None) -> sa.ColumnElement[bool]:
    return column.is_(None) if value is None else column == value


def _swap(conn: sa.Connection, pending: PendingPost, new: str) -> bool:
    where = (POST.c.run_id == pending.run_id, POST.c.key == pending.key, POST.c.ts == pending.mark)
    return bool(conn.execute(sa.update(POST).where(*where).values(ts=new)).rowcount == 1)

"""What the Slack notifier keeps: each run's message (channel, ts), the thread posts already
claimed, and its cursor into the event log. All writes are conditional, so a restart (or a
second replica) never posts a run's message or a thread post twice."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from storage.store import SqlStore
from storage.tables import T

MESSAGE, POST, CURSOR = T["slack_message"], T["slack_post"], T["cursor"]


@dataclass(frozen=True, slots=True)
class RunMessage:
    run_id: str
    channel: str
    ts: str | None


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

    def claim_post(self, run_id: str, key: str) -> bool:
        """Claim the thread post ``key`` of a run; False if it was claimed before."""
        with self.store.engine.begin() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(POST).values(run_id=run_id, key=key))
                return True
            except IntegrityError:
                return False

    def post_ts(self, run_id: str, key: str) -> str | None:
        with self.store.engine.connect() as conn:
            return conn.execute(
                sa.select(POST.c.ts).where(POST.c.run_id == run_id, POST.c.key == key)
            ).scalar()

    def set_post_ts(self, run_id: str, key: str, ts: str) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(sa.update(POST).where(POST.c.run_id == run_id, POST.c.key == key).values(ts=ts))

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

"""The audit chain's head: the row (``audit_head``) that says where the chain ends.

The store moves it with every append, in the same transaction (``SqlTx.flush_events``), and
links the next entry to the hash it holds rather than to whatever entry happens to be last: an
entry removed from the end is then still missed, by the head before anything is appended and
by the next entry's link after.
"""

from __future__ import annotations

import sqlalchemy as sa

from core.audit import Checkpoint
from storage.store import SqlStore
from storage.tables import T, metadata

HEAD, AUDIT = metadata.tables["audit_head"], T["audit"]
#: the one row's id, inline: the driver fast path binds only the parameters it is handed
_ONE: sa.ColumnClause[int] = sa.literal_column("1", sa.Integer())
_NEWEST = sa.select(sa.func.max(AUDIT.c.id)).scalar_subquery()

#: the hash the next entry links to, and how many entries the chain holds
read = sa.select(HEAD.c.hash, HEAD.c.entries).where(HEAD.c.id == _ONE)
#: after appending ``n`` entries ending with hash ``h`` (the newest id is read in the statement)
move = (
    sa.update(HEAD)
    .where(HEAD.c.id == _ONE)
    .values(hash=sa.bindparam("h"), entries=HEAD.c.entries + sa.bindparam("n"), last_id=_NEWEST)
)
#: the same when the row is missing (it was deleted): counting from here, verify sees the gap
start = sa.insert(HEAD).values(id=_ONE, hash=sa.bindparam("h"), entries=sa.bindparam("n"), last_id=_NEWEST)


def checkpoint(store: SqlStore) -> Checkpoint | None:
    """The head as it stands (read before walking the chain: entries appended meanwhile come
    after it); None if the row is gone."""
    query = sa.select(HEAD.c.last_id, HEAD.c.hash, HEAD.c.entries).where(HEAD.c.id == _ONE)
    with store.reading() as tx:
        row = tx.conn.execute(query).first()
    return Checkpoint(int(row[0]), str(row[1]), int(row[2])) if row is not None else None

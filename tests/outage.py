"""Take a running server's database away and give it back, on either database.

PostgreSQL: the server connects through a ``TcpProxy``; ``begin`` drops its connections and
refuses new ones, as a stopped server does. SQLite has no server to stop: ``begin`` closes the
store's idle connections and makes opening new ones fail as SQLite does when the database file
cannot be opened (``unable to open database file``); connections in use finish what they do.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
import sqlalchemy as sa

from storage.store import SqlStore
from tests.tcp_proxy import TcpProxy


class Outage:
    def __init__(self, url: str, monkeypatch: pytest.MonkeyPatch, proxy: TcpProxy | None = None) -> None:
        self.direct_url = url
        self.proxy = proxy
        self.monkeypatch = monkeypatch
        #: connections refused while the outage lasted (SQLite; the proxy refuses PostgreSQL's)
        self.refused = 0
        self._store: SqlStore | None = None

    @property
    def url(self) -> str:
        """The URL to start the server with."""
        if self.proxy is None:
            return self.direct_url
        through = sa.engine.make_url(self.direct_url).set(host="127.0.0.1", port=self.proxy.port)
        return through.render_as_string(hide_password=False)

    def begin(self, store: SqlStore) -> None:
        if self.proxy is not None:
            self.proxy.cut()
            return
        self._store = store

        def unable_to_open(*args: Any, **kwargs: Any) -> Any:
            self.refused += 1
            raise sqlite3.OperationalError("unable to open database file")

        self._connect = store.engine.dialect.connect
        self.monkeypatch.setattr(store.engine.dialect, "connect", unable_to_open, raising=True)
        store.engine.dispose()

    def end(self) -> None:
        if self.proxy is not None:
            self.proxy.restore()
        elif self._store is not None:
            self.monkeypatch.setattr(self._store.engine.dialect, "connect", self._connect, raising=True)

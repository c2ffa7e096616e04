"""Statements on the hot path, sent straight to the database driver.

Every command ends in a handful of ``executemany`` writes (run versions, rows, events, audit)
and starts with a few small reads. Through SQLAlchemy's execution machinery each costs several
times what the driver needs, so these statements are compiled once per dialect by SQLAlchemy
(SQL text, parameter order and the column types' own bind processors, so values are converted
exactly as SQLAlchemy would) and then executed on the transaction's own DB-API connection.
Reads come back as plain tuples (``fetch_all``, for ids and numbers) or as dicts whose values
went through the columns' own result processors (``fetch_mappings``), again exactly as
SQLAlchemy would convert them.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert, Update
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import Select

_NAMED = re.compile(r"%\((\w+)\)s")
#: from this many rows a PostgreSQL insert goes by ``COPY`` instead of ``executemany``
COPY_FROM_ROWS = 16


class DriverStatement:
    def __init__(
        self,
        statement: Insert | Update | Select[Any] | TextClause,
        dialect: Dialect,
        keys: Sequence[str] | None = None,
    ) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys) if keys is not None else None)
        assert isinstance(compiled, SQLCompiler)
        self.compiled = compiled
        self.sql = compiled.string
        self.names: list[str] = list(compiled.positiontup or []) if compiled.positional else []
        self.positional = compiled.positional
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self.processors[compiled.bind_names.get(bind, name)] = processor
        #: the parameters in the order a positional driver wants them, and which need converting
        self.pick = _picker(self.names)
        self.converters = [(i, self.processors[n]) for i, n in enumerate(self.names) if n in self.processors]
        self.statement = statement
        self.dialect = dialect
        self._results: tuple[list[str], list[tuple[int, Callable[[Any], Any]]]] | None = None
        #: many rows into PostgreSQL go by ``COPY … FROM STDIN`` (the server parses and executes
        #: once, not once a row): the statement and the parameter of each column, in order
        self._copy: tuple[str, list[str]] | None = None
        if isinstance(statement, Insert) and dialect.name == "postgresql" and not self.positional:
            head, _, tail = self.sql.partition(" VALUES ")
            names = _NAMED.findall(tail.partition(" RETURNING ")[0])
            self._copy = (head.replace("INSERT INTO", "COPY", 1) + " FROM STDIN", names)

    def _row(self, params: dict[str, Any]) -> Any:
        if self.positional:
            values = list(self.pick(params))
            for index, process in self.converters:
                if values[index] is not None:
                    values[index] = process(values[index])
            return values
        named = dict(params)
        for name, convert in self.processors.items():
            if named.get(name) is not None:
                named[name] = convert(named[name])
        return named

    def fetch_all(self, conn: Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run a read whose result columns need no conversion; rows as plain tuples."""
        return self.send(conn, params)()

    def send(self, conn: Connection, params: dict[str, Any]) -> Callable[[], list[tuple[Any, ...]]]:
        """Send the statement; its rows (as plain tuples) are read when the returned function is
        called: inside ``pipelined``, after the pipeline ends."""
        cursor = _cursor(conn)
        try:
            cursor.execute(self.sql, self._row(dict(self.compiled.construct_params(params))))
        except BaseException:
            cursor.close()
            raise

        def rows() -> list[tuple[Any, ...]]:
            try:
                return [tuple(row) for row in cursor.fetchall()] if cursor.description else []
            finally:
                cursor.close()

        return rows

    def fetch_mappings(self, conn: Connection, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Run a read; rows as dicts of converted values (what ``.mappings()`` would give)."""
        dbapi = conn.connection.driver_connection
        assert dbapi is not None
        cursor = dbapi.cursor()
        try:
            cursor.execute(self.sql, self._row(dict(self.compiled.construct_params(params))))
            rows = cursor.fetchall()
            keys, converters = self._results or self._result_processors(cursor.description)
        finally:
            cursor.close()
        out = []
        for row in rows:
            values = list(row)
            for index, process in converters:
                values[index] = process(values[index])
            out.append(dict(zip(keys, values, strict=True)))
        return out

    def _result_processors(
        self, description: Sequence[Sequence[Any]]
    ) -> tuple[list[str], list[tuple[int, Callable[[Any], Any]]]]:
        """The columns' result processors, for the driver's column types (``description``)."""
        assert isinstance(self.statement, Select)
        columns = list(self.statement.selected_columns)
        converters: list[tuple[int, Callable[[Any], Any]]] = []
        for index, column in enumerate(columns):
            coltype = description[index][1]
            process = column.type.dialect_impl(self.dialect).result_processor(self.dialect, coltype)
            if process is not None:
                converters.append((index, process))
        results = ([str(c.key) for c in columns], converters)
        self._results = results
        return results

    def execute_many(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
        """Run for every row in the connection's current transaction; returns rows matched."""
        return self.send_many(conn, rows)()

    def send_many(
        self, conn: Connection, rows: Sequence[dict[str, Any]], copy: bool = True
    ) -> Callable[[], int]:
        """Send the statement for every row; the returned function gives the rows matched
        (inside ``pipelined``, once the pipeline has ended; so there ``copy`` must be False:
        PostgreSQL's ``COPY`` cannot run in a pipeline)."""
        cursor = _cursor(conn)
        try:
            if copy and self._copy is not None and len(rows) >= COPY_FROM_ROWS:
                sql, names = self._copy
                with cursor.copy(sql) as writer:
                    for r in rows:
                        row = self._row(r)
                        writer.write_row([row[name] for name in names])
                cursor.close()
                return lambda: len(rows)
            cursor.executemany(self.sql, [self._row(r) for r in rows])
        except BaseException:
            cursor.close()
            raise

        def matched() -> int:
            try:
                return int(cursor.rowcount)
            finally:
                cursor.close()

        return matched


def _cursor(conn: Connection) -> Any:
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    return dbapi.cursor()


@contextmanager
def pipelined(conn: Connection) -> Iterator[None]:
    """Statements sent inside (``send``, ``send_many``) reach PostgreSQL in one round trip
    (psycopg's pipeline mode): read their results after the block. SQLite runs each at once."""
    if conn.dialect.name != "postgresql":
        yield
        return
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    with dbapi.pipeline():
        yield


def _picker(names: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    if len(names) == 1:
        only = names[0]
        return lambda params: (params[only],)
    return operator.itemgetter(*names) if names else (lambda params: ())


class DriverStatements:
    """Compiled statements of one dialect, built on first use."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._cache: dict[tuple[Any, tuple[str, ...] | None], DriverStatement] = {}

    def get(
        self, statement: Insert | Update | Select[Any] | TextClause, keys: Sequence[str] | None = None
    ) -> DriverStatement:
        key = (statement, tuple(keys) if keys is not None else None)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = DriverStatement(statement, self.dialect, keys)
        return found

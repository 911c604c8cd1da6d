"""Dialect-portable statement builders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler

T = TypeVar("T")
_VALUES_PER_INSERT = 999
"""The most values a SQLite statement binds, in every version still in use."""


async def first_or_none(
    conn: AsyncConnection, query: sa.Executable, mapper: Callable[[sa.Row[Any]], T]
) -> T | None:
    """The first row of `query`, mapped; None when there is none."""
    row = (await conn.execute(query)).first()
    return None if row is None else mapper(row)


def insert(conn: AsyncConnection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ON CONFLICT on both SQLite and PostgreSQL."""
    return dialect_insert(conn.dialect.name, table)


def dialect_insert(dialect_name: str, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    return postgresql.insert(table) if dialect_name == "postgresql" else sqlite.insert(table)


def insert_ignore(conn: AsyncConnection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """INSERT that does nothing when a unique constraint is hit (a concurrent creator won)."""
    return insert(conn, table).on_conflict_do_nothing()


class BulkStatement:
    """A Core statement compiled once per dialect and executed through the driver's
    executemany with positional rows.

    On hot batch paths SQLAlchemy's per-row parameter processing costs more than the database
    work itself, so rows are passed already in their stored form (ints for timestamps, JSON
    text for documents) in the order of `columns`.
    """

    def __init__(self, build: Callable[[str], sa.ClauseElement], columns: Sequence[str]) -> None:
        """`build(dialect_name)` returns the statement; binds must follow `columns`."""
        self._build = build
        self._columns = tuple(columns)
        self._compiled: dict[str, str] = {}

    def _sql(self, dialect: sa.Dialect) -> str:
        sql = self._compiled.get(dialect.name)
        if sql is None:
            compiled = self._build(dialect.name).compile(dialect=dialect)
            assert isinstance(compiled, SQLCompiler)
            order, expected = tuple(compiled.positiontup or ()), self._binds(dialect.name)
            if order != expected:
                raise ValueError(f"bind order {order} differs from {expected}")
            sql = self._compiled[dialect.name] = compiled.string
        return sql

    def _binds(self, dialect_name: str) -> tuple[str, ...]:
        return self._columns

    def write(self, conn: sa.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:
            conn.exec_driver_sql(self._sql(conn.dialect), list(rows))


class DriverQuery:
    """A Core statement compiled once per dialect (and per length of each list it is given)
    and run as the driver's SQL, its parameters and rows in their stored form, as with
    `BulkStatement`; a list goes to an expanding bind (`IN`), a list of tuples to one of row
    values. A list is padded to a power of two long by repeating its last item, which an
    `IN` does not notice: lists of every length up to thousands (the media buys of a large
    plan that a transaction names) would otherwise compile, and keep, a statement each.

    For the few statements each delivery transaction runs whatever its size: there, a Core
    execution (its cache key, its expanding binds, its result types) costs several times
    what the database does: a read of 50 campaigns took 0.37 ms through Core, 0.18 ms as the
    driver's SQL and 0.05 ms on the bare cursor.
    """

    def __init__(self, statement: sa.ClauseElement) -> None:
        self._statement = statement
        self._compiled: dict[tuple[str, tuple[tuple[str, int], ...]], _Compiled] = {}

    def rows(self, conn: sa.Connection, **params: Any) -> list[Sequence[Any]]:
        for name, value in params.items():
            if isinstance(value, list) and value:
                params[name] = value + value[-1:] * (
                    (1 << (len(value) - 1).bit_length()) - len(value)
                )
        lists = tuple((name, len(v)) for name, v in params.items() if isinstance(v, list))
        key = (conn.dialect.name, lists)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = self._compile(conn.dialect, params)
        sql, order, constants = compiled
        values = {**constants, **params}
        for name, _ in lists:
            for n, item in enumerate(params[name], 1):
                # A tuple goes to a row value, `(a, b) IN (...)`, one bind per member.
                if isinstance(item, tuple):
                    values.update({f"{name}_{n}_{m}": v for m, v in enumerate(item, 1)})
                else:
                    values[f"{name}_{n}"] = item
        # Through SQLAlchemy's driver-level call, which turns driver errors into its own (a
        # lost connection is then discarded) but leaves values as the driver gives them.
        result = conn.exec_driver_sql(sql, tuple(values[name] for name in order))
        return list(result.all()) if result.returns_rows else []

    def _compile(self, dialect: sa.Dialect, params: dict[str, Any]) -> _Compiled:
        if any(isinstance(v, list) for v in params.values()):
            # Each list rendered as that many binds: compiled with the caller's values (all
            # are needed), of which only the lists' lengths end up in the SQL.
            expanded = self._statement.params(params)
            compiled = expanded.compile(
                dialect=dialect, compile_kwargs={"render_postcompile": True}
            )
        else:
            compiled = self._statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        assert compiled.positiontup is not None, "the driver takes positional parameters"
        # The statement's own literals (the 0 of a coalesce) are binds of its own as well; a
        # bind the caller leaves out is missing from every call, not bound to NULL.
        constants = {
            name: bind.value
            for name, bind in compiled.binds.items()
            if name not in params and not bind.required
        }
        return compiled.string, tuple(compiled.positiontup), constants


_Compiled = tuple[str, tuple[str, ...], dict[str, Any]]
"""A statement's SQL, the names of its binds in order, and the values of its literals."""


class BulkInsert(BulkStatement):
    """An INSERT of whole rows of `table`, given in their stored form and in the table's column
    order; with a `conflict_key` (its leading columns), an upsert that overwrites every other
    column.

    SQLite runs the row statement through executemany, which for every set of values resets
    the statement and (with apsw) looks it up in its cache by the hash of its text: a large
    share of what a row of a plain insert costs. A plain insert therefore takes as many
    rows a statement as `_VALUES_PER_INSERT` allows (and the rest one at a time), as INSERT
    OR FAIL: a statement of several rows that may abort halfway has SQLite first copy every
    stored page it changes to a statement journal, so as to undo only its own rows, while
    one that fails keeps the rows before it, which the transaction then rolls back with
    everything else (no caller goes on with a transaction after a failed statement). An
    upsert goes one row at a time: the NOT NULL checks of its DO UPDATE abort. PostgreSQL
    would plan and run that statement once per row; it gets one INSERT ... SELECT over
    `unnest` of a single array of the table's own row type instead, which costs it about half
    as much per row, and the driver encodes each tuple as one record. A statement may change a
    row only once, so of the rows with the same key only the last is sent: the state
    consecutive upserts would have left.
    """

    def __init__(self, table: sa.Table, *, conflict_key: Sequence[str] = ()) -> None:
        super().__init__(self._statement, table.columns.keys())
        self._table = table
        self._conflict_key = tuple(conflict_key)
        if self._columns[: len(self._conflict_key)] != self._conflict_key:
            # A leading key is a slice of each row: the cheapest way to tell rows apart.
            raise ValueError(f"{table.name}: the conflict key must be its leading columns")
        self._order_checked = False
        self._rows_per_insert = _VALUES_PER_INSERT // len(self._columns)
        self._many_rows = (
            None
            if self._conflict_key
            else BulkStatement(
                self._many_rows_statement,
                [f"{c}_{n}" for n in range(self._rows_per_insert) for c in self._columns],
            )
        )
        """SQLite's statement of many rows, for a plain insert."""

    def _statement(self, dialect_name: str) -> sa.ClauseElement:
        statement: postgresql.Insert | sqlite.Insert
        if dialect_name == "postgresql":
            rows = sa.bindparam("rows", type_=_RowsOf(self._table.name))
            incoming = (
                sa.func.unnest(rows).table_valued(*self._columns).render_derived(name="incoming")
            )
            statement = postgresql.insert(self._table).from_select(
                list(self._columns), sa.select(*incoming.c)
            )
        else:
            statement = sqlite.insert(self._table).values(
                {c: sa.bindparam(c) for c in self._columns}
            )
        if not self._conflict_key:
            return statement
        return statement.on_conflict_do_update(
            index_elements=list(self._conflict_key),
            set_={c: statement.excluded[c] for c in self._columns if c not in self._conflict_key},
        )

    def _many_rows_statement(self, _dialect_name: str) -> sa.ClauseElement:
        rows = range(self._rows_per_insert)
        return (
            sqlite.insert(self._table)
            .prefix_with("OR FAIL")
            .values([{c: sa.bindparam(f"{c}_{n}") for c in self._columns} for n in rows])
        )

    def _binds(self, dialect_name: str) -> tuple[str, ...]:
        return ("rows",) if dialect_name == "postgresql" else self._columns

    def write(self, conn: sa.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        if conn.dialect.name != "postgresql":
            whole = 0
            if self._many_rows is not None:
                whole = len(rows) - len(rows) % self._rows_per_insert
                # Laid end to end, then cut a statement's worth at a time: half of what
                # chaining each statement's rows into a tuple costs.
                laid: list[Any] = []
                lay = laid.extend
                for row in islice(rows, whole):
                    lay(row)
                values, width = tuple(laid), self._rows_per_insert * len(self._columns)
                self._many_rows.write(
                    conn, [values[first : first + width] for first in range(0, len(values), width)]
                )
            super().write(conn, rows[whole:])
            return
        if not self._order_checked:
            self._check_stored_order(conn)
        if self._conflict_key:
            width = len(self._conflict_key)
            rows = list({row[:width]: row for row in rows}.values())
        if rows:
            conn.exec_driver_sql(self._sql(conn.dialect), (list(rows),))

    def _check_stored_order(self, conn: sa.Connection) -> None:
        """Records are matched to columns by position, so the stored table must have the
        model's column order: a migration that appended a column the model declares elsewhere
        would otherwise shift values into the wrong columns."""
        stored = conn.execute(_STORED_COLUMNS, {"table": self._table.name}).scalars().all()
        if tuple(stored) != self._columns:
            raise RuntimeError(
                f"table {self._table.name} stores columns {tuple(stored)}, "
                f"its model declares {self._columns}"
            )
        self._order_checked = True


_STORED_COLUMNS = sa.text(
    "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:table AS regclass)"
    " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
)


class _RowsOf(sa.types.UserDefinedType[Any]):
    """An array of a table's row type, as PostgreSQL defines one for every table."""

    cache_ok = True
    render_bind_cast = True

    def __init__(self, table_name: str) -> None:
        self.table_name = table_name

    def get_col_spec(self, **_: Any) -> str:
        return f"{self.table_name}[]"

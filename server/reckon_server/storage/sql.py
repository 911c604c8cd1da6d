"""Dialect-portable statement builders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler

T = TypeVar("T")


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


def upsert(
    dialect_name: str, table: sa.Table, key: Sequence[str], columns: Sequence[str]
) -> sa.ClauseElement:
    """INSERT of `columns` that overwrites every non-key column on a `key` conflict."""
    statement = dialect_insert(dialect_name, table).values({c: sa.bindparam(c) for c in columns})
    return statement.on_conflict_do_update(
        index_elements=list(key),
        set_={c: statement.excluded[c] for c in columns if c not in key},
    )


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
            order = tuple(compiled.positiontup or ())
            if order != self._columns:
                raise ValueError(f"bind order {order} differs from {self._columns}")
            sql = self._compiled[dialect.name] = compiled.string
        return sql

    def executemany(self, conn: sa.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:
            conn.exec_driver_sql(self._sql(conn.dialect), list(rows))

"""Dialect-portable statement builders."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


def insert(conn: AsyncConnection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ON CONFLICT on both SQLite and PostgreSQL."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_ignore(conn: AsyncConnection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """INSERT that does nothing when a unique constraint is hit (a concurrent creator won)."""
    return insert(conn, table).on_conflict_do_nothing()

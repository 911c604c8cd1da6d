"""Engines and units of work.

SQLite allows one writer at a time, so writes go through a one-connection engine that opens
transactions with BEGIN IMMEDIATE: writers queue on the pool instead of failing with
SQLITE_BUSY on a read-to-write upgrade, and readers use a separate pool under WAL. PostgreSQL
uses one pooled engine for both; its invariants rest on constraints and row locks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from reckon_server.errors import Reason, ReckonError, unavailable

log = logging.getLogger(__name__)


class Database:
    """The storage entry point: `write()` and `read()` yield a connection in a transaction that
    commits on success and rolls back on any exception."""

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.url = sa.make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self._writer = _sqlite_engine(url, immediate=True, pool_size=1)
            self._reader = _sqlite_engine(url, immediate=False, pool_size=4)
        else:
            self._writer = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
            self._reader = self._writer

    @property
    def engine(self) -> AsyncEngine:
        return self._writer

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        async with _storage_errors(), self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with _storage_errors(), self._reader.begin() as conn:
            yield conn

    async def dispose(self) -> None:
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()


@asynccontextmanager
async def _storage_errors() -> AsyncIterator[None]:
    """Connection-level failures become a retryable error; nothing was committed."""
    try:
        yield
    except ReckonError:
        raise
    except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError, OSError) as err:
        log.warning("storage unavailable: %s", err)
        raise unavailable(Reason.STORAGE_UNAVAILABLE, "storage is unavailable") from err
    except exc.DBAPIError as err:
        if err.connection_invalidated:
            raise unavailable(Reason.STORAGE_UNAVAILABLE, "storage is unavailable") from err
        raise


def _sqlite_engine(url: str, *, immediate: bool, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=60)

    @event.listens_for(engine.sync_engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Own transaction control: pysqlite's implicit BEGIN would defer the write lock.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=FULL",
            "busy_timeout=30000",
            "foreign_keys=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine

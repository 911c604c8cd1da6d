"""Engines and units of work.

SQLite allows one writer at a time, so writes open transactions with BEGIN IMMEDIATE and take
turns on an in-process lock: writers queue instead of failing with SQLITE_BUSY on a
read-to-write upgrade or polling the file lock, and readers use a separate pool under WAL.
PostgreSQL uses one pooled engine for both; its invariants rest on constraints and row locks.

Group-commit batches run as plain synchronous code (`send_batch`). On SQLite
the whole transaction runs in a writer process (`sqlite_writer`), which may have the next
batch waiting while it commits one; on PostgreSQL the same code runs through the async driver
with `run_sync`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from reckon_server.errors import Reason, ReckonError, unavailable
from reckon_server.storage import apsw_dbapi
from reckon_server.storage.sqlite_writer import SqliteWriter

log = logging.getLogger(__name__)
T = TypeVar("T")


class Database:
    """The storage entry point: `write()` and `read()` yield a connection in a transaction that
    commits on success and rolls back on any exception."""

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.url = sa.make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self._sqlite_turn: asyncio.Lock | None = None
        if self.is_sqlite:
            self._writer = _sqlite_engine(url, immediate=True, pool_size=1)
            self._reader = _sqlite_engine(url, immediate=False, pool_size=4)
            self._sqlite_turn = asyncio.Lock()
            self._batch_writer = SqliteWriter(url, sqlite_batch_engine)
            self._batches_in_flight = 0
            self._no_batches = asyncio.Event()
            self._no_batches.set()
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
        async with _storage_errors(), self._turn(), self._writer.begin() as conn:
            yield conn

    @property
    def batch_pipeline_depth(self) -> int:
        """How many batches `send_batch` may have sent without their result yet: on SQLite one
        commits in the writer process while the next waits in its pipe; on PostgreSQL batches
        go one at a time, as concurrent transactions would take their row locks in any order."""
        return 1 if self._sqlite_turn is None else 2

    async def send_batch(self, work: Callable[[sa.Connection], T]) -> Awaitable[T]:
        """Put `work` in line behind every batch sent before it, to run in one write
        transaction that commits if it returns and rolls back if it raises; returns what
        awaits its result. On SQLite it runs in the writer process: `work`, its result and
        its exceptions must pickle."""
        if self._sqlite_turn is None:
            return self._run_batch(work)
        async with self._sqlite_turn:
            result = asyncio.wrap_future(self._batch_writer.submit(work))
            self._batches_in_flight += 1
            self._no_batches.clear()
            result.add_done_callback(self._batch_settled)
        return self._batch_result(result)

    async def _run_batch(self, work: Callable[[sa.Connection], T]) -> T:
        async with _storage_errors(), self._writer.begin() as conn:
            return await conn.run_sync(work)

    async def _batch_result(self, result: Awaitable[T]) -> T:
        async with _storage_errors():
            return await result

    def _batch_settled(self, _: object) -> None:
        self._batches_in_flight -= 1
        if not self._batches_in_flight:
            self._no_batches.set()

    def start_batch_writer(self) -> None:
        """Start what `send_batch` needs ahead of the first batch (SQLite's writer process)."""
        if self._sqlite_turn is not None:
            self._batch_writer.start()

    def _turn(self) -> AbstractAsyncContextManager[Any]:
        return self._sqlite_exclusive() if self._sqlite_turn is not None else nullcontext()

    @asynccontextmanager
    async def _sqlite_exclusive(self) -> AsyncIterator[None]:
        """The write lock for the server's own connection: no batch may be sent meanwhile,
        and those already sent must be done."""
        assert self._sqlite_turn is not None
        async with self._sqlite_turn:
            await self._no_batches.wait()
            yield

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with _storage_errors(), self._reader.begin() as conn:
            yield conn

    async def dispose(self) -> None:
        if self._sqlite_turn is not None:
            self._batch_writer.close()
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
    _configure_sqlite(engine.sync_engine, immediate=immediate)
    return engine


def sqlite_batch_engine(url: str) -> sa.Engine:
    """The synchronous twin of the write engine, used by the writer process, on apsw (see
    `apsw_dbapi`)."""
    sync_url = sa.make_url(url).set(drivername="sqlite+pysqlite")
    engine = sa.create_engine(sync_url, module=apsw_dbapi, pool_size=1, max_overflow=0)
    _configure_sqlite(engine, immediate=True)
    return engine


def _configure_sqlite(engine: sa.Engine, *, immediate: bool) -> None:
    @event.listens_for(engine, "connect")
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

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

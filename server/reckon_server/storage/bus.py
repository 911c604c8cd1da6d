"""Change notifications between replicas: PostgreSQL LISTEN/NOTIFY, or in-process on SQLite.

Notifications are hints ("this changed, look again"), never the data itself: a missed one
costs latency, not correctness, because every subscriber also re-reads on a bounded interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import sqlalchemy as sa

from reckon_server.storage.database import Database

log = logging.getLogger(__name__)
CHANNEL = "reckon_changes"
_CLOSE_SECONDS = 10.0
Handler = Callable[[str, str], None]
"""Called with (topic, payload) for every change, on the event loop."""


class ChangeBus:
    def __init__(self, database: Database) -> None:
        self._database = database
        self._handlers: list[Handler] = []
        self._listener: asyncpg.Connection | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._closed = False
        self._publishing = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    def subscribe(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def start(self) -> None:
        if not self._database.is_sqlite:
            await self._listen()
            self._keeper = asyncio.get_running_loop().create_task(self._keep_listening())

    async def publish(self, topic: str, payload: str = "") -> None:
        if self._closed:
            # A write that settles while the server stops: other replicas' watchers catch up
            # at their next heartbeat, and a connection opened now would never be closed.
            return
        if self._database.is_sqlite:
            self._dispatch(topic, payload)
            return
        self._publishing += 1
        self._quiet.clear()
        try:
            # Our own listener receives it too, so local and remote subscribers see one path.
            async with self._database.engine.connect() as conn:
                await conn.execute(
                    sa.text("SELECT pg_notify(:channel, :message)"),
                    {"channel": CHANNEL, "message": f"{topic}\n{payload}"},
                )
                await conn.commit()
        except Exception:
            # The change is committed: failing its caller now would report a stored write as
            # lost. Subscribers here still hear of it; other replicas' at their next look.
            log.warning("could not publish change %r to other replicas", topic, exc_info=True)
            self._dispatch(topic, payload)
        finally:
            self._publishing -= 1
            if not self._publishing:
                self._quiet.set()

    async def close(self) -> None:
        self._closed = True
        # A connection still out when storage is released would stay open, lost to its pool.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_SECONDS):
                await self._quiet.wait()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()

    def _dispatch(self, topic: str, payload: str) -> None:
        for handler in self._handlers:
            try:
                handler(topic, payload)
            except Exception:
                log.exception("change handler failed for %s", topic)

    def _receive(self, _conn: Any, _pid: int, _channel: str, message: str) -> None:
        topic, _, payload = message.partition("\n")
        self._dispatch(topic, payload)

    async def _listen(self) -> None:
        dsn = self._database.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._listener = await asyncpg.connect(dsn)
        await self._listener.add_listener(CHANNEL, self._receive)

    async def _keep_listening(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._listener is not None and not self._listener.is_closed():
                continue
            try:
                await self._listen()
                log.info("change listener reconnected")
                # Anything may have changed while we were deaf.
                self._dispatch("*", "")
            except (OSError, asyncpg.PostgresError) as err:
                log.warning("change listener reconnect failed: %s", err)

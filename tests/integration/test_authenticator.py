"""The key cache: callers that miss together share one lookup, and a revocation that arrives
during a lookup keeps its result out of the cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from reckon_server.domain.principals import Role
from reckon_server.services.keys import KEY_REVOKED, Authenticator
from reckon_server.services.notify import Notifier
from reckon_server.storage import principals as principal_store
from reckon_server.storage.bus import ChangeBus
from reckon_server.storage.database import Database


@pytest.fixture
def key_lookups() -> Iterator[list[str]]:
    """Statements that read the API keys table, on any engine of this process."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "api_keys.key_hash = " in statement:
            seen.append(statement)

    event.listen(sa.Engine, "before_cursor_execute", record)
    yield seen
    event.remove(sa.Engine, "before_cursor_execute", record)


@dataclass
class Keyed:
    """An agent's key and an authenticator on a running change bus."""

    secret: str
    key_id: str
    notifier: Notifier
    authenticate: Authenticator


@pytest.fixture
async def keyed(database: Database) -> AsyncIterator[Keyed]:
    async with database.write() as conn:
        org_id = await principal_store.ensure_org(conn, "default")
        agent = await principal_store.ensure_principal(conn, org_id, "bot", Role.AGENT)
        key = await principal_store.add_key(conn, agent)
    bus = ChangeBus(database)
    await bus.start()
    notifier = Notifier(bus)
    yield Keyed(key.secret, key.key_id, notifier, Authenticator(database, notifier, ttl=60))
    await bus.close()


async def test_callers_that_miss_together_share_one_lookup(
    keyed: Keyed, key_lookups: list[str]
) -> None:
    principals = await asyncio.gather(*(keyed.authenticate(keyed.secret) for _ in range(50)))
    assert {p.name if p else None for p in principals} == {"bot"}
    assert len(key_lookups) == 1
    assert await keyed.authenticate("not-a-key") is None
    assert len(key_lookups) == 2


async def test_a_revocation_during_a_lookup_keeps_its_result_out_of_the_cache(
    database: Database, keyed: Keyed, key_lookups: list[str]
) -> None:
    delivered = asyncio.Event()
    keyed.notifier.subscribe(lambda topic, _: delivered.set() if topic == KEY_REVOKED else None)
    async with database.engine.connect() as blocker:
        if not database.is_sqlite:
            # PostgreSQL delivers notifications asynchronously: the read waits for it.
            await blocker.execute(sa.text("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"))
        first = asyncio.ensure_future(keyed.authenticate(keyed.secret))
        while not key_lookups:  # noqa: ASYNC110 - polls the statement hook until the read is issued
            await asyncio.sleep(0)
        await keyed.notifier.publish(KEY_REVOKED, keyed.key_id)
        await delivered.wait()
        await blocker.rollback()
    assert (await first) is not None  # the call began before the revocation
    assert await keyed.authenticate(keyed.secret) is not None  # the key was never revoked
    assert len(key_lookups) == 2  # read again, not served from the cache
    assert await keyed.authenticate(keyed.secret) is not None
    assert len(key_lookups) == 2  # and now cached


async def test_an_open_call_outlives_an_outage_of_key_lookups_but_not_its_key(
    database: Database, keyed: Keyed, key_lookups: list[str]
) -> None:
    authenticate = Authenticator(database, keyed.notifier, ttl=0.05)
    failing = True

    def fail(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if failing and "api_keys.key_hash = " in statement:
            raise ConnectionResetError("storage went away")

    watching = asyncio.ensure_future(authenticate.until_revoked(keyed.secret))
    await asyncio.sleep(0.2)
    event.listen(sa.Engine, "before_cursor_execute", fail)
    try:
        looked_up = len(key_lookups)
        async with asyncio.timeout(5):
            while len(key_lookups) < looked_up + 3 and not watching.done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert not watching.done(), "a failed recheck ended the call"
        failing = False
        async with database.write() as conn:
            org_id = await principal_store.ensure_org(conn, "default")
            assert await principal_store.revoke_key(conn, org_id, keyed.key_id)
        await asyncio.wait_for(watching, 5)
    finally:
        event.remove(sa.Engine, "before_cursor_execute", fail)


async def test_closing_lets_a_lookup_whose_callers_left_finish(keyed: Keyed) -> None:
    """A lookup outlives the callers sharing it; closing waits for it, so that storage is
    released with no lookup left opening a connection."""
    caller = asyncio.ensure_future(keyed.authenticate(keyed.secret))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    [lookup] = [
        task
        for task in asyncio.all_tasks()
        if task.get_coro().__qualname__ == "Authenticator._lookup"  # type: ignore[union-attr]
    ]
    assert not lookup.done()
    await keyed.authenticate.close()
    assert lookup.done()
    principal = lookup.result()
    assert principal is not None
    assert principal.name == "bot"

"""Which writes share a group-commit transaction: concurrent ones do, a lone writer is not held
back, and under concurrency the commit lingers so that later writes can join."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import sqlalchemy as sa

from reckon_server.storage.database import Database
from reckon_server.storage.group_commit import GroupCommitter


class Together:
    """Answers each item with every item of its transaction."""

    def apply(self, conn: sa.Connection, items: Sequence[str]) -> list[tuple[str, ...]]:
        conn.exec_driver_sql("SELECT 1")
        return [tuple(items)] * len(items)


async def test_a_lone_writer_does_not_wait_for_company(database: Database) -> None:
    committer = GroupCommitter(database, linger_seconds=60)
    op = Together()
    try:
        assert await asyncio.wait_for(committer.submit(op, "a"), 10) == ("a",)
        both = await asyncio.gather(committer.submit(op, "b"), committer.submit(op, "c"))
        assert both == [("b", "c"), ("b", "c")]
    finally:
        await committer.close()


async def test_under_concurrency_later_writes_join_the_next_transaction(
    database: Database,
) -> None:
    committer = GroupCommitter(database, linger_seconds=0.5)
    op = Together()
    try:
        await asyncio.gather(committer.submit(op, "a"), committer.submit(op, "b"))
        first = asyncio.ensure_future(committer.submit(op, "c"))
        await asyncio.sleep(0.05)
        second = await committer.submit(op, "d")
        assert await first == second == ("c", "d")
        assert committer.batches == 2
    finally:
        await committer.close()

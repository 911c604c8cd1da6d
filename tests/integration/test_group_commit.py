"""Which writes share a group-commit transaction: concurrent ones do, a lone writer is not held
back, and under concurrency the commit lingers so that later writes can join. On SQLite a
transaction of heavy items is sent while the previous one commits, and they still apply in
order."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from reckon_server.errors import Reason, ReckonError
from reckon_server.storage.database import Database
from reckon_server.storage.group_commit import (
    MAX_WEIGHT_POSTGRES,
    MAX_WEIGHT_SQLITE,
    GroupCommitter,
)


class Together:
    """Answers each item with every item of its transaction."""

    pipelined = False

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


async def test_a_transaction_takes_items_until_their_weight_reaches_the_cap(
    database: Database,
) -> None:
    committer = GroupCommitter(database, max_weight=10, linger_seconds=0)
    op = Together()
    try:
        weighed = await asyncio.gather(
            *(
                committer.submit(op, item, weight=weight)
                for item, weight in zip("abcde", (1, 6, 6, 1, 1), strict=True)
            )
        )
        assert weighed == [("a", "b", "c")] * 3 + [("d", "e")] * 2
    finally:
        await committer.close()


class FailsOn:
    """Raises, as a fault would, in any transaction that holds `poison`; answers each other
    item with the number of items its transaction held."""

    pipelined = False

    def __init__(self, poison: str) -> None:
        self.poison = poison

    def apply(self, conn: sa.Connection, items: Sequence[str]) -> list[tuple[str, int]]:
        conn.exec_driver_sql("SELECT 1")
        if self.poison in items:
            raise ArithmeticError(f"cannot take {self.poison}")
        return [(item, len(items)) for item in items]


async def test_an_item_its_transaction_cannot_take_fails_alone(database: Database) -> None:
    committer = GroupCommitter(database, linger_seconds=0.5)
    op = FailsOn("poison")
    try:
        results = await asyncio.gather(
            *(committer.submit(op, item) for item in ("a", "poison", "b")),
            return_exceptions=True,
        )
        # The three shared a transaction, which failed; then each was applied alone.
        assert results[0] == ("a", 1)
        assert results[2] == ("b", 1)
        assert isinstance(results[1], ReckonError)
        assert results[1].reason == Reason.INTERNAL
        assert set(results[1].metadata) == {"incident_id"}
        assert committer.batches == 2
        assert await committer.submit(op, "c") == ("c", 1)
    finally:
        await committer.close()


class Append:
    """Adds each item to `notes`; answers each with the notes its transaction saw."""

    def __init__(self, *, pipelined: bool) -> None:
        self.pipelined = pipelined

    def apply(self, conn: sa.Connection, items: Sequence[str]) -> list[tuple[str, ...]]:
        seen = []
        for item in items:
            conn.exec_driver_sql("INSERT INTO notes VALUES (?)", (item,))
            seen.append(tuple(v for (v,) in conn.exec_driver_sql("SELECT value FROM notes")))
        return seen


@pytest.mark.parametrize("pipelined", [True, False], ids=["heavy", "light"])
async def test_sqlite_sends_a_heavy_batch_while_one_commits_and_applies_them_in_order(
    tmp_path: Path, pipelined: bool
) -> None:
    path = tmp_path / "pipelined.db"
    with sqlite3.connect(path) as db:
        # As after the server's start: a rollback-journal file would need an exclusive lock,
        # which the blocker below denies, for the writer process to switch it to WAL.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE notes (value TEXT)")
    database = Database(f"sqlite+aiosqlite:///{path}")
    committer = GroupCommitter(database, linger_seconds=0)
    op = Append(pipelined=pipelined)

    async def sent(count: int) -> None:
        while database._batches_in_flight < count:  # noqa: ASYNC110 - polls the database
            await asyncio.sleep(0.01)

    try:
        # A failure ends the calls still waiting here, not in whichever test runs next.
        async with asyncio.TaskGroup() as calls:
            with sqlite3.connect(path, isolation_level=None) as blocker:
                blocker.execute("BEGIN IMMEDIATE")  # the writer process waits for this lock
                first = calls.create_task(committer.submit(op, "a"))
                await asyncio.wait_for(sent(1), 30)
                second = calls.create_task(committer.submit(op, "b"))
                if pipelined:
                    await asyncio.wait_for(sent(2), 10)

                async def write_directly() -> None:
                    async with database.write() as conn:
                        await conn.exec_driver_sql("INSERT INTO notes VALUES ('c')")

                # The server's own connection waits until the batches already sent are done.
                direct = calls.create_task(write_directly())
                await asyncio.sleep(0.2)
                # A light batch waits for the one in flight instead.
                assert database._batches_in_flight == (2 if pipelined else 1)
                assert [first.done(), second.done(), direct.done()] == [False, False, False]
                blocker.execute("ROLLBACK")
            # The direct write holds its turn from before the first batch ended: a light
            # batch, not sent by then, comes after it.
            order = "abc" if pipelined else "acb"
            assert await first == ("a",)
            assert await second == tuple(order[: order.index("b") + 1])
            await direct
    finally:
        await committer.close()
        await database.dispose()
    with sqlite3.connect(path) as db:
        assert [v for (v,) in db.execute("SELECT value FROM notes ORDER BY rowid")] == list(order)


async def test_a_backlog_commits_in_transactions_of_the_backends_size(
    database: Database,
) -> None:
    """SQLite's writer gains from every larger transaction, PostgreSQL from none past a few
    thousand rows: 40 items of 500 go in transactions of 17 (8,500) on SQLite, of 5 (2,500)
    on PostgreSQL, each taking items until it reaches the cap."""
    assert (MAX_WEIGHT_SQLITE, MAX_WEIGHT_POSTGRES) == (8192, 2048)
    committer = GroupCommitter(database, linger_seconds=0)
    op = Together()
    try:
        shared = await asyncio.gather(
            *(committer.submit(op, str(n), weight=500) for n in range(40))
        )
        sizes = [17] * 34 + [6] * 6 if database.is_sqlite else [5] * 40
        assert [len(items) for items in shared] == sizes
    finally:
        await committer.close()

"""A raw StreamDelivery connection for protocol tests, and report builders."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any

import sqlalchemy as sa
from grpc import aio
from sqlalchemy.ext.asyncio import create_async_engine

from reckon.v1 import delivery_service_pb2 as pb
from reckon.v1 import types_pb2
from reckon_server.storage.database import Database
from tests.support.api import RunningServer, bearer
from tests.support.governance import Buyer, plan, ts


async def settled_task_count() -> int:
    """How many tasks the event loop holds once what was under way has had time to end."""
    for _ in range(50):
        await asyncio.sleep(0.02)
    return len(asyncio.all_tasks())


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Returns once `condition()` holds; fails the test after `timeout` seconds."""

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 - polls state the server exposes
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def stored_rows(database_url: str, query: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows of `query`, read straight from the database."""
    database = Database(database_url)
    try:
        async with database.read() as conn:
            return [tuple(row) for row in await conn.execute(sa.text(query), params)]
    finally:
        await database.dispose()


@contextlib.asynccontextmanager
async def stream_commits_held(database_url: str) -> AsyncIterator[None]:
    """Delivery batches wait to commit until the block ends (another connection holds the
    lock their transactions need first)."""
    url = sa.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        with contextlib.closing(sqlite3.connect(str(url.database), isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield
            finally:
                db.execute("ROLLBACK")
        return
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("LOCK TABLE delivery_streams IN EXCLUSIVE MODE"))
            yield
    finally:
        await engine.dispose()


async def stored_next_seq(database_url: str, stream_id: str) -> int:
    """The stream's durable cursor."""
    [(next_seq,)] = await stored_rows(
        database_url, "SELECT next_seq FROM delivery_streams WHERE stream_id = :s", s=stream_id
    )
    return int(next_seq)


async def assert_tallies_count_the_trail(database_url: str) -> None:
    """The tallies that audit summaries read hold exactly what the stored checks and outcomes
    add up to."""
    key = "org_id, plan_id, governance_context, purchase_type"
    for table, tallies, tally_key, counts in (
        ("plan_outcomes", "plan_outcome_tallies", key, "outcomes, findings"),
        ("governance_checks", "plan_check_tallies", f"{key}, decision", "checks, findings"),
    ):
        counted = await stored_rows(
            database_url,
            f"SELECT {tally_key}, count(*), sum(findings_count) FROM {table} GROUP BY {tally_key}",
        )
        tallied = await stored_rows(database_url, f"SELECT {tally_key}, {counts} FROM {tallies}")
        assert counted, f"no {table} stored"
        assert sorted(tallied) == sorted(counted), table


class RawStream:
    """One StreamDelivery connection driven message by message."""

    def __init__(self, api: RunningServer, key: str, stream_id: str) -> None:
        self._requests: asyncio.Queue[pb.StreamDeliveryRequest | None] = asyncio.Queue()
        self.call = api.stubs.delivery.StreamDelivery(self._iterate(), metadata=bearer(key))
        self._requests.put_nowait(pb.StreamDeliveryRequest(open=pb.StreamOpen(stream_id=stream_id)))
        # However the call ends, its request generator ends too, rather than being collected
        # while it waits (which asyncio reports as a failed `aclose()`).
        self.call.add_done_callback(lambda _: self.close())

    async def _iterate(self) -> AsyncIterator[pb.StreamDeliveryRequest]:
        while (message := await self._requests.get()) is not None:
            yield message

    async def opened(self) -> pb.StreamOpened:
        response = await asyncio.wait_for(self.call.read(), 10)
        return response.opened

    def send(self, seq: int, reports: list[pb.PlanDelivery]) -> None:
        self._requests.put_nowait(
            pb.StreamDeliveryRequest(batch=pb.DeliveryBatch(seq=seq, reports=reports))
        )

    async def ack(self) -> pb.BatchAck:
        response = await asyncio.wait_for(self.call.read(), 10)
        assert response is not aio.EOF, "stream ended"
        return response.ack

    def close(self) -> None:
        self._requests.put_nowait(None)


def report(
    plan_id: str,
    media_buy_id: str,
    day: int,
    spend_micros: int,
    impressions: int = 10_000,
    **extra: Any,
) -> pb.PlanDelivery:
    """Delivery of one day of March 2026 (day 15 is the flight's first)."""
    return pb.PlanDelivery(
        plan_id=plan_id,
        delivery=types_pb2.DeliveryReport(
            media_buy_id=media_buy_id,
            reporting_period=types_pb2.ReportingPeriod(
                start=ts(f"2026-03-{day:02d}T00:00:00Z"), end=ts(f"2026-03-{day + 1:02d}T00:00:00Z")
            ),
            spend_micros=spend_micros,
            impressions=impressions,
            **extra,
        ),
    )


async def committed_plan(
    api: RunningServer, name: str, plan_id: str, media_buys: dict[str, int]
) -> Buyer:
    """An agent with a plan whose media buys are committed (amounts in currency units)."""
    buyer = Buyer(api, await api.register(name))
    await buyer.sync(plan(plan_id, 10_000_000))
    for media_buy_id, amount in media_buys.items():
        await buyer.commit(plan_id, amount, media_buy_id)
    return buyer

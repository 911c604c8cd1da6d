"""Which failures DeliveryStreamer rides out and which it raises: a failure the server
classifies as terminal, a batch the server refuses, and a fault that only the transport saw,
which is retried a bounded number of times. Also: reconnects leave nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio

from reckon.v1 import delivery_service_pb2 as pb
from reckon.v1 import delivery_service_pb2_grpc as pb_grpc
from reckon_client import DeliveryStreamer, Reckon
from reckon_client.errors import ReckonError
from reckon_server.storage.database import Database
from tests.support.api import RunningServer
from tests.support.delivery import (
    RawStream,
    committed_plan,
    report,
    settled_task_count,
    stored_next_seq,
    stream_commits_held,
)
from tests.support.governance import M

PLAN = "streamed"
REFUSED_SPEND = 17 * M


async def _storage_refuses_periods_of(database_url: str, spend_micros: int) -> None:
    """A trigger that fails every transaction writing a period of `spend_micros`: a fault of
    storage's own, met again each time the batch is tried."""
    database = Database(database_url)
    try:
        async with database.write() as conn:
            if database.is_sqlite:
                await conn.exec_driver_sql(
                    "CREATE TRIGGER refuse BEFORE INSERT ON delivery_periods"
                    f" WHEN NEW.spend_micros = {spend_micros}"
                    " BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            else:
                await conn.exec_driver_sql(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                    f" IF NEW.spend_micros = {spend_micros} THEN RAISE EXCEPTION 'refused';"
                    " END IF; RETURN NEW; END $$"
                )
                await conn.exec_driver_sql(
                    "CREATE TRIGGER refuse BEFORE INSERT ON delivery_periods"
                    " FOR EACH ROW EXECUTE FUNCTION refuse()"
                )
    finally:
        await database.dispose()


async def test_a_batch_storage_always_refuses_ends_the_streamer_with_internal(
    api: RunningServer,
) -> None:
    """Retried, it would hold the producer forever: the batch fails INTERNAL, a terminal
    failure, and the streamer fails with its incident id instead of reconnecting."""
    buyer = await committed_plan(api, "refused", PLAN, {"mb_1": 150_000})
    await _storage_refuses_periods_of(api.database_url, REFUSED_SPEND)
    acked: list[int] = []
    async with Reckon(api.target, buyer.key) as reckon:
        streamer = DeliveryStreamer(
            reckon.delivery,
            "refused-1",
            batch_size=2,
            on_ack=lambda ack: acked.append(ack.seq),
        )
        await streamer.start()
        for day, spend in [(15, M), (16, 2 * M), (17, REFUSED_SPEND), (18, M)]:
            await streamer.add(report(PLAN, "mb_1", day, spend))
        with pytest.raises(ReckonError) as refused:
            await asyncio.wait_for(streamer.flush(), 30)
        await streamer.close()
    assert (refused.value.code, refused.value.reason_name) == (grpc.StatusCode.INTERNAL, "INTERNAL")
    assert refused.value.metadata["recovery"] == "terminal"
    assert refused.value.metadata["incident_id"]
    assert (streamer.reconnects, acked) == (0, [1])
    assert await stored_next_seq(api.database_url, "refused-1") == 2
    with pytest.raises(aio.AioRpcError) as unary:
        await buyer.deliver(
            PLAN, "mb_1", "2026-03-17T00:00:00Z", "2026-03-18T00:00:00Z", REFUSED_SPEND
        )
    assert unary.value.code() == grpc.StatusCode.INTERNAL
    assert (await buyer.state(PLAN)).spend_micros == 3 * M


async def test_a_batch_larger_than_the_server_takes_fails_the_streamer(
    api: RunningServer,
) -> None:
    buyer = await committed_plan(api, "oversized", PLAN, {"mb_1": 150_000})
    async with Reckon(api.target, buyer.key) as reckon:
        streamer = DeliveryStreamer(reckon.delivery, "oversized-1", batch_size=1001)
        await streamer.start()
        for minute in range(1001):
            await streamer.add(report(PLAN, "mb_1", 15, minute))
        with pytest.raises(ReckonError) as refused:
            await asyncio.wait_for(streamer.flush(), 30)
        await streamer.close()
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.violations == [("batch.reports", "must hold 1..1000 reports")]
    assert streamer.reconnects == 0
    assert await stored_next_seq(api.database_url, "oversized-1") == 1


class AlwaysFaulty(pb_grpc.DeliveryServiceServicer):
    """Ends every stream INTERNAL with no ErrorInfo, as a transport failure arrives."""

    def __init__(self) -> None:
        self.streams = 0

    async def StreamDelivery(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[pb.StreamDeliveryRequest],
        context: aio.ServicerContext,
    ) -> None:
        self.streams += 1
        await context.abort(grpc.StatusCode.INTERNAL, "lost in transit")


async def test_a_fault_only_the_transport_saw_is_retried_max_faults_times() -> None:
    faulty = AlwaysFaulty()
    server = aio.server()
    pb_grpc.add_DeliveryServiceServicer_to_server(faulty, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            streamer = DeliveryStreamer(
                pb_grpc.DeliveryServiceStub(channel),
                "faulty-1",
                backoff=(0.01, 0.02),
                max_faults=2,
            )
            with pytest.raises(aio.AioRpcError) as lost:
                await asyncio.wait_for(streamer.start(), 30)
            await streamer.close()
    finally:
        await server.stop(None)
    assert (lost.value.code(), lost.value.details()) == (
        grpc.StatusCode.INTERNAL,
        "lost in transit",
    )
    assert (faulty.streams, streamer.reconnects) == (3, 2)


async def test_reconnects_leave_no_task_behind(database_url: str) -> None:
    """Through the client's interceptors, as producers use it: a connection the server ended
    (here, idle) is over on both sides once the streamer has reconnected, and a closed
    streamer's last connection too, so a long-lived producer does not accumulate them."""
    api = await RunningServer.start(database_url, stream_idle_seconds=0.1)
    try:
        buyer = await committed_plan(api, "idler", PLAN, {"mb_1": 150_000})
        async with Reckon(api.target, buyer.key) as reckon:

            async def stream_idly(run: int) -> int:
                streamer = DeliveryStreamer(
                    reckon.delivery, f"idler-{run}", batch_size=2, backoff=(0.01, 0.02)
                )
                await streamer.start()
                for day in (15, 16, 17):
                    await streamer.add(report(PLAN, "mb_1", day, M))
                await streamer.flush()
                await asyncio.sleep(0.5)
                await streamer.close()
                return streamer.reconnects

            await stream_idly(0)  # starts what the server keeps for every stream
            before = await settled_task_count()
            reconnects = [await stream_idly(run) for run in range(1, 4)]
            assert await settled_task_count() <= before
        assert min(reconnects) >= 2
    finally:
        await api.close()


async def test_a_server_with_no_room_for_another_stream_is_waited_out(database_url: str) -> None:
    api = await RunningServer.start(database_url, stream_max_open=1)
    try:
        buyer = await committed_plan(api, "patient", PLAN, {"mb_1": 150_000})
        holder = RawStream(api, buyer.key, "holder")
        await holder.opened()
        async with Reckon(api.target, buyer.key) as reckon:
            streamer = DeliveryStreamer(
                reckon.delivery, "patient-1", batch_size=2, backoff=(0.05, 0.1)
            )
            starting = asyncio.ensure_future(streamer.start())
            await asyncio.sleep(1.5)
            holder.close()
            await starting
            # Refused OVERLOADED with a RetryInfo of 1 s, it waited that long between tries,
            # not its own backoff of under 0.1 s.
            assert 1 <= streamer.reconnects <= 2
            for day in (15, 16, 17):
                await streamer.add(report(PLAN, "mb_1", day, M))
            await streamer.flush()
            await streamer.close()
        assert await stored_next_seq(api.database_url, "patient-1") == 3
        assert (await buyer.state(PLAN)).spend_micros == 3 * M
    finally:
        await api.close()


async def test_the_streamer_keeps_the_window_the_server_offers(database_url: str) -> None:
    """As many batches un-acknowledged as the server reads ahead by default, fewer when asked,
    never more: while commits are held, the batch past the server's window waits."""
    api = await RunningServer.start(database_url, stream_window=3)
    try:
        buyer = await committed_plan(api, "windowed", PLAN, {"mb_1": 150_000})
        async with Reckon(api.target, buyer.key) as reckon:
            with pytest.raises(ValueError, match="window"):
                DeliveryStreamer(reckon.delivery, "windowed", window=0)
            for asked, kept in [(None, 3), (2, 2), (50, 3)]:
                streamer = DeliveryStreamer(reckon.delivery, f"windowed-{asked}", window=asked)
                await streamer.start()
                assert streamer.window == kept
                await streamer.close()
            streamer = DeliveryStreamer(reckon.delivery, "held", batch_size=1, window=50)
            await streamer.start()
            async with stream_commits_held(api.database_url):
                for day in (15, 16, 17):
                    await streamer.add(report(PLAN, "mb_1", day, M))
                past_the_window = asyncio.ensure_future(streamer.add(report(PLAN, "mb_1", 18, M)))
                await asyncio.sleep(0.5)
                assert not past_the_window.done()
            await asyncio.wait_for(past_the_window, 30)
            await streamer.flush()
            await streamer.close()
        assert await stored_next_seq(api.database_url, "held") == 5
        assert (await buyer.state(PLAN)).spend_micros == 4 * M
    finally:
        await api.close()

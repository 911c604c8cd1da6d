"""WatchPlan: a snapshot, then the plan's events as they happen — on one server, and across
two replicas on PostgreSQL (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from grpc import aio

from reckon.v1 import admin_service_pb2, types_pb2
from reckon.v1 import delivery_service_pb2 as pb
from reckon_server.clock import utcnow
from reckon_server.transport.servicers import delivery as delivery_servicer
from tests.support.api import RunningServer, assert_caller_stalled, bearer, decode
from tests.support.delivery import RawStream, committed_plan, report
from tests.support.governance import M, seed_payload
from tests.support.postgres import PostgresServer

PLAN = "watched"


async def next_event(watch: aio.UnaryStreamCall, kind: int) -> pb.PlanEvent:  # type: ignore[type-arg]
    """The next event of this kind, skipping heartbeats and other events."""
    while True:
        response = await asyncio.wait_for(watch.read(), 10)
        assert response is not aio.EOF
        if response.event.type == kind:
            return response.event


async def watch_from_snapshot(
    api: RunningServer, key: str
) -> tuple[aio.UnaryStreamCall, pb.WatchPlanResponse]:  # type: ignore[type-arg]
    """A WatchPlan call on PLAN and its first message, which must be the snapshot."""
    watch = api.stubs.delivery.WatchPlan(pb.WatchPlanRequest(plan_id=PLAN), metadata=bearer(key))
    first = await watch.read()
    assert first.event.type == pb.PLAN_EVENT_TYPE_SNAPSHOT
    return watch, first


async def test_snapshot_then_checks_commitments_status_and_delivery(database_url: str) -> None:
    api = await RunningServer.start(database_url, watch_heartbeat_seconds=0.2)
    try:
        buyer = await committed_plan(api, "watcher", PLAN, {"mb_1": 150_000})
        watch, first = await watch_from_snapshot(api, buyer.key)
        assert first.event.state.committed_micros == 150_000 * M
        assert first.heartbeat_interval.nanos == 200_000_000

        check = await buyer.check(PLAN, seed_payload(1_000))
        event = await next_event(watch, pb.PLAN_EVENT_TYPE_CHECK)
        assert event.check_id == check.check_id
        assert event.state.reserved_micros == 1_000 * M

        await api.stubs.admin.SetPlanStatus(
            admin_service_pb2.SetPlanStatusRequest(
                plan_id=PLAN, status=types_pb2.PLAN_STATUS_SUSPENDED
            ),
            metadata=bearer(api.admin_key),
        )
        changed = await next_event(watch, pb.PLAN_EVENT_TYPE_STATUS_CHANGED)
        assert changed.state.status == types_pb2.PLAN_STATUS_SUSPENDED

        # Heartbeats keep a quiet watch visibly alive.
        quiet = await asyncio.wait_for(watch.read(), 5)
        assert not quiet.HasField("event")
        watch.cancel()
    finally:
        await api.close()


async def stream_batches(api: RunningServer, key: str, stream_id: str, media_buy: str) -> list[str]:
    """40 batches of 50 reports on one media buy of PLAN, sent without waiting for acks; the
    outcome ids of the reports, in the order they were sent."""
    stream = RawStream(api, key, stream_id)
    await stream.opened()
    for seq in range(1, 41):
        stream.send(seq, [report(PLAN, media_buy, 15 + seq % 10, seq * M) for _ in range(50)])
    outcome_ids = []
    for _ in range(40):
        outcome_ids += [r.accepted.outcome_id for r in (await stream.ack()).results]
    stream.close()
    return outcome_ids


async def assert_two_producers_reach_a_watcher(
    watched: RunningServer, producing: tuple[RunningServer, RunningServer], name: str
) -> None:
    """Two producers, on `producing`, stream to one plan at once past a watcher on `watched`:
    within 10 s (long before the next heartbeat would wake it) the watcher gets a delivery
    event for every report, each producer's in the order it sent them."""
    buyer = await committed_plan(watched, name, PLAN, {"mb_1": 150_000, "mb_2": 150_000})
    watch, _ = await watch_from_snapshot(watched, buyer.key)
    producers = await asyncio.gather(
        stream_batches(producing[0], buyer.key, f"{name}-1", "mb_1"),
        stream_batches(producing[1], buyer.key, f"{name}-2", "mb_2"),
    )
    expected = {outcome_id for sent in producers for outcome_id in sent}
    seen: list[str] = []

    async def read() -> None:
        while len(seen) < len(expected):
            response = await watch.read()
            assert response is not aio.EOF
            if response.event.type == pb.PLAN_EVENT_TYPE_DELIVERY:
                seen.append(response.event.outcome_id)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), 10)
    watch.cancel()
    assert set(seen) == expected, f"{len(expected - set(seen))} of {len(expected)} not seen"
    for sent in producers:
        assert [outcome_id for outcome_id in seen if outcome_id in set(sent)] == sent


async def test_every_report_of_a_burst_reaches_the_watcher_at_once(database_url: str) -> None:
    """Changes published while the watcher is busy sending the previous ones wake it again:
    the last reports of a burst do not wait for the next heartbeat (30 s here). Events come in
    the order the reports were sent, also within a batch and a transaction."""
    api = await RunningServer.start(database_url, watch_heartbeat_seconds=30)
    try:
        await assert_two_producers_reach_a_watcher(api, (api, api), "burst")
    finally:
        await api.close()


async def test_a_watcher_on_a_clock_running_ahead_still_sees_every_entry(
    api: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher's server reads a clock ten minutes ahead of the one that times the trail
    (as a replica on another machine may): the watcher follows the trail, not its clock."""
    buyer = await committed_plan(api, "skewed", PLAN, {"mb_1": 150_000})
    monkeypatch.setattr(delivery_servicer, "utcnow", lambda: utcnow() + timedelta(minutes=10))
    watch, _ = await watch_from_snapshot(api, buyer.key)
    delivered = await buyer.deliver(
        PLAN, "mb_1", "2026-03-15T00:00:00Z", "2026-03-16T00:00:00Z", 1_000 * M
    )
    event = await next_event(watch, pb.PLAN_EVENT_TYPE_DELIVERY)
    assert event.outcome_id == delivered.outcome_id
    watch.cancel()


async def test_shutdown_ends_watchers_with_a_retryable_status(database_url: str) -> None:
    """A server shutting down ends its watchers at once, DRAINING with RetryInfo, so that
    they reopen on another replica rather than wait out the grace period and be cut off."""
    api = await RunningServer.start(database_url, watch_heartbeat_seconds=30)
    try:
        buyer = await committed_plan(api, "drained", PLAN, {"mb_1": 150_000})
        watch, _ = await watch_from_snapshot(api, buyer.key)
        stopping = asyncio.create_task(api.server.stop(30))
        with pytest.raises(aio.AioRpcError) as raised:
            await asyncio.wait_for(watch.read(), 10)
        await asyncio.wait_for(stopping, 10)
    finally:
        await api.close()
    error = decode(raised.value)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "DRAINING")
    assert "google.rpc.RetryInfo" in error.details


async def test_watching_needs_the_plan(api: RunningServer) -> None:
    await committed_plan(api, "owner", PLAN, {})
    stranger = await api.register("stranger")
    watch = api.stubs.delivery.WatchPlan(
        pb.WatchPlanRequest(plan_id=PLAN), metadata=bearer(stranger)
    )
    with pytest.raises(aio.AioRpcError) as raised:
        await watch.read()
    assert decode(raised.value).reason == "PLAN_NOT_FOUND"


async def test_watchers_past_the_servers_limit_are_refused_overloaded(database_url: str) -> None:
    api = await RunningServer.start(database_url, watch_max_open=2)
    try:
        buyer = await committed_plan(api, "crowded", PLAN, {"mb_1": 150_000})
        first, _ = await watch_from_snapshot(api, buyer.key)
        # A watcher refused for another reason leaves no count behind.
        with pytest.raises(aio.AioRpcError) as raised:
            await watch_from_snapshot(api, await api.register("stranger"))
        assert decode(raised.value).reason == "PLAN_NOT_FOUND"
        second, _ = await watch_from_snapshot(api, buyer.key)
        with pytest.raises(aio.AioRpcError) as raised:
            await watch_from_snapshot(api, buyer.key)
        error = decode(raised.value)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "OVERLOADED")
        assert "google.rpc.RetryInfo" in error.details
        first.cancel()
        refusals = []
        for _ in range(100):  # the server sees the cancel a moment after the client
            try:
                reopened, _ = await watch_from_snapshot(api, buyer.key)
                break
            except aio.AioRpcError as err:
                refusals.append(decode(err).reason)
                await asyncio.sleep(0.05)
        else:
            pytest.fail(f"no watcher could reopen: {refusals[-1]}")
        assert set(refusals) <= {"OVERLOADED"}
        reopened.cancel()
        second.cancel()
    finally:
        await api.close()


async def test_a_watcher_that_falls_behind_is_dropped_and_can_reopen(database_url: str) -> None:
    api = await RunningServer.start(database_url, watch_heartbeat_seconds=30, watch_backlog=5)
    try:
        buyer = await committed_plan(api, "laggard", PLAN, {"mb_1": 150_000})
        watch, _ = await watch_from_snapshot(api, buyer.key)
        # One batch is one transaction: the watcher wakes to eight new events at once, more
        # than its backlog of five, however quickly it reads.
        stream = RawStream(api, buyer.key, "laggard")
        await stream.opened()
        stream.send(1, [report(PLAN, "mb_1", day, 1_000 * M) for day in range(15, 23)])
        assert len((await stream.ack()).results) == 8
        with pytest.raises(aio.AioRpcError) as raised:
            await next_event(watch, pb.PLAN_EVENT_TYPE_DELIVERY)
        error = decode(raised.value)
        assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCH_LAGGING")
        assert error.metadata["plan_id"] == PLAN
        assert "google.rpc.RetryInfo" in error.details

        reopened, snapshot = await watch_from_snapshot(api, buyer.key)
        assert snapshot.event.state.spend_micros == 8 * 1_000 * M
        # A lag within the backlog is simply caught up.
        stream.send(2, [report(PLAN, "mb_1", day, 2_000 * M) for day in range(15, 18)])
        await stream.ack()
        for _ in range(3):
            assert (await next_event(reopened, pb.PLAN_EVENT_TYPE_DELIVERY)).outcome_id
        stream.close()
        reopened.cancel()
    finally:
        await api.close()


async def test_a_watcher_that_stops_reading_is_ended_and_frees_its_place(
    database_url: str,
) -> None:
    """However large its backlog may grow, a watcher that takes no event for the send timeout
    is ended CALLER_STALLED rather than holding its place among the server's watchers."""
    api = await RunningServer.start(
        database_url,
        watch_heartbeat_seconds=30,
        watch_backlog=1_000_000,
        watch_max_open=1,
        send_timeout_seconds=1,
    )
    try:
        buyer = await committed_plan(api, "stalled", PLAN, {"mb_1": 150_000})
        stalled, _ = await watch_from_snapshot(api, buyer.key)
        stream = RawStream(api, buyer.key, "stalled")
        await stream.opened()

        async def reopen() -> aio.UnaryStreamCall:  # type: ignore[type-arg]
            seq = 0
            while True:
                # More events than transport buffers hold for a watcher that does not read.
                seq += 1
                stream.send(seq, [report(PLAN, "mb_1", 15, seq * M) for _ in range(1000)])
                assert (await stream.ack()).disposition == pb.BATCH_DISPOSITION_COMMITTED
                try:
                    return (await watch_from_snapshot(api, buyer.key))[0]
                except aio.AioRpcError as refused:
                    # Refused OVERLOADED only while the stalled watcher holds the place.
                    if refused.code() != grpc.StatusCode.UNAVAILABLE:
                        raise

        reopened = await asyncio.wait_for(reopen(), 60)
        reopened.cancel()
        stream.close()
        received: list[pb.PlanEvent] = []

        async def read_events() -> None:
            while True:
                received.append(await next_event(stalled, pb.PLAN_EVENT_TYPE_DELIVERY))

        with pytest.raises(aio.AioRpcError) as raised:
            await read_events()
        assert_caller_stalled(raised.value, "/reckon.v1.DeliveryService/WatchPlan")
        assert len(received) > 1000
    finally:
        await api.close()


@pytest.fixture
async def replicas(postgres: PostgresServer) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    url = await postgres.create_database()
    first = await RunningServer.start(url, watch_heartbeat_seconds=30)
    second = await RunningServer.start(url, watch_heartbeat_seconds=30, admin_key=first.admin_key)
    yield first, second
    await asyncio.gather(first.close(), second.close())


async def test_a_streamed_pacing_finding_reaches_a_watcher_on_another_replica(
    replicas: tuple[RunningServer, RunningServer],
) -> None:
    watched, streamed = replicas
    buyer = await committed_plan(streamed, "cross", PLAN, {"mb_1": 150_000})
    watch, _ = await watch_from_snapshot(watched, buyer.key)
    stream = RawStream(streamed, buyer.key, "cross-replica")
    await stream.opened()
    # 18,750 in the first week of a 150,000, 13-week flight: the seed's pacing anomaly.
    stream.send(
        1, [pb.PlanDelivery(plan_id=PLAN, delivery=report(PLAN, "mb_1", 15, 18_750 * M).delivery)]
    )
    stream.send(2, [report(PLAN, "mb_1", 15, 18_750 * M)])
    ack = await stream.ack()
    assert ack.results[0].accepted.status == types_pb2.PLAN_OUTCOME_STATUS_FINDINGS
    # The heartbeat is 30 s: only the cross-replica notification can deliver this in time.
    event = await next_event(watch, pb.PLAN_EVENT_TYPE_DELIVERY)
    assert event.outcome_id == ack.results[0].accepted.outcome_id
    [finding] = event.findings
    assert finding.category_id == "budget_authority"
    assert finding.explanation.startswith("Spend is pacing")
    stream.close()
    watch.cancel()


async def test_reports_streamed_to_two_replicas_all_reach_a_watcher(
    replicas: tuple[RunningServer, RunningServer],
) -> None:
    """Two producers on two replicas write the same plan's trail at once: each entry becomes
    visible to the watcher after those it has already seen, none behind them."""
    await assert_two_producers_reach_a_watcher(replicas[0], replicas, "two")

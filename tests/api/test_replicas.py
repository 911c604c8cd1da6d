"""Several server replicas on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc import aio

from reckon.v1 import admin_service_pb2, audit_service_pb2, delivery_service_pb2
from tests.support.api import RunningServer, assert_ended_by_revocation, bearer, decode
from tests.support.delivery import RawStream, committed_plan, report, stored_rows
from tests.support.governance import M
from tests.support.postgres import PostgresServer


@pytest.fixture
async def replicas(postgres: PostgresServer) -> list[RunningServer]:
    url = await postgres.create_database()
    first = await RunningServer.start(url, auth_cache_seconds=60)
    second = await RunningServer.start(url, auth_cache_seconds=60, admin_key=first.admin_key)
    yield [first, second]  # type: ignore[misc]
    await asyncio.gather(first.close(), second.close())


async def test_revoking_on_one_replica_takes_effect_on_the_other_and_ends_its_streams(
    replicas: list[RunningServer],
) -> None:
    a, b = replicas
    registered = await a.stubs.admin.RegisterAgent(
        admin_service_pb2.RegisterAgentRequest(name="roaming"), metadata=bearer(a.admin_key)
    )
    execute = audit_service_pb2.ExecuteRequest(action_type="tool.read")
    await b.stubs.audit.Execute(execute, metadata=bearer(registered.api_key))  # now cached on b
    stream = RawStream(b, registered.api_key, "roaming")
    await stream.opened()

    await a.stubs.admin.RevokeKey(
        admin_service_pb2.RevokeKeyRequest(key_id=registered.key_id), metadata=bearer(a.admin_key)
    )
    revoked_at = time.monotonic()
    refusal: aio.AioRpcError | None = None
    # The cache would hold the key for 60 s; the notification must beat that by far.
    while refusal is None and time.monotonic() - revoked_at < 1.0:
        try:
            await b.stubs.audit.Execute(execute, metadata=bearer(registered.api_key))
            await asyncio.sleep(0.02)
        except aio.AioRpcError as err:
            refusal = err
    assert refusal is not None, "revocation did not reach the other replica"
    assert decode(refusal).reason == "UNAUTHENTICATED"
    await assert_ended_by_revocation(
        stream.call.read(), "/reckon.v1.DeliveryService/StreamDelivery"
    )


async def after_one_batch(api: RunningServer, key: str, plan_id: str) -> RawStream:
    """A connection of the stream named after the plan that has committed its first batch."""
    stream = RawStream(api, key, plan_id)
    await stream.opened()
    stream.send(1, [report(plan_id, "mb_1", 15, M)])
    assert (await stream.ack()).disposition == delivery_service_pb2.BATCH_DISPOSITION_COMMITTED
    return stream


async def assert_fenced(stream: RawStream) -> None:
    with pytest.raises(aio.AioRpcError) as fenced:
        await stream.ack()
    assert decode(fenced.value).reason == "STREAM_FENCED"


async def test_a_stream_taken_over_on_another_replica_is_fenced_at_once(
    replicas: list[RunningServer],
) -> None:
    a, b = replicas
    buyer = await committed_plan(a, "roaming", "roamed", {"mb_1": 150_000})
    old = await after_one_batch(a, buyer.key, "roamed")
    new = RawStream(b, buyer.key, "roamed")
    assert (await new.opened()).next_seq == 2
    # Sending nothing more, the older connection hears of it from the other replica.
    await assert_fenced(old)
    new.send(2, [report("roamed", "mb_1", 16, M)])
    assert (await new.ack()).disposition == delivery_service_pb2.BATCH_DISPOSITION_COMMITTED
    new.close()
    await new.call.code()
    assert (await buyer.state("roamed")).spend_micros == 2 * M


async def test_a_takeover_a_replica_did_not_hear_fences_its_connection_once_it_listens_again(
    replicas: list[RunningServer],
) -> None:
    a, b = replicas
    buyer = await committed_plan(a, "deaf", "unheard", {"mb_1": 150_000})
    old = await after_one_batch(b, buyer.key, "unheard")
    # Every replica's change listener goes, so the takeover's notification reaches none.
    [(ended,)] = await stored_rows(
        a.database_url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN %'",
    )
    assert ended == 2
    new = RawStream(a, buyer.key, "unheard")
    assert (await new.opened()).next_seq == 2
    # Sending nothing more, the older connection learns of it when its replica listens again.
    await assert_fenced(old)
    new.close()
    assert await new.call.code() == grpc.StatusCode.OK

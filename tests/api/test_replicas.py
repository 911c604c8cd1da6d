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


@pytest.mark.parametrize("listeners_lost", [False, True], ids=["heard", "unheard"])
async def test_a_stream_taken_over_on_another_replica_is_fenced_without_sending(
    replicas: list[RunningServer], listeners_lost: bool
) -> None:
    a, b = replicas
    buyer = await committed_plan(a, "roaming", "roamed", {"mb_1": 150_000})
    old = RawStream(a, buyer.key, "roaming")
    await old.opened()
    old.send(1, [report("roamed", "mb_1", 15, M)])
    assert (await old.ack()).disposition == delivery_service_pb2.BATCH_DISPOSITION_COMMITTED
    if listeners_lost:
        # Every replica's change listener goes, so the takeover's notification reaches none:
        # the older connection learns of it when its replica listens again.
        [(ended,)] = await stored_rows(
            a.database_url,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN %'",
        )
        assert ended == 2
    new = RawStream(b, buyer.key, "roaming")
    assert (await new.opened()).next_seq == 2
    # Sending nothing more, the older connection hears of it from the other replica.
    with pytest.raises(aio.AioRpcError) as fenced:
        await old.ack()
    assert decode(fenced.value).reason == "STREAM_FENCED"
    new.send(2, [report("roamed", "mb_1", 16, M)])
    assert (await new.ack()).disposition == delivery_service_pb2.BATCH_DISPOSITION_COMMITTED
    new.close()
    assert await new.call.code() == grpc.StatusCode.OK
    assert (await buyer.state("roamed")).spend_micros == 2 * M

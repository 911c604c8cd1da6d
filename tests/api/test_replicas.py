"""Several server replicas on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import time

import pytest
from grpc import aio

from reckon.v1 import admin_service_pb2, audit_service_pb2
from tests.support.api import RunningServer, bearer, decode
from tests.support.postgres import PostgresServer


@pytest.fixture
async def replicas(postgres: PostgresServer) -> list[RunningServer]:
    url = await postgres.create_database()
    first = await RunningServer.start(url, auth_cache_seconds=60)
    second = await RunningServer.start(url, auth_cache_seconds=60, admin_key=first.admin_key)
    yield [first, second]  # type: ignore[misc]
    await asyncio.gather(first.close(), second.close())


async def test_revoking_on_one_replica_takes_effect_on_the_other(
    replicas: list[RunningServer],
) -> None:
    a, b = replicas
    registered = await a.stubs.admin.RegisterAgent(
        admin_service_pb2.RegisterAgentRequest(name="roaming"), metadata=bearer(a.admin_key)
    )
    execute = audit_service_pb2.ExecuteRequest(action_type="tool.read")
    await b.stubs.audit.Execute(execute, metadata=bearer(registered.api_key))  # now cached on b

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

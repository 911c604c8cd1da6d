"""The server's edge through the real stack: health, reflection, auth, undecodable bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from reckon.v1 import audit_service_pb2, governance_service_pb2
from reckon_server.domain.principals import Role
from reckon_server.storage import principals as principal_store
from reckon_server.storage.database import Database
from tests.support.api import RunningServer, bearer, decode, new_secret
from tests.support.governance import Buyer, plan, struct

REPORT = "/reckon.v1.AuditService/Report"
EXECUTE = audit_service_pb2.ExecuteRequest(action_type="tool.read")
VALID_REPORT = audit_service_pb2.ReportRequest(audit_event_id="x").SerializeToString()


async def test_health_is_serving_for_the_server_and_every_service(api: RunningServer) -> None:
    health = health_pb2_grpc.HealthStub(api.channel)
    for service in (
        "",
        "reckon.v1.AuditService",
        "reckon.v1.AdminService",
        "reckon.v1.GovernanceService",
        "reckon.v1.DeliveryService",
    ):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_lists_all_four_services(api: RunningServer) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(api.channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name async for r in responses for s in r.list_services_response.service}
    assert {
        "reckon.v1.AuditService",
        "reckon.v1.AdminService",
        "reckon.v1.GovernanceService",
        "reckon.v1.DeliveryService",
        "grpc.health.v1.Health",
    } <= names


async def _raw_call(
    api: RunningServer, payload: bytes, metadata: tuple[tuple[str, str], ...] = ()
) -> aio.AioRpcError:
    call = api.channel.unary_unary(REPORT, request_serializer=None, response_deserializer=None)
    with pytest.raises(aio.AioRpcError) as raised:
        await call(payload, metadata=metadata)
    return raised.value


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", ""),),
        (("authorization", "Bearer"),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", f"Bearer {new_secret()}"),),
    ],
    ids=["none", "empty", "no-key", "wrong-scheme", "unknown-key"],
)
async def test_calls_without_a_valid_key_are_unauthenticated(
    api: RunningServer, metadata: tuple[tuple[str, str], ...]
) -> None:
    error = decode(await _raw_call(api, VALID_REPORT, metadata))
    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "UNAUTHENTICATED"
    assert error.metadata["recovery"] == "correctable"


async def test_a_key_revoked_out_of_band_stops_working_within_the_cache_ttl(
    database_url: str,
) -> None:
    running = await RunningServer.start(database_url, auth_cache_seconds=0.3)
    database = Database(database_url)
    try:
        async with database.write() as conn:
            org_id = await principal_store.ensure_org(conn, "default")
            agent = await principal_store.ensure_principal(conn, org_id, "bot", Role.AGENT)
            key = await principal_store.add_key(conn, agent)
        await running.stubs.audit.Execute(EXECUTE, metadata=bearer(key.secret))
        async with database.write() as conn:  # as `reckon keys revoke` does
            assert await principal_store.revoke_key(conn, org_id, key.key_id) is not None
        await asyncio.sleep(0.4)
        error = decode(await _raw_call(running, VALID_REPORT, bearer(key.secret)))
        assert error.code is grpc.StatusCode.UNAUTHENTICATED
    finally:
        await database.dispose()
        await running.close()


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xc3\x28", b"\x12\xff\xff\xff\xff\x0f"],
    ids=["bad-tag", "truncated", "invalid-utf8", "huge-length"],
)
async def test_undecodable_bytes_are_invalid_body(api: RunningServer, payload: bytes) -> None:
    error = decode(await _raw_call(api, payload, bearer(api.admin_key)))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_BODY"


async def test_undecodable_bytes_without_a_key_are_unauthenticated_first(
    api: RunningServer,
) -> None:
    error = decode(await _raw_call(api, b"\xff\xff\xff\xff"))
    assert error.code is grpc.StatusCode.UNAUTHENTICATED


async def test_nul_in_any_string_is_refused_before_anything_is_stored(
    api: RunningServer,
) -> None:
    """PostgreSQL stores no U+0000, in text or JSONB: both databases refuse it up front."""
    buyer = Buyer(api, await api.register("nul"))
    metadata = struct_pb2.Struct()
    metadata.update({"note": "ok", "steps": [{"cmd": "rm\x00"}]})
    calls: list[tuple[Callable[[], Awaitable[object]], str]] = [
        (lambda: buyer.sync(plan("p", objectives="launch\x00")), "plans[0].objectives"),
        (lambda: buyer.sync(plan("p", ext=struct({"k\x00": 1}))), "plans[0].ext.k\\u0000"),
        (
            lambda: buyer.stub.GetPlan(
                governance_service_pb2.GetPlanRequest(plan_id="p\x00"), metadata=bearer(buyer.key)
            ),
            "plan_id",
        ),
        (
            lambda: api.stubs.audit.Execute(
                audit_service_pb2.ExecuteRequest(action_type="tool.read", metadata=metadata),
                metadata=bearer(buyer.key),
            ),
            "metadata.steps[0].cmd",
        ),
    ]
    for call, field in calls:
        with pytest.raises(aio.AioRpcError) as raised:
            await call()
        error = decode(raised.value)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
        assert (field, "must not contain U+0000 (NUL)") in error.violations
    with pytest.raises(aio.AioRpcError) as raised:
        await buyer.state("p")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_oversized_metadata_is_refused_by_transport(api: RunningServer) -> None:
    metadata = (*bearer(api.admin_key), ("x-padding", "a" * 64 * 1024))
    error = await _raw_call(api, VALID_REPORT, metadata)
    assert error.code() in (
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
    )
    # The server is unharmed.
    health = health_pb2_grpc.HealthStub(api.channel)
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == (
        health_pb2.HealthCheckResponse.SERVING
    )


async def test_stop_reports_not_serving_to_watchers_before_closing(database_url: str) -> None:
    running = await RunningServer.start(database_url)
    try:
        health = health_pb2_grpc.HealthStub(running.channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="reckon.v1.AuditService"))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(running.server.stop(2))
        second = await asyncio.wait_for(watch.read(), 5)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping
    finally:
        await running.close()

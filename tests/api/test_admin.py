"""AdminService: agents, keys, roles."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from reckon.v1 import admin_service_pb2 as pb
from reckon.v1 import audit_service_pb2, delivery_service_pb2
from reckon_server.storage import principals as principal_store
from reckon_server.storage.database import Database
from tests.support.api import (
    RunningServer,
    assert_ended_by_revocation,
    bearer,
    decode,
    forged_tokens,
)
from tests.support.delivery import RawStream, committed_plan, report
from tests.support.governance import M

STREAM_DELIVERY = "/reckon.v1.DeliveryService/StreamDelivery"


async def test_registered_agent_key_works_and_revocation_is_immediate(api: RunningServer) -> None:
    registered = await api.stubs.admin.RegisterAgent(
        pb.RegisterAgentRequest(name="ingest-bot"), metadata=bearer(api.admin_key)
    )
    assert registered.api_key.startswith("rk_")
    assert len(registered.api_key) == 46
    assert registered.agent.role == pb.ROLE_AGENT
    assert [k.key_id for k in registered.agent.keys] == [registered.key_id]
    assert registered.agent.keys[0].prefix == registered.api_key[:8]

    execute = audit_service_pb2.ExecuteRequest(action_type="tool.read")
    await api.stubs.audit.Execute(execute, metadata=bearer(registered.api_key))

    # Registering the same name again rotates in a second key; both work.
    rotated = await api.stubs.admin.RegisterAgent(
        pb.RegisterAgentRequest(name="ingest-bot"), metadata=bearer(api.admin_key)
    )
    assert len(rotated.agent.keys) == 2

    revoked = await api.stubs.admin.RevokeKey(
        pb.RevokeKeyRequest(key_id=registered.key_id), metadata=bearer(api.admin_key)
    )
    assert revoked.key.HasField("revoked_at")
    with pytest.raises(aio.AioRpcError) as raised:
        await api.stubs.audit.Execute(execute, metadata=bearer(registered.api_key))
    assert decode(raised.value).reason == "UNAUTHENTICATED"
    await api.stubs.audit.Execute(execute, metadata=bearer(rotated.api_key))

    again = await api.stubs.admin.RevokeKey(
        pb.RevokeKeyRequest(key_id=registered.key_id), metadata=bearer(api.admin_key)
    )
    assert again.key.revoked_at == revoked.key.revoked_at


async def test_revoking_a_key_ends_the_streaming_calls_it_opened_and_only_those(
    database_url: str,
) -> None:
    # The key cache alone would keep the key working for a minute.
    api = await RunningServer.start(database_url, auth_cache_seconds=60)
    try:
        buyer = await committed_plan(api, "rotating", "rotated", {"mb_1": 150_000})
        rotated = await api.stubs.admin.RegisterAgent(
            pb.RegisterAgentRequest(name="rotating"), metadata=bearer(api.admin_key)
        )
        stream = RawStream(api, rotated.api_key, "feed")
        await stream.opened()
        stream.send(1, [report("rotated", "mb_1", 15, M)])
        assert (await stream.ack()).disposition == delivery_service_pb2.BATCH_DISPOSITION_COMMITTED
        watch = api.stubs.delivery.WatchPlan(
            delivery_service_pb2.WatchPlanRequest(plan_id="rotated"),
            metadata=bearer(rotated.api_key),
        )
        assert (await watch.read()).event.type == delivery_service_pb2.PLAN_EVENT_TYPE_SNAPSHOT
        kept = RawStream(api, buyer.key, "kept")
        await kept.opened()

        await api.stubs.admin.RevokeKey(
            pb.RevokeKeyRequest(key_id=rotated.key_id), metadata=bearer(api.admin_key)
        )
        await assert_ended_by_revocation(stream.call.read(), STREAM_DELIVERY)
        await assert_ended_by_revocation(watch.read(), "/reckon.v1.DeliveryService/WatchPlan")

        # The agent's other key goes on, and resumes the ended stream after what it committed.
        kept.send(1, [report("rotated", "mb_1", 16, M)])
        assert (await kept.ack()).disposition == delivery_service_pb2.BATCH_DISPOSITION_COMMITTED
        resumed = RawStream(api, buyer.key, "feed")
        assert (await resumed.opened()).next_seq == 2
        for call in (kept, resumed):
            call.close()
            assert await call.call.code() == grpc.StatusCode.OK
        assert (await buyer.state("rotated")).spend_micros == 2 * M
    finally:
        await api.close()


async def test_a_key_revoked_outside_the_server_ends_its_streaming_calls_within_the_cache_time(
    database_url: str,
) -> None:
    api = await RunningServer.start(database_url, auth_cache_seconds=0.5)
    try:
        registered = await api.stubs.admin.RegisterAgent(
            pb.RegisterAgentRequest(name="revoked-offline"), metadata=bearer(api.admin_key)
        )
        stream = RawStream(api, registered.api_key, "feed")
        await stream.opened()
        # As `reckon keys revoke` does: a write to the database, with no notification.
        database = Database(database_url)
        try:
            async with database.write() as conn:
                org_id = await principal_store.ensure_org(conn, "default")
                assert await principal_store.revoke_key(conn, org_id, registered.key_id)
        finally:
            await database.dispose()
        await assert_ended_by_revocation(stream.call.read(), STREAM_DELIVERY)
    finally:
        await api.close()


async def test_admin_rpcs_need_an_admin_key(api: RunningServer) -> None:
    agent = await api.register("plain-agent")
    calls = [
        api.stubs.admin.RegisterAgent(pb.RegisterAgentRequest(name="x"), metadata=bearer(agent)),
        api.stubs.admin.ListAgents(pb.ListAgentsRequest(), metadata=bearer(agent)),
        api.stubs.admin.RevokeKey(pb.RevokeKeyRequest(key_id="key_1"), metadata=bearer(agent)),
        api.stubs.admin.VerifyAuditChain(pb.VerifyAuditChainRequest(), metadata=bearer(agent)),
    ]
    for call in calls:
        with pytest.raises(aio.AioRpcError) as raised:
            await call
        error = decode(raised.value)
        assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_REQUIRED")


async def test_keys_and_agents_of_other_orgs_are_invisible(api: RunningServer) -> None:
    other_admin = await api.foreign_key("other-org", "root", role=pb.ROLE_ADMIN)  # type: ignore[arg-type]
    mine = await api.stubs.admin.RegisterAgent(
        pb.RegisterAgentRequest(name="mine"), metadata=bearer(api.admin_key)
    )
    with pytest.raises(aio.AioRpcError) as raised:
        await api.stubs.admin.RevokeKey(
            pb.RevokeKeyRequest(key_id=mine.key_id), metadata=bearer(other_admin)
        )
    error = decode(raised.value)
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND")
    listed = await api.stubs.admin.ListAgents(pb.ListAgentsRequest(), metadata=bearer(other_admin))
    assert [a.name for a in listed.agents] == ["root"]


async def test_list_agents_pages_by_name(api: RunningServer) -> None:
    for i in range(7):
        await api.register(f"agent-{i:02d}")
    names, token = [], ""
    while True:
        page = await api.stubs.admin.ListAgents(
            pb.ListAgentsRequest(page_size=3, page_token=token), metadata=bearer(api.admin_key)
        )
        names.extend(a.name for a in page.agents)
        token = page.next_page_token
        if not token:
            break
    assert names == ["admin", *(f"agent-{i:02d}" for i in range(7))]
    issued = (
        await api.stubs.admin.ListAgents(
            pb.ListAgentsRequest(page_size=1), metadata=bearer(api.admin_key)
        )
    ).next_page_token
    for forged in forged_tokens(issued):
        with pytest.raises(aio.AioRpcError) as raised:
            await api.stubs.admin.ListAgents(
                pb.ListAgentsRequest(page_token=forged), metadata=bearer(api.admin_key)
            )
        error = decode(raised.value)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")


@pytest.mark.parametrize("name", ["", "has space", "x" * 129, "émoji🙂", "semi;colon"])
async def test_agent_names_are_validated(api: RunningServer, name: str) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await api.stubs.admin.RegisterAgent(
            pb.RegisterAgentRequest(name=name), metadata=bearer(api.admin_key)
        )
    error = decode(raised.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert error.violations[0][0] == "name"

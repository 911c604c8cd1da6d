"""A running server on port 0 and stubs to call it, for API tests."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from reckon.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    audit_service_pb2_grpc,
    delivery_service_pb2_grpc,
    governance_service_pb2_grpc,
)
from reckon_server.domain.principals import Role
from reckon_server.settings import Settings
from reckon_server.storage import principals as principal_store
from reckon_server.storage.database import Database
from reckon_server.transport.server import ReckonServer, create_server

TEST_POLICY = Path(__file__).with_name("policy.toml")


def new_secret() -> str:
    return "rk_" + secrets.token_urlsafe(32)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def forged_tokens(issued: str) -> list[str]:
    """Page tokens a client could make from an `issued` one: other positions under the same
    filter, a deep nesting, an oversized token. A server must refuse each as INVALID_ARGUMENT."""
    scope = json.loads(base64.urlsafe_b64decode(issued + "=" * (-len(issued) % 4)))["s"]
    positions: list[Any] = [
        -1,
        2**63,
        10**30,
        1.5,
        True,
        None,
        "nul\x00",
        "y" * 300,
        [],
        ["a", 1, "b", 2],
        ["a", 2**62, "b"],
        ["a\x00", 1, "b"],
        {"p": 1},
    ]
    tokens = [
        base64.urlsafe_b64encode(json.dumps({"p": p, "s": scope}).encode()).decode()
        for p in positions
    ]
    return [*tokens, base64.urlsafe_b64encode(b"[" * 1400).decode(), issued + "A" * 2048]


@dataclass
class Stubs:
    audit: audit_service_pb2_grpc.AuditServiceStub
    admin: admin_service_pb2_grpc.AdminServiceStub
    governance: governance_service_pb2_grpc.GovernanceServiceStub
    delivery: delivery_service_pb2_grpc.DeliveryServiceStub

    @classmethod
    def on(cls, channel: aio.Channel) -> Stubs:
        return cls(
            audit_service_pb2_grpc.AuditServiceStub(channel),
            admin_service_pb2_grpc.AdminServiceStub(channel),
            governance_service_pb2_grpc.GovernanceServiceStub(channel),
            delivery_service_pb2_grpc.DeliveryServiceStub(channel),
        )


@dataclass
class RunningServer:
    server: ReckonServer
    port: int
    admin_key: str
    database_url: str
    channel: aio.Channel
    stubs: Stubs

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    async def start(cls, database_url: str, **overrides: object) -> RunningServer:
        admin_key = str(overrides.pop("admin_key", None) or new_secret())
        settings = Settings(
            listen="127.0.0.1:0",
            database_url=database_url,
            admin_key=admin_key,
            grace_seconds=1,
            policy_file=TEST_POLICY,
        ).with_overrides(overrides)
        server, port = await create_server(settings)
        await server.start()
        channel = aio.insecure_channel(f"127.0.0.1:{port}")
        return cls(server, port, admin_key, database_url, channel, Stubs.on(channel))

    async def register(self, name: str) -> str:
        """A new agent key of the default org, through AdminService."""
        response = await self.stubs.admin.RegisterAgent(
            admin_service_pb2.RegisterAgentRequest(name=name), metadata=bearer(self.admin_key)
        )
        return response.api_key

    async def foreign_key(self, org: str, name: str, role: Role = Role.AGENT) -> str:
        """A key of a principal in another org (orgs are created by operators, not RPCs)."""
        database = Database(self.database_url)
        try:
            async with database.write() as conn:
                org_id = await principal_store.ensure_org(conn, org)
                principal = await principal_store.ensure_principal(conn, org_id, name, role)
                return (await principal_store.add_key(conn, principal)).secret
        finally:
            await database.dispose()

    async def close(self) -> None:
        await self.channel.close()
        await self.server.stop(None)


@dataclass(frozen=True)
class DecodedError:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    violations: Sequence[tuple[str, str]]
    details: tuple[str, ...]
    """Type names of every detail message, e.g. ('google.rpc.ErrorInfo', ...)."""


def assert_caller_stalled(err: aio.AioRpcError, method: str) -> None:
    """`err` ended a call of `method` whose caller stopped taking its messages."""
    error = decode(err)
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CALLER_STALLED")
    assert error.metadata["method"] == method
    assert "google.rpc.RetryInfo" in error.details


async def assert_ended_by_revocation(read: Awaitable[object], method: str) -> None:
    """The next read of a streaming call of `method` fails, within 10 s, because the call's
    key was revoked."""
    with pytest.raises(aio.AioRpcError) as ended:
        await asyncio.wait_for(read, 10)
    error = decode(ended.value)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    assert error.metadata["method"] == method


def decode(err: aio.AioRpcError) -> DecodedError:
    """The status details of a failed call; fails the test if ErrorInfo is missing."""
    status = rpc_status.from_call(err)
    assert status is not None, f"no rich status on {err.code()}: {err.details()}"
    reason, metadata, violations = "", {}, []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "reckon"
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    assert reason, "ErrorInfo missing from status details"
    return DecodedError(
        err.code(),
        reason,
        metadata,
        violations,
        tuple(d.type_url.rsplit("/", 1)[-1] for d in status.details),
    )

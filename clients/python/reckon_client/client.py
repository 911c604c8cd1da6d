"""The async Reckon client: one channel, the generated stubs, and the seed's conveniences."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2
from grpc import aio

from reckon.v1 import (
    admin_service_pb2_grpc,
    audit_service_pb2,
    audit_service_pb2_grpc,
    delivery_service_pb2_grpc,
    governance_service_pb2_grpc,
    types_pb2,
)
from reckon_client.errors import ReckonError

T = TypeVar("T")
OUTCOME_STATUSES = {
    "success": types_pb2.OUTCOME_STATUS_SUCCESS,
    "failure": types_pb2.OUTCOME_STATUS_FAILURE,
    "partial": types_pb2.OUTCOME_STATUS_PARTIAL,
}


def _with_key(details: aio.ClientCallDetails, header: tuple[str, str]) -> aio.ClientCallDetails:
    metadata = aio.Metadata(*(details.metadata or ()))
    metadata.add(*header)
    return aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio files an interceptor under the first call kind it implements only, so each kind
# gets its own class.
class _BearerUnary(aio.UnaryUnaryClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_key(details, self._header), request)


class _BearerServerStream(aio.UnaryStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_key(details, self._header), request)


class _BearerBidi(aio.StreamStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_with_key(details, self._header), request_iterator)


@dataclass(frozen=True)
class GateResult:
    """The verdict of `gate`: proceed only when `allowed`."""

    audit_event_id: str
    allowed: bool
    status: int
    """The ExecuteStatus of the audit event."""
    approval_state: int | None
    """The final ApprovalState when the action needed approval."""
    denial_reason: str


class Reckon:
    """Async client. Use as `async with Reckon(target, api_key) as reckon: ...`.

    The generated stubs are exposed as `audit`, `admin`, `governance` and `delivery`; the
    convenience methods raise `ReckonError` instead of `grpc.aio.AioRpcError`.
    """

    def __init__(
        self,
        target: str,
        api_key: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        header = ("authorization", f"Bearer {api_key}")
        interceptors: list[aio.ClientInterceptor] = [
            _BearerUnary(header),
            _BearerServerStream(header),
            _BearerBidi(header),
        ]
        if credentials is None:
            self.channel = aio.insecure_channel(target, options, interceptors=interceptors)
        else:
            self.channel = aio.secure_channel(
                target, credentials, options, interceptors=interceptors
            )
        self.audit = audit_service_pb2_grpc.AuditServiceStub(self.channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(self.channel)
        self.governance = governance_service_pb2_grpc.GovernanceServiceStub(self.channel)
        self.delivery = delivery_service_pb2_grpc.DeliveryServiceStub(self.channel)

    async def __aenter__(self) -> Reckon:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def execute(
        self,
        action_type: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        data_accessed: Iterable[str] = (),
        event_id: str = "",
        timeout: float | None = None,
    ) -> audit_service_pb2.ExecuteResponse:
        """Submit an action for policy evaluation; `event_id` makes retries safe."""
        request = audit_service_pb2.ExecuteRequest(
            action_type=action_type,
            metadata=_struct(metadata),
            data_accessed=list(data_accessed),
            event_id=event_id,
        )
        return await _call(lambda: self.audit.Execute(request, timeout=timeout))

    async def report(
        self,
        audit_event_id: str,
        status: str | int,
        message: str = "",
        metadata: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> audit_service_pb2.ReportResponse:
        """Record what happened ("success", "failure", "partial"); last write wins and every
        revision is kept, so retrying is safe."""
        code = OUTCOME_STATUSES.get(status, 0) if isinstance(status, str) else status
        request = audit_service_pb2.ReportRequest(
            audit_event_id=audit_event_id,
            outcome=audit_service_pb2.Outcome(
                status=code,  # type: ignore[arg-type]
                message=message,
                metadata=_struct(metadata),
            ),
        )
        return await _call(lambda: self.audit.Report(request, timeout=timeout))

    async def gate(
        self,
        action_type: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        data_accessed: Iterable[str] = (),
        event_id: str = "",
        wait_seconds: float | None = None,
    ) -> GateResult:
        """Execute, and when the policy asks for approval, wait until a reviewer decides or the
        server times the approval out (or `wait_seconds` pass: then `approval_state` is still
        PENDING and `allowed` is False)."""
        executed = await self.execute(
            action_type, metadata=metadata, data_accessed=data_accessed, event_id=event_id
        )
        if executed.status != audit_service_pb2.EXECUTE_STATUS_REQUESTED:
            return GateResult(
                executed.audit_event_id,
                executed.status == audit_service_pb2.EXECUTE_STATUS_EXECUTED,
                executed.status,
                None,
                executed.denial_reason,
            )

        async def watch() -> int:
            final: int = types_pb2.APPROVAL_STATE_PENDING
            stream = self.audit.WatchApproval(
                audit_service_pb2.WatchApprovalRequest(approval_id=executed.approval_id)
            )
            async for update in stream:
                final = update.approval.state
            return final

        state: int = types_pb2.APPROVAL_STATE_PENDING
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_seconds):
                state = await _call(watch)
        return GateResult(
            executed.audit_event_id,
            state == types_pb2.APPROVAL_STATE_APPROVED,
            executed.status,
            state,
            "",
        )


async def _call(operation: Callable[[], Awaitable[T]]) -> T:
    try:
        return await operation()
    except aio.AioRpcError as err:
        decoded = ReckonError.from_rpc_error(err)
        if decoded is None:
            raise
        raise decoded from err


def _struct(document: Mapping[str, Any] | None) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if document:
        message.update(dict(document))
    return message

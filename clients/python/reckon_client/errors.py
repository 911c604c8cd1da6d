"""Typed errors decoded from Reckon's rich status details."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from reckon.v1 import error_reason_pb2


@dataclass
class ReckonError(Exception):
    """A failed Reckon call. Switch on `reason` (an `ErrorReason` value) or `reason_name`."""

    code: grpc.StatusCode
    reason: int
    reason_name: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[tuple[str, str]] = field(default_factory=list)
    """(field path, description) of every broken field rule."""
    retry_after: float | None = None
    """Seconds the server suggests waiting before a retry (transient errors)."""

    def __post_init__(self) -> None:
        super().__init__(f"{self.code.name} {self.reason_name}: {self.message}")

    @property
    def transient(self) -> bool:
        """True when the same call may succeed if retried later."""
        return self.metadata.get("recovery") == "transient"

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError | grpc.RpcError) -> ReckonError | None:
        """Decode a failed call; None when it carries no Reckon ErrorInfo (e.g. a transport
        failure before the server answered)."""
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        return None if status is None else cls.from_status(status)

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> ReckonError | None:
        """Decode a `google.rpc.Status`, as a failed call carries it or as a stream's per-batch
        and per-report results do; None when it holds no Reckon ErrorInfo."""
        decoded: ReckonError | None = None
        violations: list[tuple[str, str]] = []
        retry_after = None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                if info.domain == "reckon":
                    values = error_reason_pb2.ErrorReason.DESCRIPTOR.values_by_name
                    known = values.get("ERROR_REASON_" + info.reason)
                    decoded = cls(
                        code=status_code(status.code),
                        reason=known.number if known else 0,
                        reason_name=info.reason,
                        message=status.message,
                        metadata=dict(info.metadata),
                    )
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
        if decoded is not None:
            decoded.violations = violations
            decoded.retry_after = retry_after
        return decoded


def status_code(number: int) -> grpc.StatusCode:
    """The StatusCode of a `google.rpc.Status` code number (UNKNOWN for one grpc lacks)."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


_CODES = {code.value[0]: code for code in grpc.StatusCode}

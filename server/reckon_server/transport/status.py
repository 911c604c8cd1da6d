"""The one place where a ReckonError becomes a gRPC status with rich details."""

from __future__ import annotations

import math
from collections.abc import Sequence

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from reckon_server.errors import FieldViolation, Reason, ReckonError, Recovery

DOMAIN = "reckon"
# The trailer carrying the details must stay well under gRPC's 8 KiB metadata limit: an
# oversized trailer makes the client see a generic error instead of ours.
MAX_DETAILS_BYTES = 4096

_CODES: dict[Reason, grpc.StatusCode] = {
    Reason.INVALID_AUDIT_EVENT_ID: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.INVALID_OUTCOME: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.INVALID_BODY: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    Reason.ADMIN_REQUIRED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.AUDIT_EVENT_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.APPROVAL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.PLAN_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.CHECK_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.CAMPAIGN_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.MEDIA_BUY_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.KEY_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.CAMPAIGN_SUSPENDED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.BUDGET_BELOW_COMMITTED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.STREAM_FENCED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.APPROVAL_ALREADY_RESOLVED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.IDEMPOTENCY_CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    Reason.OUTCOME_ALREADY_SETTLED: grpc.StatusCode.ALREADY_EXISTS,
    Reason.SEQUENCE_GAP: grpc.StatusCode.OUT_OF_RANGE,
    Reason.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.REPORT_FAILED: grpc.StatusCode.UNAVAILABLE,
    Reason.OVERLOADED: grpc.StatusCode.UNAVAILABLE,
    Reason.DRAINING: grpc.StatusCode.UNAVAILABLE,
    Reason.STORAGE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.INTERNAL: grpc.StatusCode.INTERNAL,
    Reason.WATCH_LAGGING: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.CALLER_STALLED: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def code_of(reason: Reason) -> grpc.StatusCode:
    return _CODES[reason]


def recovery_of(reason: Reason) -> Recovery:
    code = _CODES[reason]
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return Recovery.TRANSIENT
    if code is grpc.StatusCode.INTERNAL:
        return Recovery.TERMINAL
    return Recovery.CORRECTABLE


def rich_status(err: ReckonError) -> status_pb2.Status:
    """`google.rpc.Status` for an error: trailers for RPC failures, in-band for batch items."""
    code = code_of(err.reason)
    violations: Sequence[FieldViolation] = err.violations
    while True:
        status = _build(err, code, violations)
        if status.ByteSize() <= MAX_DETAILS_BYTES or not violations:
            break
        violations = violations[: len(violations) // 2]
    if status.ByteSize() > MAX_DETAILS_BYTES:
        status = _build(
            ReckonError(err.reason, err.message[:512]),
            code,
            (),
        )
    return status


def to_grpc_status(err: ReckonError) -> grpc.Status:
    return rpc_status.to_status(rich_status(err))


def _build(
    err: ReckonError, code: grpc.StatusCode, violations: Sequence[FieldViolation]
) -> status_pb2.Status:
    status = status_pb2.Status(code=_numeric(code), message=err.message[:1024])
    metadata = {k: v[:256] for k, v in err.metadata.items()}
    metadata["recovery"] = recovery_of(err.reason).value
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=err.reason.value, domain=DOMAIN, metadata=metadata)
    )
    if violations:
        status.details.add().Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field[:256], description=v.description[:256]
                    )
                    for v in violations
                ]
            )
        )
    if err.resource is not None:
        status.details.add().Pack(
            error_details_pb2.ResourceInfo(
                resource_type=err.resource.type,
                resource_name=err.resource.name[:256],
                description=err.message[:256],
            )
        )
    if err.precondition is not None:
        kind, subject = err.precondition
        status.details.add().Pack(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=kind, subject=subject[:256], description=err.message[:256]
                    )
                ]
            )
        )
    if err.reason is Reason.RATE_LIMITED:
        status.details.add().Pack(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=err.metadata.get("principal", ""), description=err.message[:256]
                    )
                ]
            )
        )
    if err.retry_after_seconds is not None:
        seconds = max(err.retry_after_seconds, 0.0)
        status.details.add().Pack(
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(
                    seconds=int(seconds), nanos=int(math.modf(seconds)[0] * 1e9)
                )
            )
        )
    return status


def _numeric(code: grpc.StatusCode) -> int:
    value = code.value[0]
    assert isinstance(value, int)
    return value

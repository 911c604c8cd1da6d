"""The one exception tree of Reckon.

Every failure a caller can act on is a `ReckonError` carrying a `Reason` (the wire's
`ErrorInfo.reason`) and the typed facts the edge needs for rich status details. Only
`reckon_server.transport.status` turns these into gRPC statuses; nothing else builds one.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any


class Reason(enum.StrEnum):
    """Mirrors `reckon.v1.ErrorReason` without its prefix (a test keeps the two in step)."""

    INVALID_AUDIT_EVENT_ID = "INVALID_AUDIT_EVENT_ID"
    INVALID_OUTCOME = "INVALID_OUTCOME"
    INVALID_BODY = "INVALID_BODY"
    INVALID_REQUEST = "INVALID_REQUEST"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    ADMIN_REQUIRED = "ADMIN_REQUIRED"
    AUDIT_EVENT_NOT_FOUND = "AUDIT_EVENT_NOT_FOUND"
    APPROVAL_NOT_FOUND = "APPROVAL_NOT_FOUND"
    PLAN_NOT_FOUND = "PLAN_NOT_FOUND"
    CHECK_NOT_FOUND = "CHECK_NOT_FOUND"
    CAMPAIGN_NOT_FOUND = "CAMPAIGN_NOT_FOUND"
    MEDIA_BUY_NOT_FOUND = "MEDIA_BUY_NOT_FOUND"
    CAMPAIGN_SUSPENDED = "CAMPAIGN_SUSPENDED"
    BUDGET_BELOW_COMMITTED = "BUDGET_BELOW_COMMITTED"
    STREAM_FENCED = "STREAM_FENCED"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    OUTCOME_ALREADY_SETTLED = "OUTCOME_ALREADY_SETTLED"
    SEQUENCE_GAP = "SEQUENCE_GAP"
    RATE_LIMITED = "RATE_LIMITED"
    REPORT_FAILED = "REPORT_FAILED"
    OVERLOADED = "OVERLOADED"
    DRAINING = "DRAINING"
    APPROVAL_ALREADY_RESOLVED = "APPROVAL_ALREADY_RESOLVED"
    KEY_NOT_FOUND = "KEY_NOT_FOUND"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    INTERNAL = "INTERNAL"
    WATCH_LAGGING = "WATCH_LAGGING"
    CALLER_STALLED = "CALLER_STALLED"


class Recovery(enum.StrEnum):
    """What a caller should do next (AdCP's recovery classification)."""

    CORRECTABLE = "correctable"
    TRANSIENT = "transient"
    TERMINAL = "terminal"


@dataclass(frozen=True)
class FieldViolation:
    """One broken field rule; `field` is a dotted path with `[i]` indexes."""

    field: str
    description: str


@dataclass(frozen=True)
class DocumentViolation(FieldViolation):
    """A free-form document (a Struct) that is too large or too deep: INVALID_BODY."""


@dataclass(frozen=True)
class Resource:
    """The resource a NOT_FOUND error is about."""

    type: str
    name: str


@dataclass
class ReckonError(Exception):
    """A failure with a reason the caller can switch on.

    `metadata` lands in `ErrorInfo.metadata`; the typed fields select the extra details.
    """

    reason: Reason
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[FieldViolation] = ()
    resource: Resource | None = None
    precondition: tuple[str, str] | None = None
    """(type, subject) of the PreconditionFailure violation, e.g. ("PLAN_STATUS", plan_id)."""
    retry_after_seconds: float | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Exception pickles its args (the message); this rebuilds every field, so an error
        # decided in the SQLite writer process arrives whole.
        return (type(self), tuple(getattr(self, f.name) for f in fields(self)))


def invalid(reason: Reason, violations: Sequence[FieldViolation]) -> ReckonError:
    """An INVALID_ARGUMENT error listing every violation (the first one leads the message)."""
    first = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return ReckonError(
        reason,
        f"{first.field}: {first.description}{more}",
        metadata={"field": first.field},
        violations=tuple(violations),
    )


def not_found(reason: Reason, resource_type: str, name: str, key: str) -> ReckonError:
    """A NOT_FOUND error that names the resource without saying whether it exists elsewhere."""
    return ReckonError(
        reason,
        f"{resource_type} {name!r} not found",
        metadata={key: name},
        resource=Resource(resource_type, name),
    )


def unavailable(reason: Reason, message: str, retry_after_seconds: float = 1.0) -> ReckonError:
    """A transient failure: nothing was written and the same call may be retried."""
    return ReckonError(reason, message, retry_after_seconds=retry_after_seconds)


def internal(logger: logging.Logger, what: str) -> ReckonError:
    """INTERNAL for the exception being handled: it is logged under a new incident id, and
    the caller learns that id and nothing else."""
    incident = uuid.uuid4().hex
    logger.exception("%s (incident %s)", what, incident)
    return ReckonError(
        Reason.INTERNAL, f"internal error (incident {incident})", {"incident_id": incident}
    )

"""Rules of AuditService: what a valid action and outcome are, and the tamper-evident chain."""

from __future__ import annotations

import enum
import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reckon_server.domain.documents import canonical_json, document_problem
from reckon_server.errors import DocumentViolation, FieldViolation, Reason, ReckonError, invalid

MAX_MESSAGE_BYTES = 4096
MAX_ACTION_TYPE = 256
MAX_EVENT_ID = 256
MAX_DATA_ACCESSED = 256
MAX_DATA_ACCESSED_ITEM = 1024
_ACTION_TYPE = re.compile(r"^[\x21-\x7e]{1,256}$")
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class OutcomeStatus(enum.IntEnum):
    """Matches `reckon.v1.OutcomeStatus` numbering."""

    SUCCESS = 1
    FAILURE = 2
    PARTIAL = 3


class ApprovalState(enum.IntEnum):
    """Matches `reckon.v1.ApprovalState` numbering."""

    PENDING = 1
    APPROVED = 2
    DENIED = 3
    TIMED_OUT = 4


@dataclass(frozen=True)
class ActionRequest:
    action_type: str
    metadata: Mapping[str, Any]
    data_accessed: tuple[str, ...]
    event_id: str | None


@dataclass(frozen=True)
class OutcomeReport:
    audit_event_id: str
    status: OutcomeStatus
    message: str
    metadata: Mapping[str, Any]


def validate_action(
    action_type: str, metadata: Mapping[str, Any], data_accessed: Sequence[str], event_id: str
) -> ActionRequest:
    violations: list[FieldViolation] = []
    if not _ACTION_TYPE.match(action_type):
        violations.append(
            FieldViolation("action_type", "required: 1..256 printable characters, no spaces")
        )
    problem = document_problem(metadata)
    if problem:
        violations.append(DocumentViolation("metadata", problem))
    if len(data_accessed) > MAX_DATA_ACCESSED:
        violations.append(FieldViolation("data_accessed", f"at most {MAX_DATA_ACCESSED} entries"))
    for i, item in enumerate(data_accessed[:MAX_DATA_ACCESSED]):
        if not item or len(item.encode()) > MAX_DATA_ACCESSED_ITEM:
            violations.append(
                FieldViolation(f"data_accessed[{i}]", f"1..{MAX_DATA_ACCESSED_ITEM} bytes")
            )
    if len(event_id) > MAX_EVENT_ID:
        violations.append(FieldViolation("event_id", f"at most {MAX_EVENT_ID} characters"))
    if violations:
        only_documents = all(isinstance(v, DocumentViolation) for v in violations)
        raise invalid(Reason.INVALID_BODY if only_documents else Reason.INVALID_REQUEST, violations)
    return ActionRequest(action_type, metadata, tuple(data_accessed), event_id or None)


def parse_audit_event_id(value: str, field: str = "audit_event_id") -> str:
    """The canonical (lowercase, hyphenated) form of a UUID, or INVALID_AUDIT_EVENT_ID."""
    if not value:
        raise invalid(Reason.INVALID_AUDIT_EVENT_ID, [FieldViolation(field, "required")])
    if _CANONICAL_UUID.fullmatch(value):
        return value  # the form the server hands out, on every call's hot path
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise invalid(
            Reason.INVALID_AUDIT_EVENT_ID, [FieldViolation(field, "must be a UUID")]
        ) from None


def validate_report(
    audit_event_id: str,
    has_outcome: bool,
    status: int,
    message: str,
    metadata: Mapping[str, Any],
) -> OutcomeReport:
    """The seed's rules: INVALID_AUDIT_EVENT_ID is checked before INVALID_OUTCOME."""
    event_id = parse_audit_event_id(audit_event_id)
    violations: list[FieldViolation] = []
    if not has_outcome:
        violations.append(FieldViolation("outcome", "required"))
    elif status == 0:
        violations.append(FieldViolation("outcome.status", "required: SUCCESS, FAILURE or PARTIAL"))
    elif status not in OutcomeStatus._value2member_map_:
        violations.append(
            FieldViolation(
                "outcome.status", f"unknown status {status}: SUCCESS, FAILURE or PARTIAL"
            )
        )
    if len(message.encode()) > MAX_MESSAGE_BYTES:
        violations.append(
            FieldViolation("outcome.message", f"at most {MAX_MESSAGE_BYTES} bytes of UTF-8")
        )
    problem = document_problem(metadata)
    if problem:
        violations.append(FieldViolation("outcome.metadata", problem))
    if violations:
        raise invalid(Reason.INVALID_OUTCOME, violations)
    return OutcomeReport(event_id, OutcomeStatus(status), message, metadata)


def chain_hash(previous: str, content: Mapping[str, Any]) -> str:
    """Links an event to its predecessor: SHA-256 over the previous hash and the event's
    canonical JSON, so editing, reordering or deleting any event breaks every later link."""
    return hashlib.sha256((previous + canonical_json(content)).encode()).hexdigest()


def chained_content(
    *,
    audit_event_id: str,
    chain_seq: int,
    agent_name: str,
    action_type: str,
    metadata: Mapping[str, Any],
    data_accessed: Sequence[str],
    event_id: str | None,
    status: int,
    denial_reason: str,
    policy_name: str,
    policy_version: str,
    rule_name: str,
    conditions: Sequence[Mapping[str, Any]],
    approval_id: str | None,
    created_at: datetime,
) -> dict[str, Any]:
    """Everything an audit event asserts, in the form its hash covers."""
    return {
        "audit_event_id": audit_event_id,
        "chain_seq": chain_seq,
        "agent_name": agent_name,
        "action_type": action_type,
        "metadata": metadata,
        "data_accessed": list(data_accessed),
        "event_id": event_id,
        "status": status,
        "denial_reason": denial_reason,
        "policy_name": policy_name,
        "policy_version": policy_version,
        "rule_name": rule_name,
        "conditions": list(conditions),
        "approval_id": approval_id,
        "created_at": created_at.isoformat(),
    }


def forbidden(audit_event_id: str) -> ReckonError:
    return ReckonError(
        Reason.FORBIDDEN,
        "the audit event belongs to another agent",
        {"audit_event_id": audit_event_id},
    )

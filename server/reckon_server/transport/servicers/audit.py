"""AuditService: decode, call the ledger, encode."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from reckon.v1 import audit_service_pb2 as pb
from reckon.v1 import audit_service_pb2_grpc, types_pb2
from reckon_server.domain.audit import parse_audit_event_id, validate_action, validate_report
from reckon_server.domain.paging import (
    decode_page_token,
    encode_page_token,
    int64_position,
    page_size,
)
from reckon_server.errors import FieldViolation, Reason, invalid
from reckon_server.services.audit import AuditLedger
from reckon_server.storage.audit import (
    AuditRecord,
    EventFilter,
    StoredApproval,
    StoredOutcome,
)
from reckon_server.transport.codec import (
    dict_to_struct,
    from_timestamp,
    known_enum,
    python_to_value,
    struct_to_dict,
    to_timestamp,
    valid_timestamp,
)
from reckon_server.transport.context import current_principal

Context = aio.ServicerContext[Any, Any]


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    def __init__(self, ledger: AuditLedger) -> None:
        self._ledger = ledger

    async def Execute(self, request: pb.ExecuteRequest, context: Context) -> pb.ExecuteResponse:
        action = validate_action(
            request.action_type,
            struct_to_dict(request.metadata),
            list(request.data_accessed),
            request.event_id,
        )
        executed = await self._ledger.execute(current_principal(), action)
        event = encode_record(executed.record).event
        return pb.ExecuteResponse(
            audit_event_id=event.audit_event_id,
            status=event.status,
            approval_id=event.approval_id,
            timeout_at=to_timestamp(executed.record.approval.timeout_at)
            if executed.record.approval
            else None,
            denial_reason=event.denial_reason,
            policy_name=event.policy_name,
            policy_version=event.policy_version,
            rule_name=event.rule_name,
            conditions_evaluated=event.conditions_evaluated,
            replayed=executed.replayed,
        )

    async def Report(self, request: pb.ReportRequest, context: Context) -> pb.ReportResponse:
        report = validate_report(
            request.audit_event_id,
            request.HasField("outcome"),
            request.outcome.status,
            request.outcome.message,
            struct_to_dict(request.outcome.metadata),
        )
        result = await self._ledger.report(current_principal(), report)
        return pb.ReportResponse(
            audit_event_id=result.audit_event_id,
            status=result.status,  # type: ignore[arg-type]
            reported_at=to_timestamp(result.reported_at),
            revision=result.revision,
            created=result.revision == 1,
        )

    async def GetAuditEvent(
        self, request: pb.GetAuditEventRequest, context: Context
    ) -> pb.GetAuditEventResponse:
        record, revisions = await self._ledger.get(
            current_principal(),
            parse_audit_event_id(request.audit_event_id),
            with_history=request.include_history,
        )
        return pb.GetAuditEventResponse(
            record=encode_record(record), history=[_outcome(r) for r in revisions]
        )

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Context
    ) -> pb.ListAuditEventsResponse:
        where = _filter(request.filter)
        scope = (
            "audit:"
            + hashlib.sha256(request.filter.SerializeToString(deterministic=True)).hexdigest()[:16]
        )
        before = (
            decode_page_token(request.page_token, scope, int64_position)
            if request.page_token
            else None
        )
        limit = page_size(request.page_size)
        records = await self._ledger.list(current_principal(), where, before, limit + 1)
        token = (
            encode_page_token(records[limit - 1].event.chain_seq, scope)
            if len(records) > limit
            else ""
        )
        return pb.ListAuditEventsResponse(
            records=[encode_record(r) for r in records[:limit]], next_page_token=token
        )

    async def WatchApproval(
        self, request: pb.WatchApprovalRequest, context: Context
    ) -> AsyncIterator[pb.WatchApprovalResponse]:
        approval_id = parse_audit_event_id(request.approval_id, "approval_id")
        async for approval in self._ledger.watch_approval(current_principal(), approval_id):
            yield pb.WatchApprovalResponse(approval=encode_approval(approval))

    async def ExportAuditTrail(
        self, request: pb.ExportAuditTrailRequest, context: Context
    ) -> AsyncIterator[pb.ExportAuditTrailResponse]:
        async for record in self._ledger.export(current_principal(), _filter(request.filter)):
            yield pb.ExportAuditTrailResponse(record=encode_record(record))


def _filter(message: pb.AuditEventFilter) -> EventFilter:
    out: list[FieldViolation] = []
    for name in ("created_after", "created_before"):
        if message.HasField(name) and not valid_timestamp(getattr(message, name)):
            out.append(FieldViolation(f"filter.{name}", "is not a valid timestamp"))
    for name, enum in (
        ("statuses", pb.ExecuteStatus),
        ("outcome_statuses", types_pb2.OutcomeStatus),
    ):
        for i, number in enumerate(getattr(message, name)):
            if not known_enum(enum, number):
                out.append(FieldViolation(f"filter.{name}[{i}]", f"unknown status {number}"))
    if out:
        raise invalid(Reason.INVALID_REQUEST, out)
    return EventFilter(
        agent_name=message.agent_name or None,
        action_glob=message.action_type or None,
        created_after=from_timestamp(message.created_after)
        if message.HasField("created_after")
        else None,
        created_before=from_timestamp(message.created_before)
        if message.HasField("created_before")
        else None,
        statuses=tuple(message.statuses),
        outcome_statuses=tuple(message.outcome_statuses),
        unreported=message.unreported,
    )


def _outcome(outcome: StoredOutcome) -> pb.ReportedOutcome:
    return pb.ReportedOutcome(
        outcome=pb.Outcome(
            status=outcome.status,  # type: ignore[arg-type]
            message=outcome.message,
            metadata=dict_to_struct(outcome.metadata),
        ),
        reported_at=to_timestamp(outcome.reported_at),
        revision=outcome.revision,
    )


def encode_approval(approval: StoredApproval) -> types_pb2.Approval:
    return types_pb2.Approval(
        approval_id=approval.approval_id,
        audit_event_id=approval.audit_event_id,
        agent_name=approval.agent_name,
        action_type=approval.action_type,
        state=int(approval.state),  # type: ignore[arg-type]
        requested_at=to_timestamp(approval.requested_at),
        timeout_at=to_timestamp(approval.timeout_at),
        resolved_at=to_timestamp(approval.resolved_at),
        reviewer=approval.reviewer,
        note=approval.note,
    )


def encode_record(record: AuditRecord) -> pb.AuditRecord:
    event = record.event
    return pb.AuditRecord(
        event=pb.AuditEvent(
            audit_event_id=event.audit_event_id,
            agent_name=event.agent_name,
            action_type=event.action_type,
            metadata=dict_to_struct(event.metadata),
            data_accessed=event.data_accessed,
            event_id=event.event_id or "",
            status=int(event.status),  # type: ignore[arg-type]
            denial_reason=event.denial_reason,
            policy_name=event.policy_name,
            policy_version=event.policy_version,
            rule_name=event.rule_name,
            conditions_evaluated=[
                pb.ConditionEvaluation(
                    field=c["field"],
                    operator=c["operator"],
                    expected=python_to_value(c["expected"]),
                    actual=python_to_value(c["actual"]),
                    matched=c["matched"],
                )
                for c in event.conditions
            ],
            approval_id=event.approval_id or "",
            created_at=to_timestamp(event.created_at),
            chain_hash=event.chain_hash,
        ),
        outcome=_outcome(record.outcome) if record.outcome else None,
        approval=encode_approval(record.approval) if record.approval else None,
    )

"""Audit events, outcomes and approvals."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from reckon_server.clock import epoch_micros
from reckon_server.domain.audit import (
    ActionRequest,
    ApprovalState,
    OutcomeReport,
    chain_hash,
    chained_content,
    forbidden,
)
from reckon_server.domain.documents import canonical_json
from reckon_server.domain.policy import Decision, Evaluation
from reckon_server.domain.principals import Principal
from reckon_server.errors import Reason, ReckonError, not_found
from reckon_server.storage.schema import (
    approvals,
    audit_events,
    audit_outcome_history,
    audit_outcomes,
    orgs,
)
from reckon_server.storage.sql import BulkInsert, first_or_none


@dataclass(frozen=True)
class StoredOutcome:
    status: int
    message: str
    metadata: dict[str, Any]
    reported_at: datetime
    revision: int


@dataclass(frozen=True)
class StoredApproval:
    approval_id: str
    org_id: str
    audit_event_id: str
    principal_id: str
    agent_name: str
    action_type: str
    state: ApprovalState
    requested_at: datetime
    timeout_at: datetime
    resolved_at: datetime | None
    reviewer: str
    note: str


@dataclass(frozen=True)
class StoredEvent:
    audit_event_id: str
    org_id: str
    chain_seq: int
    principal_id: str
    agent_name: str
    action_type: str
    metadata: dict[str, Any]
    data_accessed: list[str]
    event_id: str | None
    status: Decision
    denial_reason: str
    policy_name: str
    policy_version: str
    rule_name: str
    conditions: list[dict[str, Any]]
    approval_id: str | None
    created_at: datetime
    chain_hash: str

    def content(self) -> dict[str, Any]:
        return chained_content(
            audit_event_id=self.audit_event_id,
            chain_seq=self.chain_seq,
            agent_name=self.agent_name,
            action_type=self.action_type,
            metadata=self.metadata,
            data_accessed=self.data_accessed,
            event_id=self.event_id,
            status=int(self.status),
            denial_reason=self.denial_reason,
            policy_name=self.policy_name,
            policy_version=self.policy_version,
            rule_name=self.rule_name,
            conditions=self.conditions,
            approval_id=self.approval_id,
            created_at=self.created_at,
        )


@dataclass(frozen=True)
class AuditRecord:
    event: StoredEvent
    outcome: StoredOutcome | None
    approval: StoredApproval | None


@dataclass(frozen=True)
class ReportResult:
    audit_event_id: str
    status: int
    reported_at: datetime
    revision: int


@dataclass(frozen=True)
class EventFilter:
    """Resolved filter: principal_id is set for agents (only their own events)."""

    principal_id: str | None = None
    agent_name: str | None = None
    action_glob: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    statuses: tuple[int, ...] = ()
    outcome_statuses: tuple[int, ...] = ()
    unreported: bool = False


def _event(row: sa.Row[Any]) -> StoredEvent:
    return StoredEvent(
        row.audit_event_id,
        row.org_id,
        row.chain_seq,
        row.principal_id,
        row.agent_name,
        row.action_type,
        row.metadata_json,
        row.data_accessed,
        row.event_id,
        Decision(row.status),
        row.denial_reason,
        row.policy_name,
        row.policy_version,
        row.rule_name,
        row.conditions,
        row.approval_id,
        row.created_at,
        row.chain_hash,
    )


def _approval(row: sa.Row[Any]) -> StoredApproval:
    return StoredApproval(
        row.approval_id,
        row.org_id,
        row.audit_event_id,
        row.principal_id,
        row.agent_name,
        row.action_type,
        ApprovalState(row.state),
        row.requested_at,
        row.timeout_at,
        row.resolved_at,
        row.reviewer,
        row.note,
    )


async def find_by_event_id(
    conn: AsyncConnection, principal_id: str, event_id: str
) -> StoredEvent | None:
    return await first_or_none(
        conn,
        sa.select(audit_events).where(
            audit_events.c.principal_id == principal_id, audit_events.c.event_id == event_id
        ),
        _event,
    )


async def append_event(
    conn: AsyncConnection,
    principal: Principal,
    action: ActionRequest,
    evaluation: Evaluation,
    now: datetime,
) -> tuple[StoredEvent, bool]:
    """Store the decision as the next link of the org's chain. Returns (event, replayed): a
    repeated event_id returns the original event instead."""
    # The org row lock serialises appends per org, which both linearises the chain and makes
    # the event_id check below race-free across replicas.
    head = (
        await conn.execute(
            sa.select(orgs.c.chain_seq, orgs.c.chain_head)
            .where(orgs.c.org_id == principal.org_id)
            .with_for_update()
        )
    ).one()
    if action.event_id is not None:
        existing = await find_by_event_id(conn, principal.principal_id, action.event_id)
        if existing is not None:
            return existing, True
    audit_event_id = str(uuid.uuid4())
    approval_id = str(uuid.uuid4()) if evaluation.decision is Decision.REQUESTED else None
    conditions = [
        {
            "field": c.field,
            "operator": c.operator,
            "expected": c.expected,
            "actual": c.actual,
            "matched": c.matched,
        }
        for c in evaluation.conditions
    ]
    event = StoredEvent(
        audit_event_id=audit_event_id,
        org_id=principal.org_id,
        chain_seq=head.chain_seq + 1,
        principal_id=principal.principal_id,
        agent_name=principal.name,
        action_type=action.action_type,
        metadata=dict(action.metadata),
        data_accessed=list(action.data_accessed),
        event_id=action.event_id,
        status=evaluation.decision,
        denial_reason=evaluation.denial_reason,
        policy_name=evaluation.policy_name,
        policy_version=evaluation.policy_version,
        rule_name=evaluation.rule_name,
        conditions=conditions,
        approval_id=approval_id,
        created_at=now,
        chain_hash="",
    )
    event = replace(event, chain_hash=chain_hash(head.chain_head, event.content()))
    row = {**asdict(event), "status": int(event.status)}
    row["metadata_json"] = row.pop("metadata")
    await conn.execute(sa.insert(audit_events).values(row))
    await conn.execute(
        sa.update(orgs)
        .where(orgs.c.org_id == principal.org_id)
        .values(chain_seq=event.chain_seq, chain_head=event.chain_hash)
    )
    if approval_id is not None:
        assert evaluation.approval_timeout is not None
        await conn.execute(
            sa.insert(approvals).values(
                approval_id=approval_id,
                org_id=principal.org_id,
                audit_event_id=audit_event_id,
                principal_id=principal.principal_id,
                agent_name=principal.name,
                action_type=action.action_type,
                state=int(ApprovalState.PENDING),
                requested_at=now,
                timeout_at=now + evaluation.approval_timeout,
                resolved_at=None,
                reviewer="",
                note="",
            )
        )
    return event, False


async def get_record(conn: AsyncConnection, org_id: str, audit_event_id: str) -> AuditRecord:
    row = (
        await conn.execute(
            sa.select(audit_events).where(
                audit_events.c.audit_event_id == audit_event_id,
                audit_events.c.org_id == org_id,
            )
        )
    ).first()
    if row is None:
        raise not_found(
            Reason.AUDIT_EVENT_NOT_FOUND, "audit event", audit_event_id, "audit_event_id"
        )
    return (await _attach(conn, [_event(row)]))[0]


async def history(conn: AsyncConnection, audit_event_id: str) -> list[StoredOutcome]:
    rows = await conn.execute(
        sa.select(audit_outcome_history)
        .where(audit_outcome_history.c.audit_event_id == audit_event_id)
        .order_by(audit_outcome_history.c.revision)
    )
    return [
        StoredOutcome(r.status, r.message, r.metadata_json, r.reported_at, r.revision) for r in rows
    ]


async def _attach(conn: AsyncConnection, events: Sequence[StoredEvent]) -> list[AuditRecord]:
    ids = [e.audit_event_id for e in events]
    outcomes: dict[str, StoredOutcome] = {}
    found_approvals: dict[str, StoredApproval] = {}
    if ids:
        for r in await conn.execute(
            sa.select(audit_outcomes).where(audit_outcomes.c.audit_event_id.in_(ids))
        ):
            outcomes[r.audit_event_id] = StoredOutcome(
                r.status, r.message, r.metadata_json, r.reported_at, r.revision
            )
        approval_ids = [e.approval_id for e in events if e.approval_id]
        if approval_ids:
            for r in await conn.execute(
                sa.select(approvals).where(approvals.c.approval_id.in_(approval_ids))
            ):
                found_approvals[r.approval_id] = _approval(r)
    return [
        AuditRecord(
            e,
            outcomes.get(e.audit_event_id),
            found_approvals.get(e.approval_id) if e.approval_id else None,
        )
        for e in events
    ]


@dataclass(frozen=True)
class ReportItem:
    principal: Principal
    report: OutcomeReport
    now: datetime


# Rows are written whole, in their tables' column order.
_UPSERT_OUTCOMES = BulkInsert(audit_outcomes, conflict_key=("audit_event_id",))
_APPEND_HISTORY = BulkInsert(audit_outcome_history)


# Built once: constructing the statement cost more than running it for a small batch.
_LOCK_REPORTED_EVENTS = (
    sa.select(
        audit_events.c.audit_event_id,
        audit_events.c.org_id,
        audit_events.c.principal_id,
        audit_outcomes.c.revision,
    )
    .select_from(
        audit_events.outerjoin(
            audit_outcomes, audit_outcomes.c.audit_event_id == audit_events.c.audit_event_id
        )
    )
    .where(audit_events.c.audit_event_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(audit_events.c.audit_event_id)
    .with_for_update(of=audit_events)
)


class ReportOutcomes:
    """Report as a group-commit op.

    The reported events are locked (PostgreSQL `FOR UPDATE`, sorted so batches on different
    replicas cannot deadlock; SQLite has one writer) and their current revisions read; each
    item then takes the next revision in submission order, so any number of reports of the
    same event in one batch stay consecutive. The latest row per event is upserted and every
    row appended to the history, each with one bulk write.
    """

    pipelined = False

    def apply(
        self, conn: sa.Connection, items: Sequence[ReportItem]
    ) -> list[ReportResult | ReckonError]:
        ids = sorted({item.report.audit_event_id for item in items})
        current = {
            row.audit_event_id: row for row in conn.execute(_LOCK_REPORTED_EVENTS, {"ids": ids})
        }
        revisions = {event_id: row.revision or 0 for event_id, row in current.items()}
        results: list[ReportResult | ReckonError] = []
        latest: dict[str, tuple[Any, ...]] = {}
        history: list[tuple[Any, ...]] = []
        for item in items:
            report = item.report
            owner = current.get(report.audit_event_id)
            if owner is None or owner.org_id != item.principal.org_id:
                results.append(
                    not_found(
                        Reason.AUDIT_EVENT_NOT_FOUND,
                        "audit event",
                        report.audit_event_id,
                        "audit_event_id",
                    )
                )
                continue
            if owner.principal_id != item.principal.principal_id:
                results.append(forbidden(report.audit_event_id))
                continue
            revision = revisions[report.audit_event_id] = revisions[report.audit_event_id] + 1
            document = canonical_json(report.metadata)
            reported_at = epoch_micros(item.now)
            latest[report.audit_event_id] = (
                report.audit_event_id,
                int(report.status),
                report.message,
                document,
                reported_at,
                revision,
            )
            history.append(
                (
                    report.audit_event_id,
                    revision,
                    int(report.status),
                    report.message,
                    document,
                    reported_at,
                )
            )
            results.append(
                ReportResult(report.audit_event_id, int(report.status), item.now, revision)
            )
        _UPSERT_OUTCOMES.write(conn, list(latest.values()))
        _APPEND_HISTORY.write(conn, history)
        return results


def _filtered(org_id: str, where: EventFilter) -> sa.Select[Any]:
    query = sa.select(audit_events).where(audit_events.c.org_id == org_id)
    if where.principal_id:
        query = query.where(audit_events.c.principal_id == where.principal_id)
    if where.agent_name:
        query = query.where(audit_events.c.agent_name == where.agent_name)
    if where.action_glob:
        if any(ch in where.action_glob for ch in "*?"):
            like = (
                where.action_glob.replace("\\", "\\\\")
                .replace("%", "\\%")
                .replace("_", "\\_")
                .replace("*", "%")
                .replace("?", "_")
            )
            query = query.where(audit_events.c.action_type.like(like, escape="\\"))
        else:
            query = query.where(audit_events.c.action_type == where.action_glob)
    if where.created_after:
        query = query.where(audit_events.c.created_at >= where.created_after)
    if where.created_before:
        query = query.where(audit_events.c.created_at < where.created_before)
    if where.statuses:
        query = query.where(audit_events.c.status.in_(where.statuses))
    if where.outcome_statuses or where.unreported:
        query = query.outerjoin(
            audit_outcomes, audit_outcomes.c.audit_event_id == audit_events.c.audit_event_id
        )
        clauses = []
        if where.outcome_statuses:
            clauses.append(audit_outcomes.c.status.in_(where.outcome_statuses))
        if where.unreported:
            clauses.append(audit_outcomes.c.audit_event_id.is_(None))
        query = query.where(sa.or_(*clauses))
    return query


async def count_records(conn: AsyncConnection, org_id: str, where: EventFilter) -> int:
    query = sa.select(sa.func.count()).select_from(_filtered(org_id, where).subquery())
    return int(await conn.scalar(query) or 0)


async def list_records(
    conn: AsyncConnection,
    org_id: str,
    where: EventFilter,
    *,
    before_seq: int | None,
    limit: int,
) -> list[AuditRecord]:
    """Newest first by chain position, which only grows: pages never repeat or skip."""
    query = _filtered(org_id, where)
    if before_seq is not None:
        query = query.where(audit_events.c.chain_seq < before_seq)
    query = query.order_by(audit_events.c.chain_seq.desc()).limit(limit)
    return await _attach(conn, [_event(r) for r in await conn.execute(query)])


async def stream_records(
    connect: Any, org_id: str, where: EventFilter, *, chunk: int = 500
) -> AsyncIterator[AuditRecord]:
    """Oldest first, `chunk` events per short read transaction: constant memory, and no
    transaction held open while a slow consumer reads."""
    after = 0
    while True:
        async with connect() as conn:
            query = (
                _filtered(org_id, where)
                .where(audit_events.c.chain_seq > after)
                .order_by(audit_events.c.chain_seq)
                .limit(chunk)
            )
            records = await _attach(conn, [_event(r) for r in await conn.execute(query)])
        for record in records:
            yield record
        if len(records) < chunk:
            return
        after = records[-1].event.chain_seq


async def get_approval(
    conn: AsyncConnection, org_id: str, approval_id: str
) -> StoredApproval | None:
    return await first_or_none(
        conn,
        sa.select(approvals).where(
            approvals.c.approval_id == approval_id, approvals.c.org_id == org_id
        ),
        _approval,
    )


async def expire_approval(conn: AsyncConnection, approval_id: str, now: datetime) -> None:
    """Time out a pending approval whose deadline has passed (no-op otherwise)."""
    await conn.execute(
        sa.update(approvals)
        .where(
            approvals.c.approval_id == approval_id,
            approvals.c.state == int(ApprovalState.PENDING),
            approvals.c.timeout_at <= now,
        )
        .values(state=int(ApprovalState.TIMED_OUT), resolved_at=now)
    )


async def resolve_approval(
    conn: AsyncConnection,
    approval_id: str,
    *,
    state: ApprovalState,
    reviewer: str,
    note: str,
    now: datetime,
) -> bool:
    """Resolve a pending, unexpired approval; False when it was no longer pending."""
    result = await conn.execute(
        sa.update(approvals)
        .where(
            approvals.c.approval_id == approval_id,
            approvals.c.state == int(ApprovalState.PENDING),
            approvals.c.timeout_at > now,
        )
        .values(state=int(state), resolved_at=now, reviewer=reviewer, note=note)
    )
    return result.rowcount == 1


async def chain(connect: Any, org_id: str) -> AsyncIterator[StoredEvent]:
    """Every event of the org in chain order."""
    async for record in stream_records(connect, org_id, EventFilter(), chunk=1000):
        yield record.event

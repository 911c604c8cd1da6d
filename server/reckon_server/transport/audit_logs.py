"""GetPlanAuditLogs: a plan's checks and outcomes as AdCP's audit log."""

from __future__ import annotations

from typing import Any

from reckon.v1 import governance_service_pb2 as pb
from reckon.v1 import types_pb2
from reckon_server.domain.governance import Decision
from reckon_server.services.governance import CheckType, PlanAuditLog, PlanView
from reckon_server.storage.governance import AuditScope, StoredCheck, TrailEntry
from reckon_server.transport.codec import to_timestamp
from reckon_server.transport.governance_codec import encode_stored_finding


def encode_audit_log(log: PlanAuditLog, scope: AuditScope) -> pb.PlanAuditLog:
    entries = _entries(log.plan_id, log.entries)
    if log.summary is None:
        return pb.PlanAuditLog(plan_id=log.plan_id, entries=entries)
    view, counts = log.summary
    plan = view.plan
    approved = counts.checks_by_decision.get(int(Decision.APPROVED), 0)
    return pb.PlanAuditLog(
        plan_id=plan.plan_id,
        plan_version=plan.version,
        status=plan.status,  # type: ignore[arg-type]
        budget=pb.BudgetState(
            authorized_micros=plan.total_micros,
            committed_micros=plan.committed_micros,
            remaining_micros=plan.total_micros - plan.committed_micros,
            utilization_pct=_pct(plan.committed_micros, plan.total_micros),
        ),
        channel_allocation=_channel_allocation(view),
        summary=pb.AuditSummary(
            checks_performed=counts.checks,
            outcomes_reported=counts.outcomes,
            statuses=pb.DecisionCounts(
                approved=approved,
                denied=counts.checks_by_decision.get(int(Decision.DENIED), 0),
                conditions=counts.checks_by_decision.get(int(Decision.CONDITIONS), 0),
            ),
            findings_count=counts.findings,
            drift_metrics=pb.DriftMetrics(
                auto_approval_rate=approved / counts.checks if counts.checks else 0.0
            ),
        ),
        entries=entries,
        governed_actions=[
            pb.GovernedAction(
                governance_context=c.governance_context,
                purchase_type=c.purchase_type,  # type: ignore[arg-type]
                status=c.status,  # type: ignore[arg-type]
                committed_micros=c.committed_micros,
                check_count=view.check_counts.get(c.governance_context, 0),
                seller_reference=c.media_buy_id or "",
            )
            for c in view.campaigns
            if scope.keeps(c.governance_context, c.purchase_type)
        ],
    )


def _pct(part: int, whole: int) -> float:
    return 100 * part / whole if whole else 0.0


def _channel_allocation(view: PlanView) -> list[pb.ChannelAllocation]:
    """A campaign's commitment split evenly over the channels it delivers on."""
    committed: dict[int, int] = {}
    for campaign in view.campaigns:
        if campaign.committed_micros and campaign.channels:
            share = campaign.committed_micros // len(campaign.channels)
            for name in campaign.channels:
                number = types_pb2.Channel.Value("CHANNEL_" + name.upper())
                committed[number] = committed.get(number, 0) + share
    return [
        pb.ChannelAllocation(
            channel=channel,  # type: ignore[arg-type]
            committed_micros=amount,
            pct=_pct(amount, view.plan.total_micros),
        )
        for channel, amount in sorted(committed.items())
    ]


def _entries(plan_id: str, trail: list[TrailEntry]) -> list[pb.AuditEntry]:
    return [
        _check_entry(plan_id, entry)
        if isinstance(entry, StoredCheck)
        else _outcome_entry(plan_id, entry)
        for _, _, entry in trail
    ]


def _check_entry(plan_id: str, c: StoredCheck) -> pb.AuditEntry:
    return pb.AuditEntry(
        id=c.check_id,
        type=pb.AUDIT_ENTRY_TYPE_CHECK,
        timestamp=to_timestamp(c.created_at),
        plan_id=plan_id,
        caller=c.request.get("caller", ""),
        tool=c.request.get("tool", ""),
        status=c.decision,  # type: ignore[arg-type]
        check_type=pb.CHECK_TYPE_EXECUTION
        if c.check_type == CheckType.EXECUTION
        else pb.CHECK_TYPE_INTENT,
        mode=pb.GOVERNANCE_MODE_ENFORCE,
        explanation=c.response.get("explanation", ""),
        categories_evaluated=c.response.get("categories_evaluated", []),
        findings=[encode_stored_finding(f) for f in c.response.get("findings", [])],
        governance_context=c.governance_context,
        plan_hash=c.plan_hash,
        purchase_type=c.purchase_type,  # type: ignore[arg-type]
    )


def _outcome_entry(plan_id: str, o: Any) -> pb.AuditEntry:
    """The entry of an outcome row."""
    return pb.AuditEntry(
        id=o.outcome_id,
        type=pb.AUDIT_ENTRY_TYPE_OUTCOME,
        timestamp=to_timestamp(o.created_at),
        plan_id=plan_id,
        outcome=o.outcome,
        committed_budget_micros=o.committed_micros,
        findings=[encode_stored_finding(f) for f in o.response.get("findings", [])],
        governance_context=o.governance_context,
        plan_hash=o.plan_hash,
        purchase_type=o.purchase_type,
        outcome_status=o.status,
    )

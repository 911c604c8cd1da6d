"""GovernanceService: decode, call the governance ledger, encode."""

from __future__ import annotations

import hashlib
from typing import Any

from grpc import aio

from reckon.v1 import governance_service_pb2 as pb
from reckon.v1 import governance_service_pb2_grpc, types_pb2
from reckon_server.clock import LATEST_MICROS, epoch_micros, from_epoch_micros
from reckon_server.domain.paging import (
    decode_page_token,
    encode_page_token,
    int64_position,
    page_size,
    text_position,
)
from reckon_server.errors import FieldViolation, Reason, invalid
from reckon_server.services.governance import (
    EntriesPage,
    GovernanceLedger,
    OutcomeResult,
    TrailPosition,
)
from reckon_server.storage.governance import AuditScope
from reckon_server.transport import governance_codec as codec
from reckon_server.transport.audit_logs import encode_audit_log
from reckon_server.transport.codec import known_enum, python_to_value, to_timestamp
from reckon_server.transport.context import current_principal

Context = aio.ServicerContext[Any, Any]
CATEGORIES = ("budget_authority", "strategic_alignment", "seller_verification")


class GovernanceServicer(governance_service_pb2_grpc.GovernanceServiceServicer):
    def __init__(self, ledger: GovernanceLedger) -> None:
        self._ledger = ledger

    async def SyncPlans(
        self, request: pb.SyncPlansRequest, context: Context
    ) -> pb.SyncPlansResponse:
        syncs = codec.validate_sync(request)

        def render(versions: list[tuple[str, int]]) -> bytes:
            return pb.SyncPlansResponse(
                plans=[
                    pb.PlanSyncResult(
                        plan_id=plan_id,
                        status=pb.PLAN_SYNC_STATUS_ACTIVE,
                        version=version,
                        categories=[
                            pb.CategoryStatus(category_id=c, active=True) for c in CATEGORIES
                        ],
                        resolved_policies=[
                            pb.ResolvedPolicy(
                                policy_id=p,
                                source=pb.POLICY_SOURCE_EXPLICIT,
                                enforcement="must",
                                reason="named in the plan's policy_ids",
                            )
                            for p in sync.document.get("policy_ids", [])
                        ],
                    )
                    for (plan_id, version), sync in zip(versions, syncs, strict=True)
                ],
                context=request.context if request.HasField("context") else None,
            ).SerializeToString()

        stored, replayed = await self._ledger.sync_plans(
            current_principal(),
            request.idempotency_key,
            codec.request_hash(request),
            syncs,
            render,
        )
        response = pb.SyncPlansResponse.FromString(stored)
        response.replayed = replayed
        return response

    async def CheckGovernance(
        self, request: pb.CheckGovernanceRequest, context: Context
    ) -> pb.CheckGovernanceResponse:
        check = codec.validate_check(request)
        result = await self._ledger.check(current_principal(), check, codec.terms_from_document)
        verdict = result.verdict
        return pb.CheckGovernanceResponse(
            check_id=result.check_id,
            status=int(verdict.decision),  # type: ignore[arg-type]
            plan_id=result.plan_id,
            explanation=verdict.explanation,
            findings=[codec.encode_finding(f) for f in verdict.findings],
            conditions=[
                pb.Condition(
                    field=c.field,
                    # An advisory condition carries no required value (AdCP: absent).
                    required_value=None
                    if c.required_value is None
                    else python_to_value(c.required_value),
                    reason=c.reason,
                )
                for c in verdict.conditions
            ],
            expires_at=to_timestamp(result.expires_at),
            categories_evaluated=verdict.categories_evaluated,
            mode=pb.GOVERNANCE_MODE_ENFORCE,
            governance_context=result.governance_context,
            reserved_micros=result.reserved_micros,
            context=request.context if request.HasField("context") else None,
        )

    async def ReportPlanOutcome(
        self, request: pb.ReportPlanOutcomeRequest, context: Context
    ) -> pb.ReportPlanOutcomeResponse:
        outcome = codec.validate_outcome(request)

        def render(result: OutcomeResult) -> bytes:
            response = pb.ReportPlanOutcomeResponse(
                outcome_id=result.outcome_id,
                status=result.status,  # type: ignore[arg-type]
                committed_budget_micros=result.committed_micros,
                findings=[codec.encode_finding(f) for f in result.findings],
                context=request.context if request.HasField("context") else None,
            )
            if result.total_committed_micros is not None:
                response.plan_summary.total_committed_micros = result.total_committed_micros
                response.plan_summary.budget_remaining_micros = result.budget_remaining_micros or 0
            return response.SerializeToString()

        stored, replayed = await self._ledger.report_outcome(
            current_principal(), outcome, codec.terms_from_document, render
        )
        response = pb.ReportPlanOutcomeResponse.FromString(stored)
        response.replayed = replayed
        return response

    async def GetPlan(self, request: pb.GetPlanRequest, context: Context) -> pb.GetPlanResponse:
        if not request.plan_id:
            raise invalid(Reason.INVALID_REQUEST, [FieldViolation("plan_id", "required")])
        view = await self._ledger.plan_view(current_principal(), request.plan_id)
        plan = codec.plan_from_document(view.plan.document)
        return pb.GetPlanResponse(
            plan=plan, state=codec.encode_plan_state(view, codec.terms_from_plan(plan))
        )

    async def GetPlanAuditLogs(
        self, request: pb.GetPlanAuditLogsRequest, context: Context
    ) -> pb.GetPlanAuditLogsResponse:
        principal = current_principal()
        if not (request.plan_ids or request.portfolio_plan_ids or request.governance_contexts):
            raise invalid(
                Reason.INVALID_REQUEST,
                [
                    FieldViolation(
                        "plan_ids", "name plan_ids, portfolio_plan_ids or governance_contexts"
                    )
                ],
            )
        violations = [
            FieldViolation(f"purchase_types[{i}]", "unknown purchase type")
            for i, number in enumerate(request.purchase_types)
            if not known_enum(types_pb2.PurchaseType, number)
        ]
        if len(request.plan_ids) + len(request.portfolio_plan_ids) > 100:
            violations.append(FieldViolation("plan_ids", "at most 100"))
        if len(request.governance_contexts) > 100:
            violations.append(FieldViolation("governance_contexts", "at most 100"))
        if request.page_token and not request.include_entries:
            violations.append(FieldViolation("page_token", "pages entries: set include_entries"))
        if violations:
            raise invalid(Reason.INVALID_REQUEST, violations)
        plan_ids = list(dict.fromkeys(request.plan_ids))
        for portfolio in request.portfolio_plan_ids:
            for member in await self._ledger.portfolio_members(principal, portfolio):
                if member not in plan_ids:
                    plan_ids.append(member)
        if not plan_ids:
            # In request order, never a set's: pages continue in the plans' order, which must
            # be the same on every call and on every replica.
            contexts = list(dict.fromkeys(request.governance_contexts))
            plan_ids = await self._ledger.plans_of_contexts(principal, contexts)
        scope = AuditScope(
            frozenset(request.governance_contexts), frozenset(request.purchase_types)
        )
        limit = page_size(request.page_size)
        entries = None
        if request.include_entries:
            token_scope = _audit_logs_token_scope(request)
            after = None
            if request.page_token:
                after = decode_page_token(request.page_token, token_scope, _trail_position)
            entries = EntriesPage(after, limit)
        page = await self._ledger.audit_logs(principal, plan_ids, scope, entries)
        token = ""
        if page.last is not None:
            position = [page.last.plan_id, epoch_micros(page.last.at), page.last.entry_id]
            token = encode_page_token(position, token_scope)
        return pb.GetPlanAuditLogsResponse(
            plans=[encode_audit_log(log, scope) for log in page.logs],
            context=request.context if request.HasField("context") else None,
            next_page_token=token,
        )


def _audit_logs_token_scope(request: pb.GetPlanAuditLogsRequest) -> str:
    """Page tokens continue only the request that issued them (whatever its page size)."""
    selection = pb.GetPlanAuditLogsRequest(
        plan_ids=request.plan_ids,
        portfolio_plan_ids=request.portfolio_plan_ids,
        governance_contexts=request.governance_contexts,
        purchase_types=request.purchase_types,
    )
    digest = hashlib.sha256(selection.SerializeToString(deterministic=True)).hexdigest()
    return "plan-audit-logs:" + digest[:16]


def _trail_position(position: Any) -> TrailPosition:
    plan_id, at, entry_id = position
    if int64_position(at) > LATEST_MICROS:
        raise ValueError("not a stored time")
    return TrailPosition(text_position(plan_id), from_epoch_micros(at), text_position(entry_id))

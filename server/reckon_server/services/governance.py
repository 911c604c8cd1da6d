"""GovernanceService use cases: every budget change of a plan runs in one transaction holding
the plan's row lock, so settle-once, reservations and commitments hold across replicas."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from reckon_server.clock import utcnow
from reckon_server.domain.actions import Action, Package
from reckon_server.domain.findings import Finding, has_critical
from reckon_server.domain.governance import (
    Decision,
    Headroom,
    PlanTerms,
    Verdict,
    advisory_conditions,
    evaluate,
)
from reckon_server.domain.money import MAX_PLAN_TOTAL_MICROS, past_plan_total
from reckon_server.domain.pacing import DeliveryFigures, DeliveryRules
from reckon_server.domain.principals import Principal
from reckon_server.domain.reconciliation import over_commitment, seller_verification
from reckon_server.errors import (
    FieldViolation,
    Reason,
    ReckonError,
    Resource,
    invalid,
    not_found,
)
from reckon_server.services.notify import Notifier
from reckon_server.storage import governance as store
from reckon_server.storage.database import Database
from reckon_server.storage.delivery import outcome_ids

SYNC_PLANS = "SyncPlans"
REPORT_PLAN_OUTCOME = "ReportPlanOutcome"


class PlanStatus:
    """Matches `reckon.v1.PlanStatus` numbering."""

    ACTIVE = 1
    SUSPENDED = 2
    COMPLETED = 3


class Outcome:
    """Matches `reckon.v1.OutcomeType` numbering."""

    COMPLETED = 1
    FAILED = 2
    DELIVERY = 3


class CheckType:
    """Matches `reckon.v1.CheckType` numbering."""

    INTENT = 1
    EXECUTION = 2


ACCEPTED, FINDINGS = 1, 2
DELIVERY_PHASE = 3


@dataclass(frozen=True)
class PlanSync:
    """One plan of a sync: its terms, its full document (as stored and returned) and the hash
    of that document."""

    terms: PlanTerms
    document: dict[str, Any]
    plan_hash: str


@dataclass(frozen=True)
class CheckRequest:
    plan_id: str
    caller: str
    purchase_type: int
    phase: int
    governance_context: str
    check_type: int
    action: Action
    document: dict[str, Any]
    """The request as stored for the audit log."""
    delivery: DeliveryFigures | None = None
    currency: str = ""
    """The currency of planned_delivery, when given: it must be the plan's."""


@dataclass(frozen=True)
class CheckResult:
    check_id: str
    plan_id: str
    verdict: Verdict
    expires_at: datetime | None
    governance_context: str
    reserved_micros: int


@dataclass(frozen=True)
class OutcomeRequest:
    plan_id: str
    check_id: str
    idempotency_key: str
    request_hash: str
    purchase_type: int
    outcome: int
    governance_context: str
    seller: Action | None = None
    media_buy_id: str = ""
    delivery: DeliveryFigures | None = None
    currency: str = ""
    """The currency of the seller's planned_delivery, when given: it must be the plan's."""


@dataclass(frozen=True)
class OutcomeResult:
    outcome_id: str
    status: int
    committed_micros: int | None
    findings: tuple[Finding, ...]
    total_committed_micros: int | None
    budget_remaining_micros: int | None


@dataclass(frozen=True)
class PlanView:
    plan: store.StoredPlan
    campaigns: list[store.StoredCampaign]
    reserved: dict[str, int]
    spend: dict[str, int]
    check_counts: dict[str, int]

    @property
    def reserved_micros(self) -> int:
        return sum(self.reserved.values())

    @property
    def spend_micros(self) -> int:
        return sum(self.spend.values())


@dataclass(frozen=True)
class TrailPosition:
    """An entry of the audit trail of several plans: its plan, timestamp and id."""

    plan_id: str
    at: datetime
    entry_id: str


@dataclass(frozen=True)
class EntriesPage:
    """At most `limit` audit entries, after `after` (from the start when None)."""

    after: TrailPosition | None
    limit: int


@dataclass
class PlanAuditLog:
    plan_id: str
    summary: tuple[PlanView, store.AuditCounts] | None
    """None on pages after the first, which carry entries only."""
    entries: list[store.TrailEntry] = field(default_factory=list)
    """This page's checks and outcomes, in trail order."""


@dataclass(frozen=True)
class AuditPage:
    logs: list[PlanAuditLog]
    last: TrailPosition | None
    """The last entry of this page when more follow, else None."""


class GovernanceLedger:
    def __init__(
        self,
        database: Database,
        notifier: Notifier,
        *,
        check_ttl: timedelta,
        pacing_threshold_pct: int,
        suspend_on_critical: bool,
    ) -> None:
        self._db = database
        self._notifier = notifier
        self._check_ttl = check_ttl
        self._pacing_threshold = pacing_threshold_pct
        self._suspend_on_critical = suspend_on_critical

    # --- plans -------------------------------------------------------------------------------

    async def sync_plans(
        self,
        principal: Principal,
        key: str,
        request_hash: str,
        syncs: list[PlanSync],
        render: Callable[[list[tuple[str, int]]], bytes],
    ) -> tuple[bytes, bool]:
        """Create or update every plan, all or nothing. Returns the rendered response and
        whether it is a replay of an earlier identical request."""
        now = utcnow()
        changed: list[str] = []
        async with self._db.write() as conn:
            replay = await _replay(conn, principal, SYNC_PLANS, key, request_hash)
            if replay is not None:
                return replay, True
            versions = []
            for index, sync in enumerate(syncs):
                terms = sync.terms
                existing = await store.lock_plan(conn, principal.org_id, terms.plan_id)
                if existing is None:
                    await store.insert_plan(
                        conn,
                        store.StoredPlan(
                            principal.org_id,
                            terms.plan_id,
                            principal.principal_id,
                            PlanStatus.ACTIVE,
                            1,
                            terms.currency,
                            terms.total_micros,
                            0,
                            sync.document,
                            sync.plan_hash,
                            now,
                        ),
                        now,
                    )
                    versions.append((terms.plan_id, 1))
                    changed.append(terms.plan_id)
                    continue
                if existing.owner_id != principal.principal_id:
                    raise _plan_not_found(terms.plan_id)
                if existing.plan_hash == sync.plan_hash:
                    versions.append((terms.plan_id, existing.version))
                    continue
                if terms.total_micros < existing.committed_micros:
                    raise ReckonError(
                        Reason.BUDGET_BELOW_COMMITTED,
                        f"plans[{index}].budget.total_micros is below the "
                        f"{existing.committed_micros} micros already committed",
                        {
                            "plan_id": terms.plan_id,
                            "committed_micros": str(existing.committed_micros),
                        },
                        precondition=("BUDGET", terms.plan_id),
                    )
                if terms.currency != existing.currency and existing.committed_micros:
                    raise invalid(
                        Reason.INVALID_REQUEST,
                        [
                            FieldViolation(
                                f"plans[{index}].budget.currency",
                                f"cannot change once budget is committed in {existing.currency}",
                            )
                        ],
                    )
                await store.update_plan(
                    conn,
                    principal.org_id,
                    terms.plan_id,
                    version=existing.version + 1,
                    currency=terms.currency,
                    total_micros=terms.total_micros,
                    document=sync.document,
                    plan_hash=sync.plan_hash,
                    updated_at=now,
                )
                versions.append((terms.plan_id, existing.version + 1))
                changed.append(terms.plan_id)
            response = render(versions)
            await store.store_response(
                conn,
                principal_id=principal.principal_id,
                rpc=SYNC_PLANS,
                key=key,
                request_hash=request_hash,
                response=response,
                now=now,
            )
        for plan_id in changed:
            await self._changed(principal.org_id, plan_id, "plan_updated")
        return response, False

    async def plan_view(self, principal: Principal, plan_id: str) -> PlanView:
        async with self._db.read() as conn:
            plan = await self._visible_plan(conn, principal, plan_id)
            return await _view(conn, plan, utcnow())

    async def set_status(
        self, admin: Principal, plan_id: str, status: int, reason: str
    ) -> PlanView:
        if status not in (PlanStatus.ACTIVE, PlanStatus.SUSPENDED, PlanStatus.COMPLETED):
            raise invalid(
                Reason.INVALID_REQUEST,
                [FieldViolation("status", "required: ACTIVE, SUSPENDED or COMPLETED")],
            )
        if len(reason.encode()) > 4096:
            raise invalid(Reason.INVALID_REQUEST, [FieldViolation("reason", "at most 4096 bytes")])
        now = utcnow()
        async with self._db.write() as conn:
            plan = await store.lock_plan(conn, admin.org_id, plan_id)
            if plan is None:
                raise _plan_not_found(plan_id)
            await store.update_plan(conn, admin.org_id, plan_id, status=status, updated_at=now)
            view = await _view(conn, replace(plan, status=status, updated_at=now), now)
        await self._changed(admin.org_id, plan_id, "status_changed")
        return view

    # --- checks ------------------------------------------------------------------------------

    async def check(
        self,
        principal: Principal,
        request: CheckRequest,
        terms_of: Callable[[dict[str, Any]], PlanTerms],
    ) -> CheckResult:
        now = utcnow()
        async with self._db.write() as conn:
            plan = await self._active_plan(conn, principal, request.plan_id)
            terms = terms_of(plan.document)
            _same_currency(request.currency, terms, "planned_delivery.currency")
            existing = None
            if request.governance_context:
                existing = await store.campaign(
                    conn, principal.org_id, plan.plan_id, request.governance_context
                )
                if existing is None:
                    raise _campaign_not_found(plan.plan_id, request.governance_context)
            campaigns = await store.plan_campaigns(conn, principal.org_id, plan.plan_id)
            reserved = await store.reservations(conn, principal.org_id, plan.plan_id, now)
            context = request.governance_context or "gc_" + secrets.token_hex(16)
            # The new check replaces this campaign's own reservation, so it is not headroom
            # already spent.
            reserved.pop(context, None)
            committed_by = {c.governance_context: c.committed_micros for c in campaigns}
            seller = request.action.seller or (existing.seller if existing else None)
            headroom = Headroom(
                total=plan.total_micros,
                committed=plan.committed_micros - committed_by.get(context, 0),
                reserved=sum(reserved.values()),
                purchase_type_used=sum(
                    committed_by[c.governance_context] + reserved.get(c.governance_context, 0)
                    for c in campaigns
                    if c.purchase_type == request.purchase_type and c.governance_context != context
                ),
                seller_used=sum(
                    committed_by[c.governance_context] + reserved.get(c.governance_context, 0)
                    for c in campaigns
                    if seller and c.seller == seller and c.governance_context != context
                ),
            )
            approved = None
            if request.check_type == CheckType.EXECUTION and existing is not None:
                intent = await store.latest_approved_check(conn, context)
                approved = _action_of(intent) if intent is not None else None
            if request.phase == DELIVERY_PHASE:
                verdict = self._delivery_verdict(request, existing, terms)
            else:
                verdict = evaluate(
                    terms,
                    headroom,
                    request.action,
                    purchase_type=request.purchase_type,
                    approved=approved,
                )
            reserves = (
                verdict.decision is Decision.APPROVED
                and request.phase != DELIVERY_PHASE
                and request.action.amount_micros > 0
            )
            expires_at = (
                now + self._check_ttl
                if verdict.decision in (Decision.APPROVED, Decision.CONDITIONS)
                else None
            )
            if existing is None:
                await store.insert_campaign(
                    conn,
                    principal.org_id,
                    store.StoredCampaign(
                        context,
                        plan.plan_id,
                        request.purchase_type,
                        PlanStatus.ACTIVE,
                        None,
                        seller,
                        0,
                        False,
                        request.action.flight_start,
                        request.action.flight_end,
                        list(request.action.channels),
                        now,
                    ),
                )
            elif seller and not existing.seller:
                await store.update_campaign(conn, context, seller=seller)
            check_id = "chk_" + secrets.token_hex(12)
            await store.insert_check(
                conn,
                principal.org_id,
                principal.principal_id,
                store.StoredCheck(
                    check_id,
                    plan.plan_id,
                    context,
                    request.purchase_type,
                    request.phase,
                    request.check_type,
                    int(verdict.decision),
                    request.action.amount_micros,
                    reserves,
                    expires_at,
                    None,
                    False,
                    len(verdict.findings),
                    {**request.document, "caller": request.caller},
                    _verdict_document(verdict),
                    plan.plan_hash,
                    await store.trail_time(conn, principal.org_id, plan.plan_id, now),
                ),
            )
            if reserves:
                await store.supersede_checks(conn, context, keep_check_id=check_id)
        await self._changed(principal.org_id, plan.plan_id, "check")
        return CheckResult(
            check_id,
            plan.plan_id,
            verdict,
            expires_at,
            context,
            request.action.amount_micros if reserves else 0,
        )

    def _delivery_verdict(
        self, request: CheckRequest, existing: store.StoredCampaign | None, terms: PlanTerms
    ) -> Verdict:
        figures = request.delivery
        assert figures is not None
        findings = []
        if existing is not None:
            cumulative = figures.cumulative_spend_micros or figures.spend_micros
            findings = self._delivery_findings(existing, terms, figures, cumulative)
        decision = (
            Decision.DENIED
            if has_critical(findings)
            else (Decision.CONDITIONS if findings else Decision.APPROVED)
        )
        explanation = " ".join(f.explanation for f in findings) or "Delivery is on plan."
        conditions = advisory_conditions(findings, []) if decision is Decision.CONDITIONS else []
        return Verdict(
            decision, tuple(findings), tuple(conditions), ("budget_authority",), explanation
        )

    # --- outcomes ----------------------------------------------------------------------------

    async def report_outcome(
        self,
        principal: Principal,
        request: OutcomeRequest,
        terms_of: Callable[[dict[str, Any]], PlanTerms],
        render: Callable[[OutcomeResult], bytes],
    ) -> tuple[bytes, bool]:
        now = utcnow()
        async with self._db.write() as conn:
            plan = await self._active_plan(conn, principal, request.plan_id)
            terms = terms_of(plan.document)
            _same_currency(request.currency, terms, "seller_response.planned_delivery.currency")
            check = None
            if request.outcome == Outcome.DELIVERY:
                target = await self._delivery_campaign(conn, principal, plan, request)
            else:
                check = await store.get_check(
                    conn, principal.org_id, plan.plan_id, request.check_id
                )
                if check is None:
                    raise not_found(
                        Reason.CHECK_NOT_FOUND, "governance check", request.check_id, "check_id"
                    )
                if request.governance_context and (
                    request.governance_context != check.governance_context
                ):
                    raise _campaign_not_found(plan.plan_id, request.governance_context)
                found = await store.campaign(
                    conn, principal.org_id, plan.plan_id, check.governance_context
                )
                assert found is not None
                target = found
            replay = await _replay(
                conn, principal, REPORT_PLAN_OUTCOME, request.idempotency_key, request.request_hash
            )
            if replay is not None:
                return replay, True
            (outcome_id,) = outcome_ids(now, 1)
            if check is not None:
                result = await self._settle(
                    conn,
                    plan=plan,
                    terms=terms,
                    check=check,
                    target=target,
                    request=request,
                    outcome_id=outcome_id,
                    now=now,
                )
            else:
                result = await self._deliver(
                    conn,
                    plan=plan,
                    terms=terms,
                    target=target,
                    request=request,
                    outcome_id=outcome_id,
                    now=now,
                )
            suspended = self._suspend_on_critical and has_critical(result.findings)
            if suspended:
                await store.update_plan(
                    conn,
                    principal.org_id,
                    plan.plan_id,
                    status=PlanStatus.SUSPENDED,
                    updated_at=now,
                )
            await store.insert_outcome(
                conn,
                outcome_id=outcome_id,
                org_id=principal.org_id,
                plan_id=plan.plan_id,
                check_id=check.check_id if check else None,
                governance_context=target.governance_context,
                purchase_type=request.purchase_type,
                outcome=request.outcome,
                status=result.status,
                committed_micros=result.committed_micros,
                findings_count=len(result.findings),
                response={"findings": [f.document() for f in result.findings]},
                plan_hash=plan.plan_hash,
                created_at=await store.trail_time(conn, principal.org_id, plan.plan_id, now),
            )
            response = render(result)
            await store.store_response(
                conn,
                principal_id=principal.principal_id,
                rpc=REPORT_PLAN_OUTCOME,
                key=request.idempotency_key,
                request_hash=request.request_hash,
                response=response,
                now=now,
            )
        await self._changed(
            principal.org_id, plan.plan_id, "delivery" if check is None else "commitment"
        )
        if suspended:
            await self._changed(principal.org_id, plan.plan_id, "status_changed")
        return response, False

    async def _settle(
        self,
        conn: Any,
        *,
        plan: store.StoredPlan,
        terms: PlanTerms,
        check: store.StoredCheck,
        target: store.StoredCampaign,
        request: OutcomeRequest,
        outcome_id: str,
        now: datetime,
    ) -> OutcomeResult:
        if not await store.settle_check(conn, check.check_id, outcome_id):
            raise ReckonError(
                Reason.OUTCOME_ALREADY_SETTLED,
                f"check {check.check_id} was already settled by outcome {check.settled_by}",
                {"check_id": check.check_id, "outcome_id": check.settled_by or ""},
                precondition=("CHECK_SETTLED", check.check_id),
            )
        await store.supersede_checks(conn, target.governance_context, keep_check_id=None)
        findings: list[Finding] = []
        committed_total = plan.committed_micros
        committed = 0
        if request.outcome == Outcome.COMPLETED:
            seller = request.seller
            assert seller is not None
            committed = seller.amount_micros
            if request.media_buy_id:
                other = await store.campaign_by_media_buy(
                    conn, plan.org_id, plan.plan_id, request.media_buy_id
                )
                if other is not None and other.governance_context != target.governance_context:
                    raise invalid(
                        Reason.INVALID_REQUEST,
                        [
                            FieldViolation(
                                "seller_response.media_buy_id",
                                "already names another campaign of this plan",
                            )
                        ],
                    )
            verification = seller_verification(_action_of(check), seller, terms.currency)
            if verification is not None:
                findings.append(verification)
            committed_total = plan.committed_micros - target.committed_micros + committed
            if committed_total > MAX_PLAN_TOTAL_MICROS:
                raise past_plan_total("seller_response", "committed budget")
            over = over_commitment(committed_total, plan.total_micros, terms.currency)
            if over is not None:
                findings.append(over)
            await store.update_campaign(
                conn,
                target.governance_context,
                committed_micros=committed,
                settled=True,
                media_buy_id=request.media_buy_id or target.media_buy_id,
                flight_start=seller.flight_start or target.flight_start,
                flight_end=seller.flight_end or target.flight_end,
                channels=list(seller.channels) or target.channels,
            )
            await store.update_plan(
                conn, plan.org_id, plan.plan_id, committed_micros=committed_total, updated_at=now
            )
        return OutcomeResult(
            outcome_id,
            FINDINGS if findings else ACCEPTED,
            committed,
            tuple(findings),
            committed_total,
            plan.total_micros - committed_total,
        )

    async def _delivery_campaign(
        self, conn: Any, principal: Principal, plan: store.StoredPlan, request: OutcomeRequest
    ) -> store.StoredCampaign:
        figures = request.delivery
        assert figures is not None
        if figures.media_buy_id:
            found = await store.campaign_by_media_buy(
                conn, principal.org_id, plan.plan_id, figures.media_buy_id
            )
            if found is None:
                raise not_found(
                    Reason.MEDIA_BUY_NOT_FOUND, "media buy", figures.media_buy_id, "media_buy_id"
                )
            return found
        found = await store.campaign(
            conn, principal.org_id, plan.plan_id, request.governance_context
        )
        if found is None:
            raise _campaign_not_found(plan.plan_id, request.governance_context)
        return found

    async def _deliver(
        self,
        conn: Any,
        *,
        plan: store.StoredPlan,
        terms: PlanTerms,
        target: store.StoredCampaign,
        request: OutcomeRequest,
        outcome_id: str,
        now: datetime,
    ) -> OutcomeResult:
        figures = request.delivery
        assert figures is not None
        cumulative = await store.record_delivery(
            conn,
            plan_spend_limit=MAX_PLAN_TOTAL_MICROS,
            org_id=plan.org_id,
            plan_id=plan.plan_id,
            governance_context=target.governance_context,
            period_start=figures.period_start,
            period_end=figures.period_end,
            spend_micros=figures.spend_micros,
            impressions=figures.impressions,
            cpm_micros=figures.cpm_micros,
            viewability_rate=figures.viewability_rate,
            completion_rate=figures.completion_rate,
            outcome_id=outcome_id,
            now=now,
        )
        if cumulative is None:
            raise past_plan_total("delivery.spend_micros", "delivered spend")
        findings = self._delivery_findings(target, terms, figures, cumulative)
        return OutcomeResult(
            outcome_id, FINDINGS if findings else ACCEPTED, None, tuple(findings), None, None
        )

    def _delivery_findings(
        self,
        target: store.StoredCampaign,
        terms: PlanTerms,
        figures: DeliveryFigures,
        cumulative_micros: int,
    ) -> list[Finding]:
        rules = DeliveryRules(
            committed_micros=target.committed_micros,
            settled=target.settled,
            flight_start=target.flight_start or terms.flight_start,
            flight_end=target.flight_end or terms.flight_end,
            currency=terms.currency,
            threshold_pct=self._pacing_threshold,
        )
        return rules.findings(figures, cumulative_micros)

    # --- reads -------------------------------------------------------------------------------

    async def audit_logs(
        self,
        principal: Principal,
        plan_ids: list[str],
        scope: store.AuditScope,
        entries: EntriesPage | None,
    ) -> AuditPage:
        """The plans' audit logs; with `entries`, one page of their checks and outcomes, walking
        the plans in order and each plan's trail by (timestamp, id)."""
        start = 0
        if entries is not None and entries.after is not None:
            if entries.after.plan_id not in plan_ids:
                no_longer = "continues a plan the request no longer selects"
                raise invalid(Reason.INVALID_REQUEST, [FieldViolation("page_token", no_longer)])
            start = plan_ids.index(entries.after.plan_id)
        now = utcnow()
        logs: list[PlanAuditLog] = []
        remaining = entries.limit if entries is not None else 0
        last: TrailPosition | None = None
        more = False
        async with self._db.read() as conn:
            for index, plan_id in enumerate(plan_ids):
                plan = await self._visible_plan(conn, principal, plan_id)
                log = PlanAuditLog(plan_id, None)
                if entries is None or entries.after is None:
                    log.summary = (
                        await _view(conn, plan, now),
                        await store.audit_counts(conn, principal.org_id, plan_id, scope),
                    )
                if entries is not None and index >= start and not more:
                    after = None
                    if index == start and entries.after is not None:
                        after = (entries.after.at, entries.after.entry_id)
                    # One more than fits tells whether the trail goes on past this page.
                    found = await store.trail_after(
                        conn, principal.org_id, plan_id, scope, after=after, limit=remaining + 1
                    )
                    more = len(found) > remaining
                    log.entries = found[:remaining]
                    remaining -= len(log.entries)
                    if log.entries:
                        at, entry_id, _ = log.entries[-1]
                        last = TrailPosition(plan_id, at, entry_id)
                logs.append(log)
        return AuditPage(logs, last if more else None)

    async def plans_of_contexts(self, principal: Principal, contexts: list[str]) -> list[str]:
        found: list[str] = []
        async with self._db.read() as conn:
            for context in contexts:
                row = await store.campaign_plan(conn, principal.org_id, context)
                if row is not None and row not in found:
                    found.append(row)
        return found

    async def portfolio_members(self, principal: Principal, plan_id: str) -> list[str]:
        async with self._db.read() as conn:
            plan = await self._visible_plan(conn, principal, plan_id)
        portfolio = plan.document.get("portfolio") or {}
        return [str(m) for m in portfolio.get("member_plan_ids", [])]

    # --- helpers -----------------------------------------------------------------------------

    async def _visible_plan(
        self, conn: Any, principal: Principal, plan_id: str
    ) -> store.StoredPlan:
        plan = await store.get_plan(conn, principal.org_id, plan_id)
        if plan is None or not (principal.is_admin or plan.owner_id == principal.principal_id):
            raise _plan_not_found(plan_id)
        return plan

    async def _active_plan(self, conn: Any, principal: Principal, plan_id: str) -> store.StoredPlan:
        plan = await store.lock_plan(conn, principal.org_id, plan_id)
        if plan is None or plan.owner_id != principal.principal_id:
            raise _plan_not_found(plan_id)
        if plan.status != PlanStatus.ACTIVE:
            state = (
                "suspended pending human review"
                if plan.status == PlanStatus.SUSPENDED
                else "completed"
            )
            raise ReckonError(
                Reason.CAMPAIGN_SUSPENDED,
                f"plan {plan_id} is {state}; outcome reporting and checks are blocked",
                {"plan_id": plan_id},
                precondition=("PLAN_STATUS", plan_id),
            )
        return plan

    async def _changed(self, org_id: str, plan_id: str, kind: str) -> None:
        await self._notifier.publish(plan_topic(org_id, plan_id), kind)


def plan_topic(org_id: str, plan_id: str) -> str:
    return f"plan:{org_id}:{plan_id}"


async def _replay(
    conn: Any, principal: Principal, rpc: str, key: str, request_hash: str
) -> bytes | None:
    stored = await store.stored_response(conn, principal.principal_id, rpc, key)
    if stored is None:
        return None
    if stored[0] != request_hash:
        raise ReckonError(
            Reason.IDEMPOTENCY_CONFLICT,
            "idempotency_key was already used with a different request",
            {"idempotency_key": key[:64]},
        )
    return stored[1]


async def _view(conn: Any, plan: store.StoredPlan, now: datetime) -> PlanView:
    return PlanView(
        plan,
        await store.plan_campaigns(conn, plan.org_id, plan.plan_id),
        await store.reservations(conn, plan.org_id, plan.plan_id, now),
        await store.spend_by_campaign(conn, plan.org_id, plan.plan_id),
        await store.check_counts(conn, plan.org_id, plan.plan_id),
    )


def _action_of(check: store.StoredCheck) -> Action:
    """The action a stored check judged (stored in its request document)."""
    return action_from_document(check.request.get("action", {}))


def action_document(action: Action) -> dict[str, Any]:
    return {
        "amount_micros": action.amount_micros,
        "packages": [
            {
                "package_id": p.package_id,
                "budget_micros": p.budget_micros,
                "countries": list(p.countries),
            }
            for p in action.packages
        ],
        "countries": list(action.countries),
        "channels": list(action.channels),
        "flight_start": action.flight_start.isoformat() if action.flight_start else None,
        "flight_end": action.flight_end.isoformat() if action.flight_end else None,
        "seller": action.seller,
    }


def action_from_document(document: Mapping[str, Any]) -> Action:
    def moment(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return Action(
        amount_micros=int(document.get("amount_micros", 0)),
        packages=tuple(
            Package(p["package_id"], p["budget_micros"], tuple(p["countries"]))
            for p in document.get("packages", [])
        ),
        countries=tuple(document.get("countries", [])),
        channels=tuple(document.get("channels", [])),
        flight_start=moment(document.get("flight_start")),
        flight_end=moment(document.get("flight_end")),
        seller=document.get("seller"),
    )


def _verdict_document(verdict: Verdict) -> dict[str, Any]:
    return {
        "findings": [f.document() for f in verdict.findings],
        "explanation": verdict.explanation,
        "categories_evaluated": list(verdict.categories_evaluated),
    }


def _same_currency(currency: str, terms: PlanTerms, field: str) -> None:
    if currency and currency != terms.currency:
        raise invalid(
            Reason.INVALID_REQUEST,
            [FieldViolation(field, f"must be the plan's currency {terms.currency}")],
        )


def _plan_not_found(plan_id: str) -> ReckonError:
    return not_found(Reason.PLAN_NOT_FOUND, "plan", plan_id, "plan_id")


def _campaign_not_found(plan_id: str, context: str) -> ReckonError:
    return ReckonError(
        Reason.CAMPAIGN_NOT_FOUND,
        f"no campaign with this governance_context in plan {plan_id!r}",
        {"plan_id": plan_id},
        resource=Resource("campaign", context[:64]),
    )

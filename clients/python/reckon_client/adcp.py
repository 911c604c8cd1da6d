"""AdCP 3.0 governance task JSON <-> Reckon messages.

Requests: `sync_plans`, `check_governance`, `report_plan_outcome` and `get_plan_audit_logs`
arguments (AdCP JSON: amounts in currency units, lowercase enum strings, ISO 8601 times)
become request messages. Responses become AdCP JSON. Amounts convert exactly through Decimal;
a number that is not a whole number of micros is refused rather than rounded.
`get_plan_audit_logs` calls the server itself: AdCP's one document is several pages here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from reckon.v1 import governance_service_pb2 as pb
from reckon.v1 import types_pb2
from reckon_client.money import from_micros, to_micros

if TYPE_CHECKING:
    from reckon.v1.governance_service_pb2_grpc import GovernanceServiceAsyncStub

Json = dict[str, Any]


# --- shared -----------------------------------------------------------------------------------


def _micros(value: Any) -> int:
    """Currency units from JSON (int, float or numeric string) as exact micros."""
    if isinstance(value, bool):
        raise ValueError("an amount cannot be a boolean")
    return to_micros(repr(value) if isinstance(value, float) else value)


def _units(micros: int) -> int | float:
    amount = from_micros(micros)
    return int(amount) if amount == amount.to_integral_value() else float(amount)


def _enum(enum: Any, prefix: str, name: str) -> Any:
    """The number of an AdCP lowercase enum string (typed as the proto enum it belongs to)."""
    return enum.Value(prefix + name.upper())


def _name(enum: Any, prefix: str, number: int) -> str:
    label: str = enum.Name(number)
    return label.removeprefix(prefix).lower()


def _time(text: str) -> timestamp_pb2.Timestamp:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return stamp


def _iso(stamp: timestamp_pb2.Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _struct(document: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if document is None:
        return None
    message = struct_pb2.Struct()
    message.update(dict(document))
    return message


def _structs(documents: Sequence[Mapping[str, Any]]) -> list[struct_pb2.Struct]:
    out = []
    for document in documents:
        message = struct_pb2.Struct()
        message.update(dict(document))
        out.append(message)
    return out


def _dict(message: struct_pb2.Struct) -> Json:
    return json_format.MessageToDict(message)


def _channels(names: Sequence[str]) -> list[Any]:
    return [_enum(types_pb2.Channel, "CHANNEL_", n) for n in names]


def _channel_names(numbers: Sequence[int]) -> list[str]:
    return [_name(types_pb2.Channel, "CHANNEL_", n) for n in numbers]


def _purchase_type(name: str | None) -> Any:
    return _enum(types_pb2.PurchaseType, "PURCHASE_TYPE_", name) if name else 0


def _finding(finding: types_pb2.Finding) -> Json:
    out: Json = {
        "category_id": finding.category_id,
        "severity": _name(types_pb2.Severity, "SEVERITY_", finding.severity),
        "explanation": finding.explanation,
    }
    if finding.HasField("details"):
        out["details"] = _dict(finding.details)
    if finding.policy_id:
        out["policy_id"] = finding.policy_id
    if finding.source_plan_id:
        out["source_plan_id"] = finding.source_plan_id
    if finding.HasField("confidence"):
        out["confidence"] = finding.confidence
    if finding.uncertainty_reason:
        out["uncertainty_reason"] = finding.uncertainty_reason
    return out


def _echo(out: Json, response: Message) -> Json:
    for name in ("context", "ext"):
        if response.HasField(name):
            out[name] = _dict(getattr(response, name))
    return out


def _planned_delivery(doc: Mapping[str, Any]) -> pb.PlannedDelivery:
    geo = doc.get("geo") or {}
    planned = pb.PlannedDelivery(
        geo=pb.GeoScope(countries=geo.get("countries", []), regions=geo.get("regions", [])),
        channels=_channels(doc.get("channels", [])),
        frequency_cap=_struct(doc.get("frequency_cap")),
        audience_summary=doc.get("audience_summary", ""),
        audience_targeting=_structs(doc.get("audience_targeting", [])),
        currency=doc.get("currency", ""),
        enforced_policies=doc.get("enforced_policies", []),
        ext=_struct(doc.get("ext")),
    )
    if "start_time" in doc:
        planned.start_time.CopyFrom(_time(doc["start_time"]))
    if "end_time" in doc:
        planned.end_time.CopyFrom(_time(doc["end_time"]))
    if "total_budget" in doc:
        planned.total_budget_micros = _micros(doc["total_budget"])
    return planned


def _period(doc: Mapping[str, Any]) -> types_pb2.ReportingPeriod:
    return types_pb2.ReportingPeriod(start=_time(doc["start"]), end=_time(doc["end"]))


# --- sync_plans -------------------------------------------------------------------------------


def sync_plans_request(arguments: Mapping[str, Any]) -> pb.SyncPlansRequest:
    return pb.SyncPlansRequest(
        idempotency_key=arguments["idempotency_key"],
        plans=[_plan(p) for p in arguments["plans"]],
        context=_struct(arguments.get("context")),
        ext=_struct(arguments.get("ext")),
    )


def _plan(doc: Mapping[str, Any]) -> pb.Plan:
    brand = doc["brand"]
    budget = doc["budget"]
    channels = doc.get("channels") or {}
    plan = pb.Plan(
        plan_id=doc["plan_id"],
        brand=pb.BrandRef(
            domain=brand["domain"],
            brand_id=brand.get("brand_id", ""),
            industries=brand.get("industries", []),
            data_subject_contestation=_struct(brand.get("data_subject_contestation")),
        ),
        objectives=doc.get("objectives", ""),
        budget=pb.Budget(
            total_micros=_micros(budget["total"]),
            currency=budget["currency"],
            reallocation_unlimited=bool(budget.get("reallocation_unlimited", False)),
            allocations=[
                pb.BudgetAllocation(
                    purchase_type=_purchase_type(kind),
                    amount_micros=_micros(a["amount"]) if "amount" in a else None,
                    max_pct=a.get("max_pct"),
                )
                for kind, a in (budget.get("allocations") or {}).items()
            ],
        ),
        channels=pb.ChannelConstraints(
            required=_channels(channels.get("required", [])),
            allowed=_channels(channels.get("allowed", [])),
            mix_targets=[
                pb.ChannelMixTarget(
                    channel=_enum(types_pb2.Channel, "CHANNEL_", name),
                    min_pct=t.get("min_pct"),
                    max_pct=t.get("max_pct"),
                )
                for name, t in (channels.get("mix_targets") or {}).items()
            ],
        ),
        flight=pb.Flight(start=_time(doc["flight"]["start"]), end=_time(doc["flight"]["end"])),
        countries=doc.get("countries", []),
        regions=doc.get("regions", []),
        policy_ids=doc.get("policy_ids", []),
        policy_categories=doc.get("policy_categories", []),
        audience=_struct(doc.get("audience")),
        restricted_attributes=doc.get("restricted_attributes", []),
        restricted_attributes_custom=doc.get("restricted_attributes_custom", []),
        min_audience_size=doc.get("min_audience_size", 0),
        human_review_required=bool(doc.get("human_review_required", False)),
        custom_policies=_structs(doc.get("custom_policies", [])),
        delegations=[
            pb.Delegation(
                agent_url=d["agent_url"],
                authority=_enum(pb.DelegationAuthority, "DELEGATION_AUTHORITY_", d["authority"]),
                budget_limit=pb.MoneyAmount(
                    amount_micros=_micros(d["budget_limit"]["amount"]),
                    currency=d["budget_limit"]["currency"],
                )
                if "budget_limit" in d
                else None,
                markets=d.get("markets", []),
                expires_at=_time(d["expires_at"]) if "expires_at" in d else None,
            )
            for d in doc.get("delegations", [])
        ],
        ext=_struct(doc.get("ext")),
    )
    if "per_seller_max_pct" in budget:
        plan.budget.per_seller_max_pct = budget["per_seller_max_pct"]
    if "reallocation_threshold" in budget:
        plan.budget.reallocation_threshold_micros = _micros(budget["reallocation_threshold"])
    if doc.get("approved_sellers") is not None:
        plan.approved_sellers.urls.extend(doc["approved_sellers"])
    if "portfolio" in doc:
        portfolio = doc["portfolio"]
        plan.portfolio.member_plan_ids.extend(portfolio["member_plan_ids"])
        plan.portfolio.shared_policy_ids.extend(portfolio.get("shared_policy_ids", []))
        plan.portfolio.shared_exclusions.extend(_structs(portfolio.get("shared_exclusions", [])))
        if "total_budget_cap" in portfolio:
            cap = portfolio["total_budget_cap"]
            plan.portfolio.total_budget_cap.amount_micros = _micros(cap["amount"])
            plan.portfolio.total_budget_cap.currency = cap["currency"]
    return plan


def sync_plans_response(response: pb.SyncPlansResponse) -> Json:
    out: Json = {
        "plans": [
            {
                "plan_id": p.plan_id,
                "status": _name(pb.PlanSyncStatus, "PLAN_SYNC_STATUS_", p.status),
                "version": p.version,
                "categories": [
                    {"category_id": c.category_id, "status": "active" if c.active else "inactive"}
                    for c in p.categories
                ],
                "resolved_policies": [
                    {
                        "policy_id": r.policy_id,
                        "source": _name(pb.PolicySource, "POLICY_SOURCE_", r.source),
                        "enforcement": r.enforcement,
                        "reason": r.reason,
                    }
                    for r in p.resolved_policies
                ],
            }
            for p in response.plans
        ]
    }
    if response.replayed:
        out["replayed"] = True
    return _echo(out, response)


# --- check_governance -------------------------------------------------------------------------


def check_governance_request(arguments: Mapping[str, Any]) -> pb.CheckGovernanceRequest:
    request = pb.CheckGovernanceRequest(
        plan_id=arguments["plan_id"],
        caller=arguments["caller"],
        purchase_type=_purchase_type(arguments.get("purchase_type")),
        tool=arguments.get("tool", ""),
        payload=_struct(arguments.get("payload")),
        governance_context=arguments.get("governance_context", ""),
        phase=_enum(pb.GovernancePhase, "GOVERNANCE_PHASE_", arguments.get("phase", "unspecified")),
        modification_summary=arguments.get("modification_summary", ""),
        invoice_recipient=_struct(arguments.get("invoice_recipient")),
        context=_struct(arguments.get("context")),
        ext=_struct(arguments.get("ext")),
    )
    if "planned_delivery" in arguments:
        request.planned_delivery.CopyFrom(_planned_delivery(arguments["planned_delivery"]))
    if "delivery_metrics" in arguments:
        m = arguments["delivery_metrics"]
        metrics = request.delivery_metrics
        metrics.reporting_period.CopyFrom(_period(m["reporting_period"]))
        for name in ("spend", "cumulative_spend"):
            if name in m:
                setattr(metrics, f"{name}_micros", _micros(m[name]))
        for name in ("impressions", "cumulative_impressions"):
            if name in m:
                setattr(metrics, name, m[name])
        metrics.geo_distribution.update(m.get("geo_distribution", {}))
        metrics.channel_distribution.update(m.get("channel_distribution", {}))
        if "pacing" in m:
            metrics.pacing = _enum(pb.Pacing, "PACING_", m["pacing"])
        if "audience_distribution" in m:
            metrics.audience_distribution.update(m["audience_distribution"])
    return request


def check_governance_response(response: pb.CheckGovernanceResponse) -> Json:
    out: Json = {
        "check_id": response.check_id,
        "status": _name(pb.GovernanceDecision, "GOVERNANCE_DECISION_", response.status),
        "plan_id": response.plan_id,
        "explanation": response.explanation,
        "categories_evaluated": list(response.categories_evaluated),
        "policies_evaluated": list(response.policies_evaluated),
        "mode": _name(pb.GovernanceMode, "GOVERNANCE_MODE_", response.mode),
        "governance_context": response.governance_context,
    }
    if response.findings:
        out["findings"] = [_finding(f) for f in response.findings]
    if response.conditions:
        out["conditions"] = [
            {
                "field": c.field,
                "reason": c.reason,
                **(
                    {"required_value": json_format.MessageToDict(c.required_value)}
                    if c.HasField("required_value")
                    else {}
                ),
            }
            for c in response.conditions
        ]
    if response.HasField("expires_at"):
        out["expires_at"] = _iso(response.expires_at)
    if response.HasField("next_check"):
        out["next_check"] = _iso(response.next_check)
    return _echo(out, response)


# --- report_plan_outcome ----------------------------------------------------------------------


def report_plan_outcome_request(arguments: Mapping[str, Any]) -> pb.ReportPlanOutcomeRequest:
    """AdCP 3.0 arguments (the seed's `seller_response.media_buy_id` is accepted for
    `seller_reference`)."""
    request = pb.ReportPlanOutcomeRequest(
        plan_id=arguments["plan_id"],
        check_id=arguments.get("check_id", ""),
        idempotency_key=arguments["idempotency_key"],
        purchase_type=_purchase_type(arguments.get("purchase_type")),
        outcome=_enum(pb.OutcomeType, "OUTCOME_TYPE_", arguments["outcome"]),
        governance_context=arguments.get("governance_context", ""),
        context=_struct(arguments.get("context")),
        ext=_struct(arguments.get("ext")),
    )
    if "seller_response" in arguments:
        seller = arguments["seller_response"]
        known = {
            "seller_reference",
            "media_buy_id",
            "committed_budget",
            "packages",
            "planned_delivery",
            "creative_deadline",
        }
        response = request.seller_response
        response.media_buy_id = seller.get("seller_reference") or seller.get("media_buy_id", "")
        if "committed_budget" in seller:
            response.committed_budget_micros = _micros(seller["committed_budget"])
        for package in seller.get("packages", []):
            extra = {
                k: v
                for k, v in package.items()
                if k not in ("package_id", "product_id", "budget", "targeting_overlay")
            }
            response.packages.append(
                pb.SellerPackage(
                    package_id=package.get("package_id", ""),
                    product_id=package.get("product_id", ""),
                    budget_micros=_micros(package["budget"]) if "budget" in package else None,
                    targeting_overlay=_struct(package.get("targeting_overlay")),
                    ext=_struct(extra) if extra else None,
                )
            )
        if "planned_delivery" in seller:
            response.planned_delivery.CopyFrom(_planned_delivery(seller["planned_delivery"]))
        if "creative_deadline" in seller:
            response.creative_deadline.CopyFrom(_time(seller["creative_deadline"]))
        extra = {k: v for k, v in seller.items() if k not in known}
        if extra:
            response.ext.update(extra)
    if "delivery" in arguments:
        delivery = arguments["delivery"]
        report = request.delivery
        report.media_buy_id = delivery.get("media_buy_id", "")
        report.reporting_period.CopyFrom(_period(delivery["reporting_period"]))
        report.impressions = delivery.get("impressions", 0)
        report.spend_micros = _micros(delivery.get("spend", 0))
        if "cpm" in delivery:
            report.cpm_micros = _micros(delivery["cpm"])
        for name in ("viewability_rate", "completion_rate"):
            if name in delivery:
                setattr(report, name, delivery[name])
        extra = {
            k: v
            for k, v in delivery.items()
            if k
            not in {
                "media_buy_id",
                "reporting_period",
                "impressions",
                "spend",
                "cpm",
                "viewability_rate",
                "completion_rate",
            }
        }
        if extra:
            report.ext.update(extra)
    if "error" in arguments:
        request.error.code = arguments["error"].get("code", "")
        request.error.message = arguments["error"].get("message", "")
    return request


def report_plan_outcome_response(response: pb.ReportPlanOutcomeResponse) -> Json:
    out: Json = {
        "outcome_id": response.outcome_id,
        "status": _name(types_pb2.PlanOutcomeStatus, "PLAN_OUTCOME_STATUS_", response.status),
    }
    if response.HasField("committed_budget_micros"):
        out["committed_budget"] = _units(response.committed_budget_micros)
    if response.findings:
        out["findings"] = [
            {
                k: v
                for k, v in _finding(f).items()
                if k in ("category_id", "severity", "explanation", "details")
            }
            for f in response.findings
        ]
    if response.HasField("plan_summary"):
        out["plan_summary"] = {
            "total_committed": _units(response.plan_summary.total_committed_micros),
            "budget_remaining": _units(response.plan_summary.budget_remaining_micros),
        }
    if response.replayed:
        out["replayed"] = True
    return _echo(out, response)


# --- get_plan_audit_logs ----------------------------------------------------------------------


def get_plan_audit_logs_request(arguments: Mapping[str, Any]) -> pb.GetPlanAuditLogsRequest:
    return pb.GetPlanAuditLogsRequest(
        plan_ids=arguments.get("plan_ids", []),
        portfolio_plan_ids=arguments.get("portfolio_plan_ids", []),
        governance_contexts=arguments.get("governance_contexts", []),
        purchase_types=[_purchase_type(t) for t in arguments.get("purchase_types", [])],
        include_entries=bool(arguments.get("include_entries", False)),
        context=_struct(arguments.get("context")),
        ext=_struct(arguments.get("ext")),
    )


async def get_plan_audit_logs(
    governance: GovernanceServiceAsyncStub,
    arguments: Mapping[str, Any],
    metadata: Sequence[tuple[str, str]] | None = None,
) -> Json:
    """get_plan_audit_logs as AdCP's one document. AdCP has no paging: this reads every page of
    entries and joins them into the first page's plans."""
    request = get_plan_audit_logs_request(arguments)
    request.page_size = 1000
    pages = [await governance.GetPlanAuditLogs(request, metadata=metadata)]
    while pages[-1].next_page_token:
        request.page_token = pages[-1].next_page_token
        pages.append(await governance.GetPlanAuditLogs(request, metadata=metadata))
    return get_plan_audit_logs_response(*pages)


def get_plan_audit_logs_response(
    first: pb.GetPlanAuditLogsResponse, *later: pb.GetPlanAuditLogsResponse
) -> Json:
    """AdCP JSON of a first page and of the `later` pages that followed it by next_page_token
    (they add entries only)."""
    later_entries: dict[str, list[pb.AuditEntry]] = {}
    for page in later:
        for log in page.plans:
            later_entries.setdefault(log.plan_id, []).extend(log.entries)
    plans = []
    for log in first.plans:
        summary = log.summary
        plan: Json = {
            "plan_id": log.plan_id,
            "plan_version": log.plan_version,
            "status": _name(types_pb2.PlanStatus, "PLAN_STATUS_", log.status),
            "budget": {
                "authorized": _units(log.budget.authorized_micros),
                "committed": _units(log.budget.committed_micros),
                "remaining": _units(log.budget.remaining_micros),
                "utilization_pct": log.budget.utilization_pct,
            },
            "channel_allocation": {
                _name(types_pb2.Channel, "CHANNEL_", c.channel): {
                    "committed": _units(c.committed_micros),
                    "pct": c.pct,
                }
                for c in log.channel_allocation
            },
            "summary": {
                "checks_performed": summary.checks_performed,
                "outcomes_reported": summary.outcomes_reported,
                "statuses": {
                    "approved": summary.statuses.approved,
                    "denied": summary.statuses.denied,
                    "conditions": summary.statuses.conditions,
                    "human_reviewed": summary.statuses.human_reviewed,
                },
                "findings_count": summary.findings_count,
                "escalations": [
                    {
                        "check_id": e.check_id,
                        "reason": e.reason,
                        **({"resolution": e.resolution} if e.resolution else {}),
                        **(
                            {"resolved_at": _iso(e.resolved_at)}
                            if e.HasField("resolved_at")
                            else {}
                        ),
                    }
                    for e in summary.escalations
                ],
            },
            "governed_actions": [
                {
                    "governance_context": a.governance_context,
                    "purchase_type": _name(
                        types_pb2.PurchaseType,
                        "PURCHASE_TYPE_",
                        a.purchase_type or types_pb2.PURCHASE_TYPE_MEDIA_BUY,
                    ),
                    "status": _name(types_pb2.PlanStatus, "PLAN_STATUS_", a.status),
                    "committed": _units(a.committed_micros),
                    "check_count": a.check_count,
                    **({"seller_reference": a.seller_reference} if a.seller_reference else {}),
                }
                for a in log.governed_actions
            ],
        }
        entries = [*log.entries, *later_entries.get(log.plan_id, [])]
        if entries:
            plan["entries"] = [_entry(e) for e in entries]
        plans.append(plan)
    return _echo({"plans": plans}, first)


def _entry(entry: pb.AuditEntry) -> Json:
    out: Json = {
        "id": entry.id,
        "type": _name(pb.AuditEntryType, "AUDIT_ENTRY_TYPE_", entry.type),
        "timestamp": _iso(entry.timestamp),
        "plan_id": entry.plan_id,
        "governance_context": entry.governance_context,
        "plan_hash": entry.plan_hash,
        "findings": [
            {
                k: v
                for k, v in _finding(f).items()
                if k in ("category_id", "policy_id", "severity", "explanation", "confidence")
            }
            for f in entry.findings
        ],
    }
    if entry.purchase_type:
        out["purchase_type"] = _name(types_pb2.PurchaseType, "PURCHASE_TYPE_", entry.purchase_type)
    if entry.type == pb.AUDIT_ENTRY_TYPE_CHECK:
        out.update(
            {
                "caller": entry.caller,
                "tool": entry.tool,
                "status": _name(pb.GovernanceDecision, "GOVERNANCE_DECISION_", entry.status),
                "check_type": _name(pb.CheckType, "CHECK_TYPE_", entry.check_type),
                "mode": _name(pb.GovernanceMode, "GOVERNANCE_MODE_", entry.mode),
                "explanation": entry.explanation,
                "categories_evaluated": list(entry.categories_evaluated),
                "policies_evaluated": list(entry.policies_evaluated),
            }
        )
    else:
        out["outcome"] = _name(pb.OutcomeType, "OUTCOME_TYPE_", entry.outcome)
        out["outcome_status"] = _name(
            types_pb2.PlanOutcomeStatus, "PLAN_OUTCOME_STATUS_", entry.outcome_status
        )
        if entry.HasField("committed_budget_micros"):
            out["committed_budget"] = _units(entry.committed_budget_micros)
    return out

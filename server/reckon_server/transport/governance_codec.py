"""Wire <-> domain for GovernanceService: every field rule with its exact path."""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from reckon.v1 import governance_service_pb2 as pb
from reckon.v1 import types_pb2
from reckon_server.domain.actions import (
    MAX_SELLER_CHARS,
    Action,
    Package,
    action_from_payload,
    countries_of,
)
from reckon_server.domain.documents import canonical_json, document_problem
from reckon_server.domain.findings import Finding
from reckon_server.domain.governance import Allocation, PlanTerms
from reckon_server.domain.money import MAX_AMOUNT_MICROS
from reckon_server.domain.pacing import DeliveryFigures
from reckon_server.errors import DocumentViolation, FieldViolation, Reason, invalid
from reckon_server.services.governance import (
    CheckRequest,
    CheckType,
    Outcome,
    OutcomeRequest,
    PlanSync,
    PlanView,
    action_document,
)
from reckon_server.transport.codec import (
    known_enum,
    struct_to_dict,
    to_timestamp,
    valid_timestamp,
)

_PLAN_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")
_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{16,255}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_REGION = re.compile(r"^[A-Z]{2}-[A-Z0-9]{1,3}$")
_CONTEXT = re.compile(r"^[\x20-\x7e]{1,4096}$")
MAX_PLANS = 100
HUMAN_REVIEW_CATEGORIES = frozenset(
    {"fair_housing", "fair_lending", "fair_employment", "pharmaceutical_advertising"}
)
"""Regulatory categories that AdCP requires human review for."""
MAX_TEXT = 16 * 1024

Violations = list[FieldViolation]


def channel_name(number: int) -> str:
    """`olv` for CHANNEL_OLV; ValueError for UNSPECIFIED or unknown numbers."""
    if number == types_pb2.CHANNEL_UNSPECIFIED:
        raise ValueError(number)
    return types_pb2.Channel.Name(number).removeprefix("CHANNEL_").lower()  # type: ignore[arg-type]


def _has(message: Message, name: str) -> bool:
    """HasField for a field chosen at run time."""
    return message.HasField(name)


def _amount(value: int, path: str, out: Violations) -> None:
    if not 0 <= value <= MAX_AMOUNT_MICROS:
        out.append(FieldViolation(path, f"must be 0..{MAX_AMOUNT_MICROS} micros"))


def _pct(value: float, path: str, out: Violations) -> None:
    if not (math.isfinite(value) and 0 <= value <= 100):
        out.append(FieldViolation(path, "must be a percentage in [0, 100]"))


def _rate(value: float, path: str, out: Violations) -> None:
    if not (math.isfinite(value) and 0 <= value <= 1):
        out.append(FieldViolation(path, "must be a rate in [0, 1]"))


def _time(
    message: Message, name: str, path: str, out: Violations, *, required: bool
) -> datetime | None:
    if not message.HasField(name):
        if required:
            out.append(FieldViolation(path, "required"))
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    if not valid_timestamp(stamp):
        out.append(FieldViolation(path, "is not a valid timestamp"))
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def _document(message: Message, name: str, path: str, out: Violations) -> dict[str, Any]:
    if not message.HasField(name):
        return {}
    value = struct_to_dict(getattr(message, name))
    problem = document_problem(value)
    if problem:
        out.append(DocumentViolation(path, problem))
    return value


def _documents(structs: Any, path: str, out: Violations) -> None:
    for i, struct in enumerate(structs):
        problem = document_problem(struct_to_dict(struct))
        if problem:
            out.append(DocumentViolation(f"{path}[{i}]", problem))


def _fail(out: Violations) -> None:
    """INVALID_BODY when only free-form documents are at fault, else INVALID_REQUEST."""
    if out:
        only_documents = all(isinstance(v, DocumentViolation) for v in out)
        raise invalid(Reason.INVALID_BODY if only_documents else Reason.INVALID_REQUEST, out)


def request_hash(request: Message) -> str:
    """Identifies a request's payload: the same request retried hashes equally; the
    idempotency key itself is left out."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("idempotency_key")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def idempotency_key(value: str, out: Violations) -> None:
    if not _IDEMPOTENCY_KEY.match(value):
        out.append(
            FieldViolation(
                "idempotency_key", "required: 16..255 characters of letters, digits, '_.:-'"
            )
        )


# --- plans ------------------------------------------------------------------------------------


def validate_sync(request: pb.SyncPlansRequest) -> list[PlanSync]:
    out: Violations = []
    idempotency_key(request.idempotency_key, out)
    if not 1 <= len(request.plans) <= MAX_PLANS:
        out.append(FieldViolation("plans", f"must hold 1..{MAX_PLANS} plans"))
    seen: set[str] = set()
    syncs = []
    for i, plan in enumerate(request.plans):
        if plan.plan_id in seen:
            out.append(FieldViolation(f"plans[{i}].plan_id", "appears twice in this request"))
        seen.add(plan.plan_id)
        syncs.append(_plan_sync(plan, f"plans[{i}]", out))
    _document(request, "context", "context", out)
    _document(request, "ext", "ext", out)
    _fail(out)
    return syncs


def _plan_sync(plan: pb.Plan, path: str, out: Violations) -> PlanSync:
    if not _PLAN_ID.match(plan.plan_id):
        out.append(
            FieldViolation(
                f"{path}.plan_id", "required: 1..255 characters of letters, digits, '_.:-'"
            )
        )
    if not plan.HasField("brand") or not plan.brand.domain:
        out.append(FieldViolation(f"{path}.brand.domain", "required"))
    elif plan.brand.HasField("data_subject_contestation"):
        _document(
            plan.brand, "data_subject_contestation", f"{path}.brand.data_subject_contestation", out
        )
    if len(plan.objectives.encode()) > MAX_TEXT:
        out.append(FieldViolation(f"{path}.objectives", f"at most {MAX_TEXT} bytes"))
    budget = plan.budget
    if not plan.HasField("budget"):
        out.append(FieldViolation(f"{path}.budget", "required"))
    else:
        _amount(budget.total_micros, f"{path}.budget.total_micros", out)
        if not _CURRENCY.match(budget.currency):
            out.append(
                FieldViolation(
                    f"{path}.budget.currency", "required: an ISO 4217 code (three capital letters)"
                )
            )
        if budget.HasField("per_seller_max_pct"):
            _pct(budget.per_seller_max_pct, f"{path}.budget.per_seller_max_pct", out)
        if budget.HasField("reallocation_threshold_micros"):
            _amount(
                budget.reallocation_threshold_micros,
                f"{path}.budget.reallocation_threshold_micros",
                out,
            )
            if budget.reallocation_unlimited:
                out.append(
                    FieldViolation(
                        f"{path}.budget.reallocation_unlimited",
                        "excludes reallocation_threshold_micros",
                    )
                )
        types_seen: set[int] = set()
        for j, allocation in enumerate(budget.allocations):
            where = f"{path}.budget.allocations[{j}]"
            if not known_enum(types_pb2.PurchaseType, allocation.purchase_type):
                out.append(
                    FieldViolation(f"{where}.purchase_type", "required: a known purchase type")
                )
            elif allocation.purchase_type in types_seen:
                out.append(FieldViolation(f"{where}.purchase_type", "appears twice"))
            types_seen.add(allocation.purchase_type)
            if allocation.HasField("amount_micros"):
                _amount(allocation.amount_micros, f"{where}.amount_micros", out)
            if allocation.HasField("max_pct"):
                _pct(allocation.max_pct, f"{where}.max_pct", out)
    for name in ("required", "allowed"):
        for j, channel in enumerate(getattr(plan.channels, name)):
            if not known_enum(types_pb2.Channel, channel):
                out.append(FieldViolation(f"{path}.channels.{name}[{j}]", "unknown channel"))
    for j, target in enumerate(plan.channels.mix_targets):
        if not known_enum(types_pb2.Channel, target.channel):
            out.append(
                FieldViolation(f"{path}.channels.mix_targets[{j}].channel", "unknown channel")
            )
        for name in ("min_pct", "max_pct"):
            if _has(target, name):
                _pct(getattr(target, name), f"{path}.channels.mix_targets[{j}].{name}", out)
    start = _time(plan.flight, "start", f"{path}.flight.start", out, required=True)
    end = _time(plan.flight, "end", f"{path}.flight.end", out, required=True)
    if start and end and end <= start:
        out.append(FieldViolation(f"{path}.flight.end", "must be after flight.start"))
    for j, country in enumerate(plan.countries):
        if not _COUNTRY.match(country):
            out.append(
                FieldViolation(f"{path}.countries[{j}]", "must be an ISO 3166-1 alpha-2 code")
            )
    for j, region in enumerate(plan.regions):
        if not _REGION.match(region):
            out.append(FieldViolation(f"{path}.regions[{j}]", "must be an ISO 3166-2 code"))
    needs_review = bool(set(plan.policy_categories) & HUMAN_REVIEW_CATEGORIES) or (
        "eu_ai_act_annex_iii" in plan.policy_ids
    )
    if needs_review and not plan.human_review_required:
        out.append(
            FieldViolation(
                f"{path}.human_review_required",
                "must be true for the plan's policy categories or policies",
            )
        )
    if plan.min_audience_size < 0:
        out.append(FieldViolation(f"{path}.min_audience_size", "must be >= 0"))
    for j, delegation in enumerate(plan.delegations):
        where = f"{path}.delegations[{j}]"
        if not delegation.agent_url:
            out.append(FieldViolation(f"{where}.agent_url", "required"))
        if not known_enum(pb.DelegationAuthority, delegation.authority):
            out.append(FieldViolation(f"{where}.authority", "required: a known authority"))
        if delegation.HasField("budget_limit"):
            _amount(
                delegation.budget_limit.amount_micros, f"{where}.budget_limit.amount_micros", out
            )
    if plan.portfolio.HasField("total_budget_cap"):
        _amount(
            plan.portfolio.total_budget_cap.amount_micros,
            f"{path}.portfolio.total_budget_cap.amount_micros",
            out,
        )
    _documents(plan.portfolio.shared_exclusions, f"{path}.portfolio.shared_exclusions", out)
    _documents(plan.custom_policies, f"{path}.custom_policies", out)
    _document(plan, "audience", f"{path}.audience", out)
    _document(plan, "ext", f"{path}.ext", out)
    document = json_format.MessageToDict(plan, preserving_proto_field_name=True)
    # AdCP's plan_hash: base64url, unpadded, of the SHA-256 of the canonical plan JSON.
    digest = hashlib.sha256(canonical_json(document).encode()).digest()
    plan_hash = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    terms = terms_from_plan(plan) if not out else None
    return PlanSync(terms, document, plan_hash)  # type: ignore[arg-type]


def terms_from_plan(plan: pb.Plan) -> PlanTerms:
    """The terms of a valid plan."""
    budget = plan.budget
    return PlanTerms(
        plan_id=plan.plan_id,
        currency=budget.currency,
        total_micros=budget.total_micros,
        flight_start=plan.flight.start.ToDatetime(tzinfo=UTC),
        flight_end=plan.flight.end.ToDatetime(tzinfo=UTC),
        countries=frozenset(plan.countries),
        allowed_channels=frozenset(channel_name(c) for c in plan.channels.allowed),
        per_seller_max_pct=budget.per_seller_max_pct
        if budget.HasField("per_seller_max_pct")
        else None,
        allocations={
            a.purchase_type: Allocation(
                a.amount_micros if a.HasField("amount_micros") else None,
                a.max_pct if a.HasField("max_pct") else None,
            )
            for a in budget.allocations
        },
        approved_sellers=frozenset(plan.approved_sellers.urls)
        if plan.HasField("approved_sellers")
        else None,
    )


def plan_from_document(document: dict[str, Any]) -> pb.Plan:
    return json_format.ParseDict(document, pb.Plan())


def terms_from_document(document: dict[str, Any]) -> PlanTerms:
    return terms_from_plan(plan_from_document(document))


# --- checks -----------------------------------------------------------------------------------


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _planned_action(planned: pb.PlannedDelivery, path: str, seller: str, out: Violations) -> Action:
    channels = []
    for j, channel in enumerate(planned.channels):
        try:
            channels.append(channel_name(channel))
        except ValueError:
            out.append(FieldViolation(f"{path}.channels[{j}]", "unknown channel"))
    if planned.HasField("total_budget_micros"):
        _amount(planned.total_budget_micros, f"{path}.total_budget_micros", out)
    if planned.currency and not _CURRENCY.match(planned.currency):
        out.append(FieldViolation(f"{path}.currency", "must be an ISO 4217 code"))
    for name in ("frequency_cap", "ext"):
        _document(planned, name, f"{path}.{name}", out)
    _documents(planned.audience_targeting, f"{path}.audience_targeting", out)
    start = _time(planned, "start_time", f"{path}.start_time", out, required=False)
    end = _time(planned, "end_time", f"{path}.end_time", out, required=False)
    # A flight that ends before it starts would silently leave its campaign without pacing.
    if start and end and end <= start:
        out.append(FieldViolation(f"{path}.end_time", "must be after start_time"))
    return Action(
        amount_micros=planned.total_budget_micros,
        countries=tuple(planned.geo.countries),
        channels=tuple(channels),
        flight_start=start,
        flight_end=end,
        seller=seller or None,
    )


def _period(message: Message, path: str, out: Violations) -> tuple[datetime, datetime] | None:
    if not message.HasField("reporting_period"):
        out.append(FieldViolation(f"{path}.reporting_period", "required"))
        return None
    period = message.reporting_period  # type: ignore[attr-defined]
    start = _time(period, "start", f"{path}.reporting_period.start", out, required=True)
    end = _time(period, "end", f"{path}.reporting_period.end", out, required=True)
    if start and end and end <= start:
        out.append(FieldViolation(f"{path}.reporting_period.end", "must be after start"))
        return None
    return (start, end) if start and end else None


def validate_check(request: pb.CheckGovernanceRequest) -> CheckRequest:
    out: Violations = []
    if not request.plan_id:
        out.append(FieldViolation("plan_id", "required"))
    # An execution check's caller is the seller its campaign records.
    if not request.caller or len(request.caller) > MAX_SELLER_CHARS:
        out.append(
            FieldViolation(
                "caller",
                f"required: the URL of the calling agent, at most {MAX_SELLER_CHARS} characters",
            )
        )
    if not known_enum(types_pb2.PurchaseType, request.purchase_type, allow_zero=True):
        out.append(FieldViolation("purchase_type", "unknown purchase type"))
    if not known_enum(pb.GovernancePhase, request.phase, allow_zero=True):
        out.append(FieldViolation("phase", "unknown phase"))
    if request.governance_context and not _CONTEXT.match(request.governance_context):
        out.append(
            FieldViolation("governance_context", "must be 1..4096 printable ASCII characters")
        )
    if len(request.modification_summary.encode()) > MAX_TEXT:
        out.append(FieldViolation("modification_summary", f"at most {MAX_TEXT} bytes"))
    for name in ("invoice_recipient", "context", "ext"):
        _document(request, name, name, out)
    phase = request.phase or pb.GOVERNANCE_PHASE_PURCHASE
    payload = _document(request, "payload", "payload", out)
    delivery = None
    if request.HasField("planned_delivery"):
        check_type = CheckType.EXECUTION
        action = _planned_action(request.planned_delivery, "planned_delivery", request.caller, out)
    else:
        check_type = CheckType.INTENT
        action, problems = action_from_payload(payload, _parse_time)
        out.extend(problems)
    if phase == pb.GOVERNANCE_PHASE_DELIVERY:
        if not request.governance_context:
            out.append(FieldViolation("governance_context", "required in the delivery phase"))
        if not request.HasField("delivery_metrics"):
            out.append(FieldViolation("delivery_metrics", "required in the delivery phase"))
        else:
            delivery = _delivery_metrics(request.delivery_metrics, out)
    _fail(out)
    document = {
        "tool": request.tool,
        "phase": phase,
        "payload": payload,
        "action": action_document(action),
        "modification_summary": request.modification_summary,
    }
    return CheckRequest(
        plan_id=request.plan_id,
        caller=request.caller,
        purchase_type=request.purchase_type or types_pb2.PURCHASE_TYPE_MEDIA_BUY,
        phase=phase,
        governance_context=request.governance_context,
        check_type=check_type,
        action=action,
        document=document,
        delivery=delivery,
        currency=request.planned_delivery.currency,
    )


def _delivery_metrics(metrics: pb.DeliveryMetrics, out: Violations) -> DeliveryFigures | None:
    period = _period(metrics, "delivery_metrics", out)
    for name in ("spend_micros", "cumulative_spend_micros"):
        if _has(metrics, name):
            _amount(getattr(metrics, name), f"delivery_metrics.{name}", out)
    for name in ("impressions", "cumulative_impressions"):
        if _has(metrics, name) and getattr(metrics, name) < 0:
            out.append(FieldViolation(f"delivery_metrics.{name}", "must be >= 0"))
    for key, value in (*metrics.geo_distribution.items(), *metrics.channel_distribution.items()):
        _pct(value, f"delivery_metrics.distribution[{key!r}]", out)
    _document(metrics, "audience_distribution", "delivery_metrics.audience_distribution", out)
    if period is None:
        return None
    return DeliveryFigures(
        media_buy_id="",
        period_start=period[0],
        period_end=period[1],
        spend_micros=metrics.spend_micros,
        impressions=metrics.impressions,
        cumulative_spend_micros=metrics.cumulative_spend_micros
        if metrics.HasField("cumulative_spend_micros")
        else None,
    )


# --- outcomes ---------------------------------------------------------------------------------


def delivery_figures(
    report: types_pb2.DeliveryReport, path: str, out: Violations
) -> DeliveryFigures | None:
    period = _period(report, path, out)
    _amount(report.spend_micros, f"{path}.spend_micros", out)
    if report.impressions < 0:
        out.append(FieldViolation(f"{path}.impressions", "must be >= 0"))
    if report.HasField("cpm_micros"):
        _amount(report.cpm_micros, f"{path}.cpm_micros", out)
    for name in ("viewability_rate", "completion_rate"):
        if report.HasField(name):
            _rate(getattr(report, name), f"{path}.{name}", out)
    if len(report.media_buy_id) > 255:
        out.append(FieldViolation(f"{path}.media_buy_id", "at most 255 characters"))
    _document(report, "ext", f"{path}.ext", out)
    if period is None:
        return None
    return DeliveryFigures(
        media_buy_id=report.media_buy_id,
        period_start=period[0],
        period_end=period[1],
        spend_micros=report.spend_micros,
        impressions=report.impressions,
        cpm_micros=report.cpm_micros if report.HasField("cpm_micros") else None,
        viewability_rate=report.viewability_rate if report.HasField("viewability_rate") else None,
        completion_rate=report.completion_rate if report.HasField("completion_rate") else None,
    )


def _seller_action(seller: pb.SellerResponse, out: Violations) -> Action:
    packages = []
    for j, package in enumerate(seller.packages):
        budget = package.budget_micros if package.HasField("budget_micros") else None
        if budget is not None:
            _amount(budget, f"seller_response.packages[{j}].budget_micros", out)
        overlay = _document(
            package, "targeting_overlay", f"seller_response.packages[{j}].targeting_overlay", out
        )
        _document(package, "ext", f"seller_response.packages[{j}].ext", out)
        packages.append(Package(package.package_id, budget, countries_of(overlay)))
    if seller.HasField("committed_budget_micros"):
        _amount(seller.committed_budget_micros, "seller_response.committed_budget_micros", out)
        amount = seller.committed_budget_micros
    else:
        amount = sum(p.budget_micros or 0 for p in packages)
        if amount > MAX_AMOUNT_MICROS:
            out.append(
                FieldViolation(
                    "seller_response.packages",
                    f"budget_micros total more than {MAX_AMOUNT_MICROS} micros",
                )
            )
    planned = _planned_action(seller.planned_delivery, "seller_response.planned_delivery", "", out)
    _document(seller, "ext", "seller_response.ext", out)
    if len(seller.media_buy_id) > 255:
        out.append(FieldViolation("seller_response.media_buy_id", "at most 255 characters"))
    return Action(
        amount_micros=amount,
        packages=tuple(packages),
        countries=planned.countries,
        channels=planned.channels,
        flight_start=planned.flight_start,
        flight_end=planned.flight_end,
    )


def validate_outcome(request: pb.ReportPlanOutcomeRequest) -> OutcomeRequest:
    out: Violations = []
    if not request.plan_id:
        out.append(FieldViolation("plan_id", "required"))
    idempotency_key(request.idempotency_key, out)
    if not known_enum(types_pb2.PurchaseType, request.purchase_type, allow_zero=True):
        out.append(FieldViolation("purchase_type", "unknown purchase type"))
    if request.governance_context and not _CONTEXT.match(request.governance_context):
        out.append(
            FieldViolation("governance_context", "must be 1..4096 printable ASCII characters")
        )
    for name in ("context", "ext"):
        _document(request, name, name, out)
    seller = delivery = None
    outcome = request.outcome
    if outcome in (Outcome.COMPLETED, Outcome.FAILED) and not request.check_id:
        out.append(FieldViolation("check_id", "required for COMPLETED and FAILED outcomes"))
    if outcome == Outcome.COMPLETED:
        if not request.HasField("seller_response"):
            out.append(FieldViolation("seller_response", "required for COMPLETED outcomes"))
        seller = _seller_action(request.seller_response, out)
    elif outcome == Outcome.FAILED:
        if not (request.error.code or request.error.message):
            out.append(FieldViolation("error", "required for FAILED outcomes"))
    elif outcome == Outcome.DELIVERY:
        if not request.HasField("delivery"):
            out.append(FieldViolation("delivery", "required for DELIVERY outcomes"))
        else:
            delivery = delivery_figures(request.delivery, "delivery", out)
            if not request.delivery.media_buy_id and not request.governance_context:
                out.append(
                    FieldViolation(
                        "delivery.media_buy_id",
                        "required unless governance_context names the campaign",
                    )
                )
    else:
        out.append(FieldViolation("outcome", "required: COMPLETED, FAILED or DELIVERY"))
    _fail(out)
    return OutcomeRequest(
        plan_id=request.plan_id,
        check_id=request.check_id,
        idempotency_key=request.idempotency_key,
        request_hash=request_hash(request),
        purchase_type=request.purchase_type or types_pb2.PURCHASE_TYPE_MEDIA_BUY,
        outcome=outcome,
        governance_context=request.governance_context,
        seller=seller,
        media_buy_id=request.seller_response.media_buy_id,
        delivery=delivery,
        currency=request.seller_response.planned_delivery.currency,
    )


# --- encoders ---------------------------------------------------------------------------------


def encode_finding(finding: Finding) -> types_pb2.Finding:
    return encode_stored_finding(finding.document())


def encode_stored_finding(
    document: Mapping[str, Any], into: types_pb2.Finding | None = None
) -> types_pb2.Finding:
    """The message of a finding as stored in a response document, filled into `into` when
    given (acks fill their results in place, which costs a fraction of building and copying)."""
    message = types_pb2.Finding() if into is None else into
    message.category_id = document["category_id"]
    message.severity = document["severity"]
    message.explanation = document["explanation"]
    details = message.details
    # Present even when empty: every finding carries its details object.
    details.SetInParent()
    fields = details.fields
    for key, value in (document.get("details") or {}).items():
        # Text and numbers set directly, as `Struct.update` would set them: it converts every
        # value in Python, on a path that runs for every finding of every delivery ack.
        kind = type(value)
        if kind is str:
            fields[key].string_value = value
        elif kind is int or kind is float:
            fields[key].number_value = value
        else:
            details[key] = value
    return message


def encode_plan_state(view: PlanView, terms: PlanTerms) -> types_pb2.PlanState:
    plan = view.plan
    reserved = view.reserved_micros
    suspended = plan.status == 2
    by_type: dict[int, list[int]] = {}
    for c in view.campaigns:
        totals = by_type.setdefault(c.purchase_type, [0, 0, 0])
        totals[0] += c.committed_micros
        totals[1] += view.reserved.get(c.governance_context, 0)
        totals[2] += view.spend.get(c.governance_context, 0)
    for purchase_type in terms.allocations:
        by_type.setdefault(purchase_type, [0, 0, 0])
    return types_pb2.PlanState(
        plan_id=plan.plan_id,
        status=plan.status,  # type: ignore[arg-type]
        version=plan.version,
        currency=plan.currency,
        authorized_micros=plan.total_micros,
        committed_micros=plan.committed_micros,
        reserved_micros=reserved,
        remaining_micros=plan.total_micros - plan.committed_micros,
        available_micros=plan.total_micros - plan.committed_micros - reserved,
        spend_micros=view.spend_micros,
        utilization_pct=100 * plan.committed_micros / plan.total_micros
        if plan.total_micros
        else 0.0,
        campaigns=[
            types_pb2.CampaignState(
                governance_context=c.governance_context,
                purchase_type=c.purchase_type,  # type: ignore[arg-type]
                status=2 if suspended else c.status,  # type: ignore[arg-type]
                media_buy_id=c.media_buy_id or "",
                committed_micros=c.committed_micros,
                reserved_micros=view.reserved.get(c.governance_context, 0),
                spend_micros=view.spend.get(c.governance_context, 0),
                check_count=view.check_counts.get(c.governance_context, 0),
            )
            for c in view.campaigns
        ],
        purchase_types=[
            types_pb2.PurchaseTypeState(
                purchase_type=t,  # type: ignore[arg-type]
                allocation_micros=terms.allocations[t].amount_micros
                if t in terms.allocations and terms.allocations[t].amount_micros is not None
                else None,
                committed_micros=v[0],
                reserved_micros=v[1],
                spend_micros=v[2],
            )
            for t, v in sorted(by_type.items())
        ],
        updated_at=to_timestamp(plan.updated_at),
    )

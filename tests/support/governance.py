"""Builders for governance requests in the seed's terms (amounts given in currency units)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from reckon.v1 import governance_service_pb2 as pb
from reckon.v1 import types_pb2
from tests.support.api import RunningServer, bearer

M = 1_000_000  # micros per currency unit


def ts(text: str) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC))
    return stamp


def struct(document: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(document)
    return message


def assert_seed_pacing_finding(finding: types_pb2.Finding) -> None:
    """The seed's delivery anomaly: 18,750 spent in the first week of a 150,000, 13-week
    flight."""
    assert (finding.category_id, finding.severity) == (
        "budget_authority",
        types_pb2.SEVERITY_WARNING,
    )
    assert finding.explanation == (
        "Spend is pacing 62% above plan. At current rate, budget will be exhausted 5 weeks early."
    )
    assert json_format.MessageToDict(finding.details) == {
        "planned_weekly_spend": 11538,
        "actual_weekly_spend": 18750,
        "overpace_pct": 62,
        "projected_exhaustion": "2026-05-10T00:00:00Z",
    }


def key() -> str:
    return "idem-" + uuid.uuid4().hex


def plan(plan_id: str, total: int = 500_000, **overrides: Any) -> pb.Plan:
    message = pb.Plan(
        plan_id=plan_id,
        brand=pb.BrandRef(domain="acme.example"),
        objectives="Q1 launch awareness",
        budget=pb.Budget(total_micros=total * M, currency="USD"),
        flight=pb.Flight(start=ts("2026-01-01T00:00:00Z"), end=ts("2026-12-31T00:00:00Z")),
        countries=["US", "CA"],
        channels=pb.ChannelConstraints(allowed=[types_pb2.CHANNEL_OLV, types_pb2.CHANNEL_CTV]),
    )
    for name, value in overrides.items():
        field = getattr(message, name)
        if hasattr(field, "CopyFrom"):
            field.CopyFrom(value)
        elif isinstance(value, list):
            del field[:]
            field.extend(value)
        else:
            setattr(message, name, value)
    return message


def seed_payload(budget: int = 150_000) -> dict[str, Any]:
    """The create_media_buy arguments behind the seed's check chk_xyz789."""
    return {
        "packages": [
            {
                "package_id": "pkg_001",
                "product_id": "premium_video_300k",
                "budget": budget,
                "targeting_overlay": {"geo": {"include": [{"type": "country", "code": "US"}]}},
            }
        ],
        "channels": ["olv"],
        "start_time": "2026-03-15T00:00:00Z",
        "end_time": "2026-06-15T00:00:00Z",
    }


def seed_seller_response(
    budget: int = 150_000, countries: tuple[str, ...] = ("US",), media_buy_id: str = "mb_seller_456"
) -> pb.SellerResponse:
    return pb.SellerResponse(
        media_buy_id=media_buy_id,
        packages=[
            pb.SellerPackage(
                package_id="pkg_001",
                product_id="premium_video_300k",
                budget_micros=budget * M,
                targeting_overlay=struct(
                    {
                        "geo": {"include": [{"type": "country", "code": c} for c in countries]},
                        "viewability": {"standard": "mrc", "threshold": 50},
                    }
                ),
            )
        ],
        planned_delivery=pb.PlannedDelivery(
            geo=pb.GeoScope(countries=list(countries)),
            channels=[types_pb2.CHANNEL_OLV],
            start_time=ts("2026-03-15T00:00:00Z"),
            end_time=ts("2026-06-15T00:00:00Z"),
            total_budget_micros=budget * M,
            currency="USD",
        ),
        creative_deadline=ts("2026-03-20T00:00:00Z"),
    )


class Buyer:
    """An orchestrator agent driving one server."""

    def __init__(self, api: RunningServer, agent_key: str) -> None:
        self.api = api
        self.key = agent_key
        self.stub = api.stubs.governance

    async def sync(self, *plans: pb.Plan, idempotency_key: str = "") -> pb.SyncPlansResponse:
        return await self.stub.SyncPlans(
            pb.SyncPlansRequest(idempotency_key=idempotency_key or key(), plans=list(plans)),
            metadata=bearer(self.key),
        )

    async def check(
        self, plan_id: str, payload: dict[str, Any] | None = None, **fields: Any
    ) -> pb.CheckGovernanceResponse:
        request = pb.CheckGovernanceRequest(
            plan_id=plan_id,
            caller="https://buyer.example/agent",
            tool="create_media_buy",
            **fields,
        )
        if payload is not None:
            request.payload.CopyFrom(struct(payload))
        return await self.stub.CheckGovernance(request, metadata=bearer(self.key))

    async def outcome(self, plan_id: str, **fields: Any) -> pb.ReportPlanOutcomeResponse:
        fields.setdefault("idempotency_key", key())
        return await self.stub.ReportPlanOutcome(
            pb.ReportPlanOutcomeRequest(plan_id=plan_id, **fields), metadata=bearer(self.key)
        )

    async def complete(
        self,
        plan_id: str,
        check: pb.CheckGovernanceResponse,
        seller: pb.SellerResponse,
        **fields: Any,
    ) -> pb.ReportPlanOutcomeResponse:
        return await self.outcome(
            plan_id,
            check_id=check.check_id,
            outcome=pb.OUTCOME_TYPE_COMPLETED,
            governance_context=check.governance_context,
            seller_response=seller,
            **fields,
        )

    async def commit(
        self, plan_id: str, amount: int, media_buy_id: str
    ) -> pb.ReportPlanOutcomeResponse:
        """A check for `amount` and its completion at that amount."""
        check = await self.check(plan_id, seed_payload(amount))
        assert check.status == pb.GOVERNANCE_DECISION_APPROVED, check
        return await self.complete(
            plan_id, check, seed_seller_response(amount, media_buy_id=media_buy_id)
        )

    async def deliver(
        self,
        plan_id: str,
        media_buy_id: str,
        start: str,
        end: str,
        spend_micros: int,
        impressions: int = 0,
        **extra: Any,
    ) -> pb.ReportPlanOutcomeResponse:
        return await self.outcome(
            plan_id,
            outcome=pb.OUTCOME_TYPE_DELIVERY,
            delivery=types_pb2.DeliveryReport(
                media_buy_id=media_buy_id,
                reporting_period=types_pb2.ReportingPeriod(start=ts(start), end=ts(end)),
                spend_micros=spend_micros,
                impressions=impressions,
                **extra,
            ),
        )

    async def state(self, plan_id: str) -> types_pb2.PlanState:
        response = await self.stub.GetPlan(
            pb.GetPlanRequest(plan_id=plan_id), metadata=bearer(self.key)
        )
        return response.state

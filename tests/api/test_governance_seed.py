"""The report_plan_outcome seed's four responses, reproduced as exact values, on SQLite and
PostgreSQL. A 500,000 USD plan has 275,000 committed by another campaign when check
chk_xyz789-equivalent (150,000 for pkg_001 in the US) is reported on."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from reckon.v1 import governance_service_pb2 as pb
from reckon.v1 import types_pb2
from tests.support.api import RunningServer
from tests.support.governance import (
    Buyer,
    M,
    assert_seed_pacing_finding,
    plan,
    seed_payload,
    seed_seller_response,
)

PLAN = "plan_q1_2026_launch"


@pytest.fixture
async def buyer(api: RunningServer) -> Buyer:
    orchestrator = Buyer(api, await api.register("orchestrator"))
    await orchestrator.sync(plan(PLAN, 500_000))
    await orchestrator.commit(PLAN, 275_000, "mb_earlier_campaign")
    return orchestrator


async def approved_seed_check(buyer: Buyer) -> pb.CheckGovernanceResponse:
    check = await buyer.check(PLAN, seed_payload())
    assert check.status == pb.GOVERNANCE_DECISION_APPROVED
    assert check.reserved_micros == 150_000 * M
    return check


async def test_accepted_commits_the_sellers_amount(buyer: Buyer) -> None:
    check = await approved_seed_check(buyer)
    response = await buyer.complete(PLAN, check, seed_seller_response())
    assert response.outcome_id.startswith("out_")
    assert response.status == types_pb2.PLAN_OUTCOME_STATUS_ACCEPTED
    assert response.committed_budget_micros == 150_000 * M
    assert not response.findings
    assert (
        response.plan_summary.total_committed_micros,
        response.plan_summary.budget_remaining_micros,
    ) == (425_000 * M, 75_000 * M)
    state = await buyer.state(PLAN)
    assert (state.committed_micros, state.reserved_micros, state.remaining_micros) == (
        425_000 * M,
        0,
        75_000 * M,
    )


async def test_seller_discrepancy_commits_the_actual_amount_with_findings(buyer: Buyer) -> None:
    check = await approved_seed_check(buyer)
    response = await buyer.complete(PLAN, check, seed_seller_response(120_000, ("US", "CA")))
    assert response.status == types_pb2.PLAN_OUTCOME_STATUS_FINDINGS
    assert response.committed_budget_micros == 120_000 * M
    [finding] = response.findings
    assert finding.category_id == "seller_verification"
    assert finding.severity == types_pb2.SEVERITY_WARNING
    assert finding.explanation == (
        "Seller reduced budget from $150,000 to $120,000 and added geo targeting for CA that "
        "was not requested."
    )
    assert json_format.MessageToDict(finding.details) == {
        "discrepancies": [
            {"field": "packages[0].budget", "requested": 150000, "received": 120000},
            {
                "field": "packages[0].targeting_overlay.geo.include",
                "requested": ["US"],
                "received": ["US", "CA"],
            },
        ]
    }
    assert (
        response.plan_summary.total_committed_micros,
        response.plan_summary.budget_remaining_micros,
    ) == (395_000 * M, 105_000 * M)


async def test_delivery_on_track_is_accepted(buyer: Buyer) -> None:
    check = await approved_seed_check(buyer)
    await buyer.complete(PLAN, check, seed_seller_response())
    # 150,000 over 13 weeks plans 11,538.46 a week.
    response = await buyer.deliver(
        PLAN,
        "mb_seller_456",
        "2026-03-15T00:00:00Z",
        "2026-03-22T00:00:00Z",
        11_538_460_000,
        769_230,
        cpm_micros=15 * M,
    )
    assert response.outcome_id.startswith("out_")
    assert response.status == types_pb2.PLAN_OUTCOME_STATUS_ACCEPTED
    assert not response.findings
    assert not response.HasField("committed_budget_micros")
    assert not response.HasField("plan_summary")


async def test_delivery_pacing_anomaly(buyer: Buyer) -> None:
    check = await approved_seed_check(buyer)
    await buyer.complete(PLAN, check, seed_seller_response())
    response = await buyer.deliver(
        PLAN,
        "mb_seller_456",
        "2026-03-15T00:00:00Z",
        "2026-03-22T00:00:00Z",
        18_750 * M,
        1_250_000,
        cpm_micros=15 * M,
        viewability_rate=0.72,
        completion_rate=0.65,
    )
    assert response.status == types_pb2.PLAN_OUTCOME_STATUS_FINDINGS
    [finding] = response.findings
    assert_seed_pacing_finding(finding)
    # Delivery never changes what is committed; spend is tracked.
    state = await buyer.state(PLAN)
    assert state.committed_micros == 425_000 * M
    assert state.spend_micros == 18_750 * M


async def test_failed_outcome_commits_nothing_and_releases_the_reservation(buyer: Buyer) -> None:
    check = await approved_seed_check(buyer)
    assert (await buyer.state(PLAN)).reserved_micros == 150_000 * M
    response = await buyer.outcome(
        PLAN,
        check_id=check.check_id,
        outcome=pb.OUTCOME_TYPE_FAILED,
        governance_context=check.governance_context,
        error=pb.SellerError(
            code="PRODUCT_UNAVAILABLE", message="Product premium_video_300k is no longer available."
        ),
    )
    assert response.status == types_pb2.PLAN_OUTCOME_STATUS_ACCEPTED
    assert response.HasField("committed_budget_micros")
    assert response.committed_budget_micros == 0
    assert (
        response.plan_summary.total_committed_micros,
        response.plan_summary.budget_remaining_micros,
    ) == (275_000 * M, 225_000 * M)
    state = await buyer.state(PLAN)
    assert (state.committed_micros, state.reserved_micros, state.available_micros) == (
        275_000 * M,
        0,
        225_000 * M,
    )

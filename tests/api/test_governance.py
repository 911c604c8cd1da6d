"""GovernanceService rules and every error reason, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc import aio

from reckon.v1 import admin_service_pb2, types_pb2
from reckon.v1 import governance_service_pb2 as pb
from reckon_server.domain.money import MAX_AMOUNT_MICROS, MAX_PLAN_TOTAL_MICROS
from tests.support.api import DecodedError, RunningServer, bearer, decode
from tests.support.governance import (
    Buyer,
    M,
    key,
    plan,
    seed_payload,
    seed_seller_response,
    ts,
)


async def refused(call: Awaitable[Any]) -> DecodedError:
    with pytest.raises(aio.AioRpcError) as raised:
        await call
    return decode(raised.value)


@pytest.fixture
async def buyer(api: RunningServer) -> Buyer:
    return Buyer(api, await api.register("orchestrator"))


# --- plans ----------------------------------------------------------------------------------


async def test_sync_versions_replays_and_conflicts(buyer: Buyer) -> None:
    idem = key()
    first = await buyer.sync(plan("p1"), plan("p2"), idempotency_key=idem)
    assert [(r.plan_id, r.version, r.status) for r in first.plans] == [
        ("p1", 1, pb.PLAN_SYNC_STATUS_ACTIVE),
        ("p2", 1, pb.PLAN_SYNC_STATUS_ACTIVE),
    ]
    assert not first.replayed
    replay = await buyer.sync(plan("p1"), plan("p2"), idempotency_key=idem)
    assert replay.replayed
    assert [r.version for r in replay.plans] == [1, 1]
    conflict = await refused(buyer.sync(plan("p1", 9), idempotency_key=idem))
    assert (conflict.code, conflict.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_CONFLICT",
    )
    unchanged = await buyer.sync(plan("p1"))
    assert unchanged.plans[0].version == 1
    changed = await buyer.sync(plan("p1", 600_000))
    assert changed.plans[0].version == 2
    got = await buyer.stub.GetPlan(pb.GetPlanRequest(plan_id="p1"), metadata=bearer(buyer.key))
    assert got.plan.budget.total_micros == 600_000 * M
    assert got.plan.brand.domain == "acme.example"
    assert (got.state.version, got.state.status) == (2, types_pb2.PLAN_STATUS_ACTIVE)


async def test_lowering_the_total_below_committed_is_refused(buyer: Buyer) -> None:
    await buyer.sync(plan("p", 500_000))
    await buyer.commit("p", 300_000, "mb_1")
    error = await refused(buyer.sync(plan("p", 299_999)))
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "BUDGET_BELOW_COMMITTED",
    )
    assert error.metadata["committed_micros"] == str(300_000 * M)
    assert "google.rpc.PreconditionFailure" in error.details
    assert (await buyer.sync(plan("p", 300_000))).plans[0].version == 2


INVALID_PLANS = [
    ("plan-id", {"objectives": "x" * 20_000}, "plans[0].objectives"),
    (
        "negative-total",
        {"budget": pb.Budget(total_micros=-1, currency="USD")},
        "plans[0].budget.total_micros",
    ),
    (
        "overflowing-total",
        {"budget": pb.Budget(total_micros=2**62, currency="USD")},
        "plans[0].budget.total_micros",
    ),
    ("currency", {"budget": pb.Budget(total_micros=1, currency="usd")}, "plans[0].budget.currency"),
    (
        "flight-backwards",
        {"flight": pb.Flight(start=ts("2026-06-01T00:00:00Z"), end=ts("2026-01-01T00:00:00Z"))},
        "plans[0].flight.end",
    ),
    ("no-flight", {"flight": pb.Flight()}, "plans[0].flight.start"),
    ("country", {"countries": ["usa"]}, "plans[0].countries[0]"),
    (
        "channel-number",
        {"channels": pb.ChannelConstraints(allowed=[999])},  # type: ignore[list-item]
        "plans[0].channels.allowed[0]",
    ),
    (
        "seller-pct",
        {"budget": pb.Budget(total_micros=1, currency="USD", per_seller_max_pct=math.nan)},
        "plans[0].budget.per_seller_max_pct",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "field"), [c[1:] for c in INVALID_PLANS], ids=[c[0] for c in INVALID_PLANS]
)
async def test_invalid_plans(buyer: Buyer, overrides: dict[str, Any], field: str) -> None:
    error = await refused(buyer.sync(plan("p", **overrides)))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert field in [f for f, _ in error.violations]


async def test_plans_are_invisible_to_other_principals(api: RunningServer, buyer: Buyer) -> None:
    await buyer.sync(plan("mine"))
    other = Buyer(api, await api.register("other-agent"))
    stranger = Buyer(api, await api.foreign_key("other-org", "agent"))
    for intruder in (other, stranger):
        for call in (
            intruder.stub.GetPlan(pb.GetPlanRequest(plan_id="mine"), metadata=bearer(intruder.key)),
            intruder.check("mine", seed_payload()),
        ):
            error = await refused(call)
            assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "PLAN_NOT_FOUND")
    # Plan ids are unique within an org: another principal of it cannot take this one over.
    taken = await refused(other.sync(plan("mine", 1)))
    assert taken.reason == "PLAN_NOT_FOUND"
    # Another org is another namespace.
    assert (await stranger.sync(plan("mine", 1))).plans[0].version == 1
    absent = await refused(buyer.check("nope", seed_payload()))
    assert absent.reason == "PLAN_NOT_FOUND"
    # An admin of the org reads it.
    admin = Buyer(api, api.admin_key)
    assert (await admin.state("mine")).plan_id == "mine"


# --- checks ---------------------------------------------------------------------------------


async def test_reservations_bound_concurrent_approvals(buyer: Buyer) -> None:
    await buyer.sync(plan("p", 500_000))
    first = await buyer.check("p", seed_payload(300_000))
    assert first.status == pb.GOVERNANCE_DECISION_APPROVED
    assert first.expires_at.seconds > 0
    too_much = await buyer.check("p", seed_payload(300_000))
    assert too_much.status == pb.GOVERNANCE_DECISION_CONDITIONS
    assert too_much.reserved_micros == 0
    [condition] = too_much.conditions
    assert (condition.field, condition.required_value.number_value) == ("total_budget", 200_000)
    fits = await buyer.check("p", seed_payload(200_000))
    assert fits.status == pb.GOVERNANCE_DECISION_APPROVED
    none_left = await buyer.check("p", seed_payload(1))
    assert none_left.status == pb.GOVERNANCE_DECISION_DENIED
    assert none_left.findings[0].severity == types_pb2.SEVERITY_CRITICAL
    state = await buyer.state("p")
    assert (state.reserved_micros, state.available_micros) == (500_000 * M, 0)
    # A later check of the same campaign replaces its reservation instead of adding to it:
    # its own 300k counts as free for it, so 350k does not fit and 250k does.
    bigger = await buyer.check(
        "p", seed_payload(350_000), governance_context=first.governance_context
    )
    assert bigger.status == pb.GOVERNANCE_DECISION_CONDITIONS
    again = await buyer.check(
        "p", seed_payload(250_000), governance_context=first.governance_context
    )
    assert again.status == pb.GOVERNANCE_DECISION_APPROVED
    assert (await buyer.state("p")).reserved_micros == 450_000 * M


async def test_reservations_end_when_checks_expire(database_url: str) -> None:
    # Long enough that a loaded machine still makes the second check before the first expires.
    ttl = 3.0
    api = await RunningServer.start(database_url, check_ttl_seconds=ttl)
    try:
        buyer = Buyer(api, await api.register("short-lived"))
        await buyer.sync(plan("p", 100_000))
        assert (await buyer.check("p", seed_payload(100_000))).status == (
            pb.GOVERNANCE_DECISION_APPROVED
        )
        assert (await buyer.check("p", seed_payload(1))).status == pb.GOVERNANCE_DECISION_DENIED
        await asyncio.sleep(ttl + 0.2)
        assert (await buyer.state("p")).reserved_micros == 0
        assert (await buyer.check("p", seed_payload(100_000))).status == (
            pb.GOVERNANCE_DECISION_APPROVED
        )
    finally:
        await api.close()


async def test_strategic_alignment_and_seller_approval(buyer: Buyer) -> None:
    approved = pb.SellerList(urls=["https://good-seller.example"])
    await buyer.sync(plan("p", approved_sellers=approved))
    outside = seed_payload()
    outside["packages"][0]["targeting_overlay"]["geo"]["include"].append(
        {"type": "country", "code": "FR"}
    )
    outside["channels"] = ["olv", "radio"]
    outside["end_time"] = "2027-02-01T00:00:00Z"
    check = await buyer.check("p", outside)
    assert check.status == pb.GOVERNANCE_DECISION_CONDITIONS
    assert {f.category_id for f in check.findings} == {"strategic_alignment"}
    assert {c.field for c in check.conditions} == {
        "targeting_overlay.geo.include",
        "channels",
        "end_time",
    }
    geo = next(c for c in check.conditions if c.field == "targeting_overlay.geo.include")
    assert json_format.MessageToDict(geo.required_value) == ["US"]

    unapproved = {**seed_payload(), "seller_agent_url": "https://shady.example"}
    denied = await buyer.check("p", unapproved)
    assert denied.status == pb.GOVERNANCE_DECISION_DENIED
    assert "not approved" in denied.explanation
    fine = await buyer.check(
        "p", {**seed_payload(), "seller_agent_url": "https://good-seller.example"}
    )
    assert fine.status == pb.GOVERNANCE_DECISION_APPROVED


async def test_allocation_and_per_seller_limits(buyer: Buyer) -> None:
    budget = pb.Budget(
        total_micros=1_000_000 * M,
        currency="USD",
        per_seller_max_pct=30,
        allocations=[
            pb.BudgetAllocation(
                purchase_type=types_pb2.PURCHASE_TYPE_MEDIA_BUY, amount_micros=500_000 * M
            )
        ],
    )
    await buyer.sync(plan("p", budget=budget))
    seller = {"seller_agent_url": "https://seller.example"}
    assert (await buyer.check("p", {**seed_payload(300_000), **seller})).status == (
        pb.GOVERNANCE_DECISION_APPROVED
    )
    per_seller = await buyer.check("p", {**seed_payload(100_000), **seller})
    assert per_seller.status == pb.GOVERNANCE_DECISION_CONDITIONS
    assert "one seller" in per_seller.explanation
    other = {"seller_agent_url": "https://other.example"}
    assert (await buyer.check("p", {**seed_payload(200_000), **other})).status == (
        pb.GOVERNANCE_DECISION_APPROVED
    )
    allocation = await buyer.check(
        "p", {**seed_payload(50_000), "seller_agent_url": "https://third.example"}
    )
    assert allocation.status == pb.GOVERNANCE_DECISION_CONDITIONS
    assert "allocation" in allocation.explanation


async def test_execution_check_verifies_the_seller_against_the_intent(buyer: Buyer) -> None:
    await buyer.sync(plan("p"))
    intent = await buyer.check("p", seed_payload())
    execution = await buyer.stub.CheckGovernance(
        pb.CheckGovernanceRequest(
            plan_id="p",
            caller="https://seller.example",
            governance_context=intent.governance_context,
            planned_delivery=seed_seller_response(160_000, ("US", "CA")).planned_delivery,
        ),
        metadata=bearer(buyer.key),
    )
    assert execution.governance_context == intent.governance_context
    assert "seller_verification" in execution.categories_evaluated
    verification = next(f for f in execution.findings if f.category_id == "seller_verification")
    assert "increased budget from $150,000 to $160,000" in verification.explanation


async def test_check_errors(buyer: Buyer, api: RunningServer) -> None:
    await buyer.sync(plan("p"))
    unknown_context = await refused(
        buyer.check("p", seed_payload(), governance_context="gc_doesnotexist")
    )
    assert (unknown_context.code, unknown_context.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "CAMPAIGN_NOT_FOUND",
    )
    bad_amount = await refused(buyer.check("p", seed_payload(-5)))
    assert bad_amount.reason == "INVALID_REQUEST"
    assert bad_amount.violations[0][0] == "payload.packages[0].budget"
    # Each package within the largest amount, their total past it.
    largest = seed_payload(MAX_AMOUNT_MICROS // M)
    largest["packages"] *= 2
    too_much = await refused(buyer.check("p", largest))
    assert too_much.violations == [
        ("payload.packages", "budgets total more than 100000000000 units")
    ]
    no_caller = await refused(
        buyer.stub.CheckGovernance(
            pb.CheckGovernanceRequest(plan_id="p"), metadata=bearer(buyer.key)
        )
    )
    caller_rule = "required: the URL of the calling agent, at most 1024 characters"
    assert ("caller", caller_rule) in no_caller.violations
    # The seller a campaign records is at most 1024 characters, from either source.
    long_url = "https://seller.example/" + "s" * 1024
    long_caller = await refused(
        buyer.stub.CheckGovernance(
            pb.CheckGovernanceRequest(
                plan_id="p",
                caller=long_url,
                planned_delivery=seed_seller_response().planned_delivery,
            ),
            metadata=bearer(buyer.key),
        )
    )
    assert long_caller.violations == [("caller", caller_rule)]
    long_seller = await refused(buyer.check("p", {**seed_payload(), "seller_agent_url": long_url}))
    assert long_seller.violations == [("payload.seller_agent_url", "at most 1024 characters")]
    # A flight must end after it starts, or its campaign would have no pacing.
    backwards = {**seed_payload(), "end_time": seed_payload()["start_time"]}
    assert (await refused(buyer.check("p", backwards))).violations == [
        ("payload.end_time", "must be after start_time")
    ]
    backwards_planned = seed_seller_response().planned_delivery
    backwards_planned.end_time.CopyFrom(ts("2026-03-01T00:00:00Z"))
    backwards_execution = await refused(
        buyer.stub.CheckGovernance(
            pb.CheckGovernanceRequest(
                plan_id="p", caller="https://s.example", planned_delivery=backwards_planned
            ),
            metadata=bearer(buyer.key),
        )
    )
    assert backwards_execution.violations == [
        ("planned_delivery.end_time", "must be after start_time")
    ]
    wrong_currency = seed_seller_response().planned_delivery
    wrong_currency.currency = "EUR"
    currency = await refused(
        buyer.stub.CheckGovernance(
            pb.CheckGovernanceRequest(
                plan_id="p", caller="https://s.example", planned_delivery=wrong_currency
            ),
            metadata=bearer(buyer.key),
        )
    )
    assert currency.violations[0][0] == "planned_delivery.currency"
    await api.stubs.admin.SetPlanStatus(
        admin_service_pb2.SetPlanStatusRequest(
            plan_id="p", status=types_pb2.PLAN_STATUS_SUSPENDED, reason="human review"
        ),
        metadata=bearer(api.admin_key),
    )
    suspended = await refused(buyer.check("p", seed_payload()))
    assert (suspended.code, suspended.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CAMPAIGN_SUSPENDED",
    )


# --- outcomes -------------------------------------------------------------------------------


async def test_settle_once_replay_and_conflicts(buyer: Buyer) -> None:
    await buyer.sync(plan("p"))
    check = await buyer.check("p", seed_payload())
    idem = key()
    first = await buyer.complete("p", check, seed_seller_response(), idempotency_key=idem)
    assert not first.replayed
    again = await buyer.complete("p", check, seed_seller_response(), idempotency_key=idem)
    assert again.replayed
    assert again.outcome_id == first.outcome_id
    assert again.plan_summary == first.plan_summary
    assert (await buyer.state("p")).committed_micros == 150_000 * M  # not twice
    conflict = await refused(
        buyer.complete("p", check, seed_seller_response(99_000), idempotency_key=idem)
    )
    assert (conflict.code, conflict.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_CONFLICT",
    )
    settled = await refused(buyer.complete("p", check, seed_seller_response(99_000)))
    assert (settled.code, settled.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "OUTCOME_ALREADY_SETTLED",
    )
    assert settled.metadata["outcome_id"] == first.outcome_id
    failed_after = await refused(
        buyer.outcome(
            "p",
            check_id=check.check_id,
            outcome=pb.OUTCOME_TYPE_FAILED,
            error=pb.SellerError(code="LATE"),
        )
    )
    assert failed_after.reason == "OUTCOME_ALREADY_SETTLED"


async def test_concurrent_retries_of_one_settlement_commit_once(buyer: Buyer) -> None:
    await buyer.sync(plan("p"))
    check = await buyer.check("p", seed_payload())
    idem = key()
    results = await asyncio.gather(
        *(
            buyer.complete("p", check, seed_seller_response(), idempotency_key=idem)
            for _ in range(12)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, pb.ReportPlanOutcomeResponse) for r in results), results
    assert len({r.outcome_id for r in results}) == 1  # type: ignore[union-attr]
    assert sum(not r.replayed for r in results) == 1  # type: ignore[union-attr]
    assert (await buyer.state("p")).committed_micros == 150_000 * M


async def test_overcommitting_seller_is_recorded_with_a_critical_finding(buyer: Buyer) -> None:
    await buyer.sync(plan("p", 100_000))
    check = await buyer.check("p", seed_payload(100_000))
    response = await buyer.complete("p", check, seed_seller_response(130_000))
    assert response.committed_budget_micros == 130_000 * M
    assert response.plan_summary.budget_remaining_micros == -30_000 * M
    categories = {(f.category_id, f.severity) for f in response.findings}
    assert ("budget_authority", types_pb2.SEVERITY_CRITICAL) in categories


async def test_auto_suspend_on_critical_findings(database_url: str) -> None:
    api = await RunningServer.start(database_url, suspend_on_critical=True)
    try:
        buyer = Buyer(api, await api.register("careless"))
        await buyer.sync(plan("p", 100_000))
        check = await buyer.check("p", seed_payload(100_000))
        await buyer.complete("p", check, seed_seller_response(130_000))
        assert (await buyer.state("p")).status == types_pb2.PLAN_STATUS_SUSPENDED
        blocked = await refused(buyer.check("p", seed_payload(1)))
        assert blocked.reason == "CAMPAIGN_SUSPENDED"
        resumed = await api.stubs.admin.SetPlanStatus(
            admin_service_pb2.SetPlanStatusRequest(
                plan_id="p", status=types_pb2.PLAN_STATUS_ACTIVE
            ),
            metadata=bearer(api.admin_key),
        )
        assert resumed.state.status == types_pb2.PLAN_STATUS_ACTIVE
    finally:
        await api.close()


async def test_delivery_periods_replace_and_overspend_is_critical(buyer: Buyer) -> None:
    await buyer.sync(plan("p"))
    await buyer.commit("p", 10_000, "mb_small")
    week = ("2026-03-15T00:00:00Z", "2026-03-22T00:00:00Z")
    await buyer.deliver("p", "mb_small", *week, 4_000 * M, 100_000)
    await buyer.deliver("p", "mb_small", *week, 6_000 * M, 150_000)  # the same period again
    assert (await buyer.state("p")).spend_micros == 6_000 * M
    over = await buyer.deliver(
        "p", "mb_small", "2026-03-22T00:00:00Z", "2026-03-29T00:00:00Z", 5_000 * M, 100_000
    )
    assert (await buyer.state("p")).spend_micros == 11_000 * M
    critical = [f for f in over.findings if f.severity == types_pb2.SEVERITY_CRITICAL]
    assert critical[0].category_id == "budget_authority"
    assert "exceeds the committed $10,000" in critical[0].explanation
    inconsistent = await buyer.deliver(
        "p", "mb_small", *week, 6_000 * M, 150_000, cpm_micros=100 * M
    )
    assert any("CPM" in f.explanation for f in inconsistent.findings)


async def test_plan_totals_stay_within_their_limit(buyer: Buyer) -> None:
    """Single amounts go up to MAX_AMOUNT_MICROS; what a plan commits, and what it delivers,
    stop at MAX_PLAN_TOTAL_MICROS, so that every sum fits int64. Past it, the request is
    refused and nothing of it is stored."""
    largest = MAX_AMOUNT_MICROS // M
    at_limit = MAX_PLAN_TOTAL_MICROS // MAX_AMOUNT_MICROS
    await buyer.sync(plan("p", largest))
    for n in range(at_limit + 1):
        check = await buyer.check("p", seed_payload(largest))
        completion = buyer.complete(
            "p", check, seed_seller_response(largest, media_buy_id=f"mb_{n}")
        )
        if n < at_limit:
            await completion
            continue
        past = await refused(completion)
        assert (past.code, past.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
        assert past.violations == [
            (
                "seller_response",
                f"would take the plan's committed budget past {MAX_PLAN_TOTAL_MICROS} micros",
            )
        ]
    assert (await buyer.state("p")).committed_micros == MAX_PLAN_TOTAL_MICROS

    def day(n: int) -> tuple[str, str]:
        return f"2026-03-{n:02d}T00:00:00Z", f"2026-03-{n + 1:02d}T00:00:00Z"

    for n in range(at_limit):
        await buyer.deliver("p", f"mb_{n}", *day(1), MAX_AMOUNT_MICROS)
    past = await refused(buyer.deliver("p", "mb_0", *day(2), 1))
    assert past.violations == [
        (
            "delivery.spend_micros",
            f"would take the plan's delivered spend past {MAX_PLAN_TOTAL_MICROS} micros",
        )
    ]
    # Re-reporting a period replaces its spend: lower, it makes room again.
    await buyer.deliver("p", "mb_0", *day(1), MAX_AMOUNT_MICROS - 1)
    await buyer.deliver("p", "mb_0", *day(2), 1)
    state = await buyer.state("p")
    assert (state.spend_micros, state.remaining_micros) == (
        MAX_PLAN_TOTAL_MICROS,
        MAX_AMOUNT_MICROS - MAX_PLAN_TOTAL_MICROS,
    )
    assert sum(c.spend_micros for c in state.campaigns) == MAX_PLAN_TOTAL_MICROS


INVALID_OUTCOMES: list[tuple[str, dict[str, Any], str]] = [
    ("short-key", {"idempotency_key": "short"}, "idempotency_key"),
    ("no-outcome", {"outcome": 0}, "outcome"),
    ("unknown-outcome", {"outcome": 77}, "outcome"),
    (
        "completed-without-check",
        {"outcome": pb.OUTCOME_TYPE_COMPLETED, "seller_response": pb.SellerResponse()},
        "check_id",
    ),
    ("failed-without-error", {"outcome": pb.OUTCOME_TYPE_FAILED, "check_id": "chk_x"}, "error"),
    (
        "negative-spend",
        {
            "delivery": types_pb2.DeliveryReport(
                media_buy_id="mb",
                spend_micros=-1,
                reporting_period=types_pb2.ReportingPeriod(
                    start=ts("2026-03-15T00:00:00Z"), end=ts("2026-03-22T00:00:00Z")
                ),
            )
        },
        "delivery.spend_micros",
    ),
    (
        "rate-above-one",
        {
            "delivery": types_pb2.DeliveryReport(
                media_buy_id="mb",
                viewability_rate=1.5,
                reporting_period=types_pb2.ReportingPeriod(
                    start=ts("2026-03-15T00:00:00Z"), end=ts("2026-03-22T00:00:00Z")
                ),
            )
        },
        "delivery.viewability_rate",
    ),
    (
        "nan-rate",
        {
            "delivery": types_pb2.DeliveryReport(
                media_buy_id="mb",
                completion_rate=math.nan,
                reporting_period=types_pb2.ReportingPeriod(
                    start=ts("2026-03-15T00:00:00Z"), end=ts("2026-03-22T00:00:00Z")
                ),
            )
        },
        "delivery.completion_rate",
    ),
    (
        "period-backwards",
        {
            "delivery": types_pb2.DeliveryReport(
                media_buy_id="mb",
                reporting_period=types_pb2.ReportingPeriod(
                    start=ts("2026-03-22T00:00:00Z"), end=ts("2026-03-22T00:00:00Z")
                ),
            )
        },
        "delivery.reporting_period.end",
    ),
    (
        "packages-past-the-largest-amount",
        {
            "outcome": pb.OUTCOME_TYPE_COMPLETED,
            "check_id": "chk_x",
            "seller_response": pb.SellerResponse(
                packages=[pb.SellerPackage(budget_micros=MAX_AMOUNT_MICROS)] * 2
            ),
        },
        "seller_response.packages",
    ),
    (
        "seller-flight-backwards",
        {
            "outcome": pb.OUTCOME_TYPE_COMPLETED,
            "check_id": "chk_x",
            "seller_response": pb.SellerResponse(
                planned_delivery=pb.PlannedDelivery(
                    start_time=ts("2026-06-15T00:00:00Z"), end_time=ts("2026-03-15T00:00:00Z")
                )
            ),
        },
        "seller_response.planned_delivery.end_time",
    ),
    (
        "overflow",
        {
            "outcome": pb.OUTCOME_TYPE_COMPLETED,
            "check_id": "chk_x",
            "seller_response": pb.SellerResponse(committed_budget_micros=2**63 - 1),
        },
        "seller_response.committed_budget_micros",
    ),
]


@pytest.mark.parametrize(
    ("fields", "field"), [c[1:] for c in INVALID_OUTCOMES], ids=[c[0] for c in INVALID_OUTCOMES]
)
async def test_invalid_outcomes_are_refused_before_the_plan_is_looked_up(
    buyer: Buyer, fields: dict[str, Any], field: str
) -> None:
    fields = {"outcome": pb.OUTCOME_TYPE_DELIVERY, **fields}
    error = await refused(buyer.outcome("no-such-plan", **fields))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert field in [f for f, _ in error.violations]


async def test_outcome_not_found_errors_in_order(buyer: Buyer, api: RunningServer) -> None:
    await buyer.sync(plan("p"))
    check = await buyer.check("p", seed_payload())
    missing_plan = await refused(
        buyer.outcome(
            "other",
            check_id="chk_x",
            outcome=pb.OUTCOME_TYPE_FAILED,
            error=pb.SellerError(code="X"),
        )
    )
    assert missing_plan.reason == "PLAN_NOT_FOUND"
    missing_check = await refused(
        buyer.outcome(
            "p", check_id="chk_nope", outcome=pb.OUTCOME_TYPE_FAILED, error=pb.SellerError(code="X")
        )
    )
    assert (missing_check.code, missing_check.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "CHECK_NOT_FOUND",
    )
    wrong_context = await refused(
        buyer.outcome(
            "p",
            check_id=check.check_id,
            outcome=pb.OUTCOME_TYPE_FAILED,
            governance_context="gc_other",
            error=pb.SellerError(code="X"),
        )
    )
    assert wrong_context.reason == "CAMPAIGN_NOT_FOUND"
    missing_buy = await refused(
        buyer.deliver("p", "mb_unknown", "2026-03-15T00:00:00Z", "2026-03-22T00:00:00Z", 1)
    )
    assert (missing_buy.code, missing_buy.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "MEDIA_BUY_NOT_FOUND",
    )
    await api.stubs.admin.SetPlanStatus(
        admin_service_pb2.SetPlanStatusRequest(plan_id="p", status=types_pb2.PLAN_STATUS_SUSPENDED),
        metadata=bearer(api.admin_key),
    )
    # Suspension is reported before the check lookup.
    suspended = await refused(
        buyer.outcome(
            "p", check_id="chk_nope", outcome=pb.OUTCOME_TYPE_FAILED, error=pb.SellerError(code="X")
        )
    )
    assert suspended.reason == "CAMPAIGN_SUSPENDED"


async def test_audit_logs_summarise_and_list_entries(buyer: Buyer) -> None:
    await buyer.sync(plan("p", 500_000))
    await buyer.commit("p", 200_000, "mb_a")
    check = await buyer.check("p", seed_payload(400_000))
    assert check.status == pb.GOVERNANCE_DECISION_CONDITIONS
    logs = await buyer.stub.GetPlanAuditLogs(
        pb.GetPlanAuditLogsRequest(plan_ids=["p"], include_entries=True), metadata=bearer(buyer.key)
    )
    [log] = logs.plans
    assert (log.plan_id, log.plan_version, log.status) == ("p", 1, types_pb2.PLAN_STATUS_ACTIVE)
    assert (
        log.budget.authorized_micros,
        log.budget.committed_micros,
        log.budget.remaining_micros,
        log.budget.utilization_pct,
    ) == (500_000 * M, 200_000 * M, 300_000 * M, 40.0)
    assert (log.summary.checks_performed, log.summary.outcomes_reported) == (2, 1)
    assert (log.summary.statuses.approved, log.summary.statuses.conditions) == (1, 1)
    assert log.summary.findings_count >= 1
    assert [e.type for e in log.entries] == [
        pb.AUDIT_ENTRY_TYPE_CHECK,
        pb.AUDIT_ENTRY_TYPE_OUTCOME,
        pb.AUDIT_ENTRY_TYPE_CHECK,
    ]
    assert log.entries[1].committed_budget_micros == 200_000 * M
    # Stored findings come back exactly as the check returned them.
    assert check.findings
    assert list(log.entries[2].findings) == list(check.findings)
    assert all(e.plan_hash for e in log.entries)
    assert [a.seller_reference for a in log.governed_actions if a.committed_micros] == ["mb_a"]
    assert [(c.channel, c.committed_micros) for c in log.channel_allocation] == [
        (types_pb2.CHANNEL_OLV, 200_000 * M)
    ]
    by_context = await buyer.stub.GetPlanAuditLogs(
        pb.GetPlanAuditLogsRequest(
            governance_contexts=[check.governance_context], include_entries=True
        ),
        metadata=bearer(buyer.key),
    )
    assert [e.id for e in by_context.plans[0].entries] == [check.check_id]


async def test_plan_id_rules(buyer: Buyer) -> None:
    error = await refused(buyer.sync(plan("has space")))
    assert "plans[0].plan_id" in [f for f, _ in error.violations]
    twice = await refused(buyer.sync(plan("dup"), plan("dup")))
    assert "plans[1].plan_id" in [f for f, _ in twice.violations]

"""Four server processes on one PostgreSQL database, hammering one plan with concurrent
checks and outcomes, retries on other replicas and duplicate idempotency keys. Afterwards the
books must balance: money is enforced by the database, not by any process's memory."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from grpc import aio

from reckon.v1 import admin_service_pb2, types_pb2
from reckon.v1 import governance_service_pb2 as pb
from reckon_client import DeliveryStreamer, Reckon
from reckon_server.storage.database import Database
from tests.support.api import Stubs, bearer, decode, new_secret
from tests.support.delivery import assert_tallies_count_the_trail
from tests.support.governance import (
    Buyer,
    M,
    key,
    plan,
    seed_payload,
    seed_seller_response,
    struct,
    ts,
)
from tests.support.postgres import PostgresServer
from tests.support.processes import ServerProcess, start_reckon
from tests.support.producer import minute_report

REPLICAS = 4
CAMPAIGNS = 160
TOTAL = 2_000_000


@pytest.fixture
async def cluster(postgres: PostgresServer) -> AsyncIterator[tuple[str, str, list[ServerProcess]]]:
    url = await postgres.create_database()
    admin = new_secret()
    servers = list(await asyncio.gather(*(start_reckon(url, admin) for _ in range(REPLICAS))))
    yield url, admin, servers
    await asyncio.gather(*(s.stop() for s in servers))


@pytest.mark.timeout(300)
async def test_books_balance_under_concurrent_replicas(
    cluster: tuple[str, str, list[ServerProcess]],
) -> None:
    url, admin, servers = cluster
    channels = [aio.insecure_channel(s.target) for s in servers]
    stubs = [Stubs.on(c) for c in channels]
    rng = random.Random(7)
    try:
        agent = (
            await stubs[0].admin.RegisterAgent(
                admin_service_pb2.RegisterAgentRequest(name="hammer"), metadata=bearer(admin)
            )
        ).api_key
        md = bearer(agent)
        await stubs[1].governance.SyncPlans(
            pb.SyncPlansRequest(idempotency_key=key(), plans=[plan("shared", TOTAL)]), metadata=md
        )

        acknowledged: dict[str, int] = {}  # outcome_id -> committed micros
        approved_checks: list[str] = []
        refusals: list[str] = []

        async def campaign(index: int) -> None:
            stub = stubs[index % REPLICAS].governance
            amount = rng.randrange(5_000, 40_000)
            check = await stub.CheckGovernance(
                pb.CheckGovernanceRequest(
                    plan_id="shared",
                    caller="https://buyer.example",
                    payload=struct(seed_payload(amount)),
                ),
                metadata=md,
            )
            if check.status != pb.GOVERNANCE_DECISION_APPROVED:
                return
            approved_checks.append(check.check_id)
            failed = index % 5 == 0
            request = pb.ReportPlanOutcomeRequest(
                plan_id="shared",
                check_id=check.check_id,
                idempotency_key=key(),
                governance_context=check.governance_context,
                outcome=pb.OUTCOME_TYPE_FAILED if failed else pb.OUTCOME_TYPE_COMPLETED,
                error=pb.SellerError(code="SOLD_OUT") if failed else None,
                seller_response=None
                if failed
                else seed_seller_response(amount, media_buy_id=f"mb_{index}"),
            )
            # The same report sent to three replicas at once (a client retrying on timeout).
            responses = await asyncio.gather(
                *(
                    stubs[(index + k) % REPLICAS].governance.ReportPlanOutcome(request, metadata=md)
                    for k in range(3)
                ),
                return_exceptions=True,
            )
            for response in responses:
                if isinstance(response, aio.AioRpcError):
                    refusals.append(decode(response).reason)
                else:
                    assert isinstance(response, pb.ReportPlanOutcomeResponse)
                    acknowledged[response.outcome_id] = response.committed_budget_micros
            # A second, different settlement of the same check must be refused.
            second = pb.ReportPlanOutcomeRequest()
            second.CopyFrom(request)
            second.idempotency_key = key()
            try:
                await stubs[(index + 1) % REPLICAS].governance.ReportPlanOutcome(
                    second, metadata=md
                )
            except aio.AioRpcError as err:
                refusals.append(decode(err).reason)
            else:
                raise AssertionError("a check was settled twice")

        await asyncio.gather(*(campaign(i) for i in range(CAMPAIGNS)))
    finally:
        await asyncio.gather(*(c.close() for c in channels))

    # Every acknowledged retry agreed on one outcome per check.
    assert set(refusals) <= {"OUTCOME_ALREADY_SETTLED"}, refusals
    assert len(acknowledged) == len(approved_checks)
    database = Database(url)
    try:
        async with database.read() as conn:
            stored = dict(
                (
                    await conn.execute(
                        sa.text(
                            "SELECT outcome_id, coalesce(committed_micros, 0) FROM plan_outcomes"
                        )
                    )
                ).all()
            )
            settled_twice = await conn.scalar(
                sa.text(
                    "SELECT count(*) FROM (SELECT check_id FROM plan_outcomes "
                    "WHERE check_id IS NOT NULL GROUP BY check_id HAVING count(*) > 1) AS d"
                )
            )
            committed = await conn.scalar(
                sa.text("SELECT committed_micros FROM plans WHERE plan_id = 'shared'")
            )
            campaign_sum = await conn.scalar(
                sa.text("SELECT coalesce(sum(committed_micros), 0) FROM campaigns")
            )
            # Approval within headroom, and sellers that commit what was approved, mean the
            # approved-and-completed amounts can never exceed the plan.
            approved_total = await conn.scalar(
                sa.text(
                    "SELECT coalesce(sum(amount_micros), 0) FROM governance_checks "
                    "WHERE decision = 1 AND settled_by IN "
                    "(SELECT outcome_id FROM plan_outcomes WHERE outcome = 1)"
                )
            )
    finally:
        await database.dispose()
    assert stored == acknowledged  # nothing acknowledged is missing, nothing extra
    assert settled_twice == 0
    assert committed == campaign_sum == sum(acknowledged.values())
    assert approved_total == committed
    assert committed <= TOTAL * M
    assert len(approved_checks) > CAMPAIGNS // 2  # the test exercised real approvals
    await assert_tallies_count_the_trail(url)


@pytest.mark.timeout(300)
async def test_streamed_and_unary_deliveries_of_the_same_campaigns_on_other_replicas(
    cluster: tuple[str, str, list[ServerProcess]],
) -> None:
    """A stream's transaction and unary outcomes take the same campaigns and tallies on
    PostgreSQL: none may wait on another in a cycle, and every outcome is tallied once."""
    url, admin, servers = cluster
    media_buys, streamed, unary = 8, 4_000, 160
    async with aio.insecure_channel(servers[0].target) as channel:
        agent = (
            await Stubs.on(channel).admin.RegisterAgent(
                admin_service_pb2.RegisterAgentRequest(name="mixed"), metadata=bearer(admin)
            )
        ).api_key
    async with Reckon(servers[0].target, agent) as reckon:
        buyer = Buyer.__new__(Buyer)
        buyer.key, buyer.stub = agent, reckon.governance
        await buyer.sync(plan("mixed", 10_000_000))
        for n in range(media_buys):
            await buyer.commit("mixed", 100_000, f"mb_{n}")
        acked: list[int] = []
        streamer = DeliveryStreamer(
            reckon.delivery, "mixed-1", batch_size=100, on_ack=lambda ack: acked.append(ack.seq)
        )

        async def stream() -> None:
            async with streamer:
                for n in range(streamed):
                    await streamer.add(minute_report("mixed", f"mb_{n % media_buys}", n))

        channels = [aio.insecure_channel(s.target) for s in servers[1:]]
        others = [Stubs.on(c).governance for c in channels]

        async def deliver(n: int) -> None:
            await others[n % len(others)].ReportPlanOutcome(
                pb.ReportPlanOutcomeRequest(
                    plan_id="mixed",
                    idempotency_key=key(),
                    outcome=pb.OUTCOME_TYPE_DELIVERY,
                    delivery=types_pb2.DeliveryReport(
                        media_buy_id=f"mb_{n % media_buys}",
                        reporting_period=types_pb2.ReportingPeriod(
                            start=ts(f"2026-04-{1 + n // media_buys:02d}T00:00:00Z"),
                            end=ts(f"2026-04-{2 + n // media_buys:02d}T00:00:00Z"),
                        ),
                        spend_micros=1_000,
                    ),
                ),
                metadata=bearer(agent),
            )

        try:
            await asyncio.gather(stream(), *(deliver(n) for n in range(unary)))
        finally:
            await asyncio.gather(*(c.close() for c in channels))
        summary = await reckon.governance.GetPlanAuditLogs(
            pb.GetPlanAuditLogsRequest(plan_ids=["mixed"])
        )
    assert acked == list(range(1, streamed // 100 + 1))
    assert summary.plans[0].summary.outcomes_reported == media_buys + streamed + unary
    await assert_tallies_count_the_trail(url)

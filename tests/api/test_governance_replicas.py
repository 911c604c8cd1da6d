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

from reckon.v1 import admin_service_pb2
from reckon.v1 import governance_service_pb2 as pb
from reckon_server.storage.database import Database
from tests.support.api import Stubs, bearer, decode, new_secret
from tests.support.governance import M, key, plan, seed_payload, seed_seller_response, struct
from tests.support.postgres import PostgresServer
from tests.support.processes import ServerProcess, start_reckon

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

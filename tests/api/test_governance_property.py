"""Property: under any order of reports, retries and competing settlements, the plan's
committed total equals the sum of the settlements that were accepted, and every check is
settled at most once."""

from __future__ import annotations

import itertools
import uuid

import pytest
from grpc import aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reckon.v1 import governance_service_pb2 as pb
from tests.support.api import RunningServer, bearer, decode
from tests.support.governance import Buyer, M, plan, seed_payload, seed_seller_response

# One step: (campaign index, kind) — kind 0 completes with the first key, 1 retries that key,
# 2 fails with its own key, 3 completes with a fresh key (a competing settlement).
steps = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=14)
amounts = st.lists(st.integers(1, 60_000), min_size=4, max_size=4)
_counter = itertools.count()


@pytest.fixture
async def buyer(api: RunningServer) -> Buyer:
    return Buyer(api, await api.register("property"))


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sequence=steps, budgets=amounts)
async def test_committed_equals_accepted_settlements(
    buyer: Buyer, sequence: list[tuple[int, int]], budgets: list[int]
) -> None:
    plan_id = f"prop-{next(_counter)}-{uuid.uuid4().hex[:6]}"
    await buyer.sync(plan(plan_id, 200_000))
    checks = [await buyer.check(plan_id, seed_payload(b)) for b in budgets]
    keys = [uuid.uuid4().hex for _ in budgets]
    settled: dict[str, tuple[str, int]] = {}  # check_id -> (outcome_id, committed micros)
    for index, kind in sequence:
        check = checks[index]
        if check.status != pb.GOVERNANCE_DECISION_APPROVED:
            continue
        amount = budgets[index] + (index * 1_000 if kind == 3 else 0)
        if kind == 2:
            call = buyer.outcome(
                plan_id,
                check_id=check.check_id,
                outcome=pb.OUTCOME_TYPE_FAILED,
                error=pb.SellerError(code="NO"),
            )
        else:
            variant = 0 if kind in (0, 1) else kind  # kind 1 retries kind 0 exactly
            call = buyer.complete(
                plan_id,
                check,
                seed_seller_response(amount, media_buy_id=f"mb-{plan_id}-{index}-{variant}"),
                idempotency_key=keys[index] + "-first" if kind in (0, 1) else uuid.uuid4().hex,
            )
        refusal = None
        try:
            response = await call
        except aio.AioRpcError as err:
            refusal = decode(err).reason
        if refusal is not None:
            assert refusal == "OUTCOME_ALREADY_SETTLED"
            assert check.check_id in settled  # only a settled check refuses
            continue
        if response.replayed:
            assert settled[check.check_id][0] == response.outcome_id
            continue
        assert check.check_id not in settled, "a check was settled twice"
        settled[check.check_id] = (response.outcome_id, response.committed_budget_micros)
    state = await buyer.state(plan_id)
    assert state.committed_micros == sum(c for _, c in settled.values())
    logs = await buyer.stub.GetPlanAuditLogs(
        pb.GetPlanAuditLogsRequest(plan_ids=[plan_id]), metadata=bearer(buyer.key)
    )
    assert logs.plans[0].summary.outcomes_reported == len(settled)
    assert state.reserved_micros == sum(
        c.reserved_micros for c in checks if c.check_id not in settled
    )
    assert state.committed_micros + state.reserved_micros <= 200_000 * M + sum(
        i * 1_000 * M for i in range(4)
    )

"""GetPlanAuditLogs over long trails: summaries from the outcome tallies, entries a page at a
time, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from grpc import aio

from reckon.v1 import delivery_service_pb2 as dpb
from reckon.v1 import governance_service_pb2 as pb
from reckon_client import DeliveryStreamer, Reckon
from tests.support.api import DecodedError, RunningServer, bearer, decode, forged_tokens
from tests.support.delivery import assert_tallies_count_the_trail, committed_plan
from tests.support.governance import Buyer, plan, seed_payload
from tests.support.producer import minute_report

STREAMED = 30_000
"""Outcomes enough that the whole trail is several times gRPC's default 4 MiB message cap."""


async def refused(call: Awaitable[Any]) -> DecodedError:
    with pytest.raises(aio.AioRpcError) as raised:
        await call
    return decode(raised.value)


async def logs(buyer: Buyer, **fields: Any) -> pb.GetPlanAuditLogsResponse:
    return await buyer.stub.GetPlanAuditLogs(
        pb.GetPlanAuditLogsRequest(**fields), metadata=bearer(buyer.key)
    )


async def whole_trails(
    buyer: Buyer, page_size: int, token: str = "", **fields: Any
) -> tuple[dict[str, list[pb.AuditEntry]], list[pb.GetPlanAuditLogsResponse]]:
    """Every plan's entries, read page by page from `token`; and the pages."""
    trails: dict[str, list[pb.AuditEntry]] = {}
    pages: list[pb.GetPlanAuditLogsResponse] = []
    while True:
        page = await logs(
            buyer, include_entries=True, page_size=page_size, page_token=token, **fields
        )
        pages.append(page)
        assert sum(len(log.entries) for log in page.plans) <= page_size
        for log in page.plans:
            trails.setdefault(log.plan_id, []).extend(log.entries)
        if not (token := page.next_page_token):
            return trails, pages


def in_trail_order(entries: list[pb.AuditEntry]) -> bool:
    keys = [(e.timestamp.ToMicroseconds(), e.id) for e in entries]
    return keys == sorted(keys) and len(set(keys)) == len(keys)


async def test_a_trail_longer_than_a_message_is_read_page_by_page(api: RunningServer) -> None:
    buyer = await committed_plan(api, "long-trail", "long", {"mb_1": 150_000})
    streamed: list[str] = []

    def acked(ack: dpb.BatchAck) -> None:
        streamed.extend(result.accepted.outcome_id for result in ack.results)

    async with Reckon(api.target, buyer.key) as reckon:
        streamer = DeliveryStreamer(reckon.delivery, "long-1", batch_size=500, on_ack=acked)
        async with streamer:
            for n in range(STREAMED):
                await streamer.add(minute_report("long", "mb_1", n))
    assert len(set(streamed)) == STREAMED
    assert all(streamed)

    await assert_tallies_count_the_trail(api.database_url)
    summary = (await logs(buyer, plan_ids=["long"])).plans[0]
    assert not summary.entries
    # The commitment: one check and its completion, then every streamed report.
    assert (summary.summary.checks_performed, summary.summary.outcomes_reported) == (
        1,
        1 + STREAMED,
    )

    first = await logs(buyer, plan_ids=["long"], include_entries=True)
    assert len(first.plans[0].entries) == 100
    assert first.next_page_token

    trails, pages = await whole_trails(buyer, 1000, plan_ids=["long"])
    trail = trails["long"]
    assert len(pages) == math.ceil(len(trail) / 1000)
    assert len(trail) == 2 + STREAMED
    assert in_trail_order(trail)
    # Reports of one batch share its timestamp: the trail orders them by id.
    assert {e.id for e in trail} >= set(streamed)
    assert sum(e.ByteSize() for e in trail) > 4 * 1024 * 1024
    assert pages[0].plans[0].summary == summary.summary
    # Later pages carry entries only.
    assert all(not page.plans[0].HasField("summary") for page in pages[1:])


async def several_plans(buyer: Buyer) -> None:
    """Two plans with checks, commitments and delivery outcomes, interleaved in time."""
    await buyer.sync(plan("a", 500_000), plan("b", 500_000))
    await buyer.commit("a", 100_000, "mb_a")
    await buyer.commit("b", 100_000, "mb_b")
    for day in (15, 16, 17):
        await buyer.deliver(
            "a", "mb_a", f"2026-03-{day}T00:00:00Z", f"2026-03-{day + 1}T00:00:00Z", 1_000
        )
        await buyer.deliver(
            "b", "mb_b", f"2026-03-{day}T00:00:00Z", f"2026-03-{day + 1}T00:00:00Z", 2_000
        )
    await buyer.check("a", seed_payload(400_000))


@pytest.fixture
async def buyer(api: RunningServer) -> Buyer:
    return Buyer(api, await api.register("auditor"))


@pytest.mark.parametrize("page_size", [1, 2, 5])
async def test_pages_walk_the_plans_in_order(buyer: Buyer, page_size: int) -> None:
    await several_plans(buyer)
    whole = await logs(buyer, plan_ids=["a", "b"], include_entries=True, page_size=1000)
    assert not whole.next_page_token
    assert [len(log.entries) for log in whole.plans] == [6, 5]
    assert all(in_trail_order(list(log.entries)) for log in whole.plans)

    trails, pages = await whole_trails(buyer, page_size, plan_ids=["a", "b"])
    assert trails == {log.plan_id: list(log.entries) for log in whole.plans}
    assert len(pages) == math.ceil(11 / page_size)
    assert [log.summary for log in pages[0].plans] == [log.summary for log in whole.plans]
    for page in pages[1:]:
        assert [log.plan_id for log in page.plans] == ["a", "b"]
        assert not any(log.HasField("summary") or log.plan_version for log in page.plans)


async def test_pages_keep_to_the_filters(buyer: Buyer) -> None:
    await several_plans(buyer)
    whole = await logs(buyer, plan_ids=["a"], include_entries=True)
    context = next(
        e.governance_context
        for e in whole.plans[0].entries
        if e.type == pb.AUDIT_ENTRY_TYPE_OUTCOME
    )
    expected = [e for e in whole.plans[0].entries if e.governance_context == context]
    trails, _ = await whole_trails(buyer, 2, plan_ids=["a"], governance_contexts=[context])
    assert trails["a"] == expected
    counted = (await logs(buyer, plan_ids=["a"], governance_contexts=[context])).plans[0]
    assert counted.summary.checks_performed + counted.summary.outcomes_reported == len(expected)


async def test_entries_written_while_paging_appear_once(buyer: Buyer) -> None:
    await several_plans(buyer)
    first = await logs(buyer, plan_ids=["a"], include_entries=True, page_size=4)
    await buyer.deliver("a", "mb_a", "2026-03-18T00:00:00Z", "2026-03-19T00:00:00Z", 1_000)
    rest, _ = await whole_trails(buyer, 4, first.next_page_token, plan_ids=["a"])
    trail = list(first.plans[0].entries) + rest["a"]
    assert len(trail) == 7
    assert in_trail_order(trail)


async def test_page_tokens_and_filters_are_checked(buyer: Buyer) -> None:
    await several_plans(buyer)
    token = (
        await logs(buyer, plan_ids=["a", "b"], include_entries=True, page_size=1)
    ).next_page_token

    async def violation(**fields: Any) -> tuple[str, ...]:
        error = await refused(logs(buyer, **fields))
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
        return tuple(field for field, _ in error.violations)

    assert await violation(plan_ids=["a"], include_entries=True, page_token="%%") == ("page_token",)
    # A token continues only the request that issued it.
    assert await violation(plan_ids=["a"], include_entries=True, page_token=token) == (
        "page_token",
    )
    assert await violation(plan_ids=["a", "b"], page_token=token) == ("page_token",)
    issued = json.loads(base64.urlsafe_b64decode(token + "=="))
    # A position in a plan the request does not select.
    elsewhere = {"p": ["c", *issued["p"][1:]], "s": issued["s"]}
    moved = base64.urlsafe_b64encode(json.dumps(elsewhere).encode()).decode()
    for forged in [moved, *forged_tokens(token)]:
        assert await violation(plan_ids=["a", "b"], include_entries=True, page_token=forged) == (
            "page_token",
        )
    assert await violation(plan_ids=["a"], include_entries=True, page_size=1001) == ("page_size",)
    assert await violation(plan_ids=["a"], purchase_types=[0, 99]) == (
        "purchase_types[0]",
        "purchase_types[1]",
    )
    contexts = [f"gc_{n}" for n in range(101)]
    assert await violation(plan_ids=["a"], governance_contexts=contexts) == ("governance_contexts",)
    # The same token with the page size changed goes on where it left off.
    resumed = await logs(buyer, plan_ids=["a", "b"], include_entries=True, page_token=token)
    assert sum(len(log.entries) for log in resumed.plans) == 10


async def test_plans_selected_by_governance_context_come_in_request_order(buyer: Buyer) -> None:
    """Pages continue in the plans' order, so that order is the request's, the same on every
    replica (a set's order changes with each process's string hashing)."""
    names = [f"g{n}" for n in range(6)]
    await buyer.sync(*(plan(name, 500_000) for name in names))
    contexts = {
        name: (await buyer.check(name, seed_payload(1_000))).governance_context for name in names
    }
    wanted = names[::-1]
    trails, pages = await whole_trails(
        buyer, 1, governance_contexts=[contexts[name] for name in wanted]
    )
    assert [log.plan_id for log in pages[0].plans] == wanted
    assert list(trails) == wanted
    assert all(len(trails[name]) == 1 for name in names)

"""StreamDelivery's protocol on SQLite and PostgreSQL: acks after commit, per-report results,
duplicates, gaps, resume, fencing and backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.rpc.error_details_pb2 import BadRequest
from google.rpc.status_pb2 import Status
from grpc import aio

from reckon.v1 import delivery_service_pb2 as pb
from reckon.v1 import governance_service_pb2 as gpb
from reckon.v1 import types_pb2
from reckon_server.clock import utcnow
from reckon_server.domain.findings import Finding
from reckon_server.domain.money import MAX_AMOUNT_MICROS, MAX_PLAN_TOTAL_MICROS
from reckon_server.domain.pacing import pacing
from reckon_server.errors import Reason, ReckonError
from reckon_server.storage import delivery as delivery_store
from reckon_server.storage.database import Database
from reckon_server.storage.delivery import (
    ApplyDeliveryBatches,
    BatchApplied,
    CampaignFacts,
    ReportRules,
    StreamBatch,
    StreamReport,
)
from reckon_server.transport.governance_codec import terms_from_document
from reckon_server.transport.stream_reports import batch_reports
from tests.support.api import RunningServer, assert_caller_stalled, bearer, decode
from tests.support.delivery import (
    RawStream,
    assert_tallies_count_the_trail,
    committed_plan,
    report,
    settled_task_count,
    stored_next_seq,
    stored_rows,
    stream_commits_held,
    until,
)
from tests.support.governance import (
    Buyer,
    M,
    assert_seed_pacing_finding,
    plan,
    seed_payload,
    seed_seller_response,
    ts,
)
from tests.support.postgres import PostgresServer

PLAN = "streamed"


async def test_batches_are_acked_in_order_with_per_report_results(api: RunningServer) -> None:
    buyer = await committed_plan(api, "producer", PLAN, {"mb_1": 150_000})
    stream = RawStream(api, buyer.key, "producer-1")
    opened = await stream.opened()
    assert (opened.stream_id, opened.next_seq, opened.max_batch_reports) == ("producer-1", 1, 1000)
    stream.send(
        1,
        [
            report(PLAN, "mb_1", 15, 1_000 * M),
            report(PLAN, "mb_1", 16, 1_000 * M, viewability_rate=1.5),
            report(PLAN, "mb_unknown", 16, 1_000 * M),
            report("not-my-plan", "mb_1", 16, 1_000 * M),
            report(PLAN, "mb_1", 16, 2_000 * M, cpm_micros=50 * M),
        ],
    )
    ack = await stream.ack()
    assert (ack.seq, ack.disposition, ack.next_seq) == (1, pb.BATCH_DISPOSITION_COMMITTED, 2)
    kinds = [r.WhichOneof("result") for r in ack.results]
    assert kinds == ["accepted", "error", "error", "error", "accepted"]
    assert ack.results[0].accepted.outcome_id.startswith("out_")
    # Findings land on their own report: only the last one reports an inconsistent CPM.
    assert not any("CPM" in f.explanation for f in ack.results[0].accepted.findings)
    assert ack.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert ack.results[2].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "MEDIA_BUY_NOT_FOUND" in str(ack.results[2].error.details[0].value)
    assert "PLAN_NOT_FOUND" in str(ack.results[3].error.details[0].value)
    assert ack.results[4].accepted.status == types_pb2.PLAN_OUTCOME_STATUS_FINDINGS
    assert any("CPM" in f.explanation for f in ack.results[4].accepted.findings)
    assert (await buyer.state(PLAN)).spend_micros == 3_000 * M

    stream.send(1, [report(PLAN, "mb_1", 15, 9_999 * M)])  # already committed
    duplicate = await stream.ack()
    assert (duplicate.seq, duplicate.disposition, duplicate.next_seq) == (
        1,
        pb.BATCH_DISPOSITION_DUPLICATE,
        2,
    )
    stream.send(5, [report(PLAN, "mb_1", 17, M)])  # skips 2..4
    gap = await stream.ack()
    assert (gap.disposition, gap.next_seq) == (pb.BATCH_DISPOSITION_REJECTED, 2)
    assert gap.error.code == grpc.StatusCode.OUT_OF_RANGE.value[0]
    # Never committed, so not duplicates: a producer counting from 0 must not drop batch 0.
    for seq, reports, field in [
        (0, [report(PLAN, "mb_1", 17, M)], "batch.seq"),
        (-(2**63), [report(PLAN, "mb_1", 17, M)], "batch.seq"),
        (2, [], "batch.reports"),
        (2, [report(PLAN, "mb_1", 17, M)] * 1001, "batch.reports"),
    ]:
        stream.send(seq, reports)
        invalid = await stream.ack()
        assert (invalid.seq, invalid.disposition, invalid.next_seq) == (
            seq,
            pb.BATCH_DISPOSITION_REJECTED,
            2,
        )
        assert invalid.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert field in _violations(invalid.error)
    stream.send(2, [report(PLAN, "mb_1", 17, 500 * M)])
    assert (await stream.ack()).disposition == pb.BATCH_DISPOSITION_COMMITTED
    stream.close()
    # Nothing of the duplicate or the rejected batches was written.
    assert (await buyer.state(PLAN)).spend_micros == 3_500 * M

    resumed = RawStream(api, buyer.key, "producer-1")
    assert (await resumed.opened()).next_seq == 3
    resumed.close()


async def test_a_period_reported_twice_in_one_batch_keeps_the_later_figures(
    api: RunningServer,
) -> None:
    """Both reports are outcomes of their own; the period holds the later totals, once (the
    rows of a transaction are written with one statement per table on PostgreSQL, which may
    change a row only once)."""
    buyer = await committed_plan(api, "twice", PLAN, {"mb_1": 150_000})
    stream = RawStream(api, buyer.key, "twice-1")
    await stream.opened()
    stream.send(
        1,
        [
            report(PLAN, "mb_1", 15, 1_000 * M),
            report(PLAN, "mb_1", 16, 300 * M),
            report(PLAN, "mb_1", 15, 400 * M, impressions=7),
        ],
    )
    ack = await stream.ack()
    assert ack.disposition == pb.BATCH_DISPOSITION_COMMITTED
    ids = [r.accepted.outcome_id for r in ack.results]
    assert all(ids)
    assert len(set(ids)) == 3
    assert (await buyer.state(PLAN)).spend_micros == 700 * M
    stream.close()
    periods = await stored_rows(
        api.database_url,
        "SELECT spend_micros, impressions, outcome_id FROM delivery_periods ORDER BY period_start",
    )
    assert periods == [(400 * M, 7, ids[2]), (300 * M, 10_000, ids[1])]
    outcomes = await stored_rows(
        api.database_url,
        "SELECT outcome_id FROM plan_outcomes WHERE outcome_id IN (:a, :b)",
        a=ids[0],
        b=ids[2],
    )
    assert len(outcomes) == 2


def _bad_reports() -> list[tuple[pb.PlanDelivery, str]]:
    """Reports that break one rule each, with the field their violation names."""

    def broken(change: Callable[[pb.PlanDelivery], object]) -> pb.PlanDelivery:
        item = report(PLAN, "mb_1", 16, M, cpm_micros=100 * M)
        change(item)
        return item

    delivery = "delivery"
    return [
        (broken(lambda r: setattr(r, "plan_id", "")), "plan_id"),
        (broken(lambda r: setattr(r.delivery, "spend_micros", -1)), f"{delivery}.spend_micros"),
        (
            broken(lambda r: setattr(r.delivery, "spend_micros", MAX_AMOUNT_MICROS + 1)),
            f"{delivery}.spend_micros",
        ),
        (broken(lambda r: setattr(r.delivery, "impressions", -1)), f"{delivery}.impressions"),
        (broken(lambda r: setattr(r.delivery, "cpm_micros", -5)), f"{delivery}.cpm_micros"),
        (
            broken(lambda r: setattr(r.delivery, "viewability_rate", math.nan)),
            f"{delivery}.viewability_rate",
        ),
        (
            broken(lambda r: setattr(r.delivery, "completion_rate", 1.5)),
            f"{delivery}.completion_rate",
        ),
        (broken(lambda r: setattr(r.delivery, "media_buy_id", "")), f"{delivery}.media_buy_id"),
        (
            broken(lambda r: setattr(r.delivery, "media_buy_id", "é" * 256)),
            f"{delivery}.media_buy_id",
        ),
        (
            broken(lambda r: r.delivery.reporting_period.ClearField("start")),
            f"{delivery}.reporting_period.start",
        ),
        (
            broken(lambda r: setattr(r.delivery.reporting_period.end, "seconds", 0)),
            f"{delivery}.reporting_period.end",
        ),
        (
            broken(lambda r: setattr(r.delivery.reporting_period.start, "nanos", 2_000_000_000)),
            f"{delivery}.reporting_period.start",
        ),
        (
            broken(lambda r: setattr(r.delivery.reporting_period.end, "seconds", 2**40)),
            f"{delivery}.reporting_period.end",
        ),
        (
            broken(lambda r: r.delivery.ClearField("reporting_period")),
            f"{delivery}.reporting_period",
        ),
        (broken(lambda r: r.delivery.ext.update(_nested(20))), f"{delivery}.ext"),
        # NUL reaches no database: PostgreSQL would refuse it only once the batch commits.
        (broken(lambda r: setattr(r, "plan_id", f"{PLAN}\x00")), "plan_id"),
        (broken(lambda r: setattr(r, "governance_context", "\x00")), "governance_context"),
        (
            broken(lambda r: setattr(r.delivery, "media_buy_id", "mb_1\x00")),
            f"{delivery}.media_buy_id",
        ),
        (broken(lambda r: r.delivery.ext.update({"k": ["\x00"]})), f"{delivery}.ext.k[0]"),
    ]


def _nested(depth: int) -> dict[str, object]:
    document: dict[str, object] = {}
    for _ in range(depth):
        document = {"d": document}
    return document


def _violations(error: Status) -> list[str]:
    """The fields named by the BadRequest details of a per-report error."""
    return [
        violation.field
        for detail in error.details
        if detail.Is(BadRequest.DESCRIPTOR)
        for violation in BadRequest.FromString(detail.value).field_violations
    ]


async def test_each_invalid_report_gets_its_own_field_violation(api: RunningServer) -> None:
    buyer = await committed_plan(api, "validation", PLAN, {"mb_1": 150_000})
    stream = RawStream(api, buyer.key, "validation-1")
    await stream.opened()
    bad = _bad_reports()
    with_ext = report(PLAN, "mb_1", 17, 2 * M, cpm_micros=100 * M)
    with_ext.delivery.ext.update({"note": "ünïcödé ✓", "nested": {"n": [1, 2]}})
    stream.send(1, [item for item, _ in bad] + [with_ext, report(PLAN, "mb_1", 18, 3 * M)])
    ack = await stream.ack()
    assert ack.disposition == pb.BATCH_DISPOSITION_COMMITTED
    for index, (_, field) in enumerate(bad):
        error = ack.results[index].error
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], field
        assert f"reports[{index}].{field}" in _violations(error)
    assert [r.WhichOneof("result") for r in ack.results[len(bad) :]] == ["accepted", "accepted"]
    # Only the two valid reports counted.
    assert (await buyer.state(PLAN)).spend_micros == 5 * M
    stream.close()


async def test_a_plans_delivered_spend_stays_within_its_limit(api: RunningServer) -> None:
    """Each report may carry the largest amount; the plan's total may not pass its limit,
    which keeps every sum inside int64. A report that would is refused on its own, and the
    rest of its batch, and of the transaction, commits."""
    buyer = await committed_plan(api, "limit", PLAN, {"mb_1": 150_000, "mb_2": 150_000})
    stream = RawStream(api, buyer.key, "limit-1")
    await stream.opened()
    at_limit = MAX_PLAN_TOTAL_MICROS // MAX_AMOUNT_MICROS
    largest = [
        report(PLAN, f"mb_{1 + day % 2}", 1 + day, MAX_AMOUNT_MICROS) for day in range(at_limit + 2)
    ]
    stream.send(1, [*largest, report(PLAN, "mb_1", 28, 0)])
    ack = await stream.ack()
    assert ack.disposition == pb.BATCH_DISPOSITION_COMMITTED
    kinds = [r.WhichOneof("result") for r in ack.results]
    assert kinds == ["accepted"] * at_limit + ["error", "error", "accepted"]
    for index in (at_limit, at_limit + 1):
        error = ack.results[index].error
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert _violations(error) == [f"reports[{index}].delivery.spend_micros"]
    assert (await buyer.state(PLAN)).spend_micros == MAX_PLAN_TOTAL_MICROS

    # Lowering a period's spend makes room again, counted report by report in a batch: one
    # unit short of the largest amount is not enough room for it, the whole amount is.
    stream.send(2, [report(PLAN, "mb_1", 1, M), largest[at_limit], largest[at_limit + 1]])
    ack = await stream.ack()
    assert [r.WhichOneof("result") for r in ack.results] == ["accepted", "error", "error"]
    stream.send(3, [report(PLAN, "mb_2", 2, 0), largest[at_limit]])
    ack = await stream.ack()
    assert [r.WhichOneof("result") for r in ack.results] == ["accepted", "accepted"]
    state = await buyer.state(PLAN)
    assert state.spend_micros == MAX_PLAN_TOTAL_MICROS - MAX_AMOUNT_MICROS + M
    assert sum(c.spend_micros for c in state.campaigns) == state.spend_micros
    stream.close()


async def test_a_streamed_report_gets_the_seed_pacing_finding_in_full(api: RunningServer) -> None:
    buyer = await committed_plan(api, "seed-pacing", PLAN, {"mb_1": 150_000})
    stream = RawStream(api, buyer.key, "seed-pacing-1")
    await stream.opened()
    # 18,750 in the first week of a 150,000, 13-week flight: the seed's pacing anomaly.
    first_week = report(PLAN, "mb_1", 15, 18_750 * M, 1_250_000, cpm_micros=15 * M)
    first_week.delivery.reporting_period.end.FromJsonString("2026-03-22T00:00:00Z")
    stream.send(1, [first_week])
    [result] = (await stream.ack()).results
    assert result.accepted.status == types_pb2.PLAN_OUTCOME_STATUS_FINDINGS
    [finding] = result.accepted.findings
    assert_seed_pacing_finding(finding)
    stream.close()


async def test_pacing_near_the_last_representable_day_leaves_out_the_exhaustion_date(
    api: RunningServer,
) -> None:
    """At this rate the budget would run out after 9999-12-31: the report still gets its
    pacing finding, without a date (computing one failed the whole transaction)."""
    buyer = Buyer(api, await api.register("far-future"))
    flight = ("9990-01-01T00:00:00Z", "9999-12-31T00:00:00Z")
    await buyer.sync(
        plan(PLAN, 10_000_000, flight=gpb.Flight(start=ts(flight[0]), end=ts(flight[1])))
    )
    payload = {**seed_payload(150_000), "start_time": flight[0], "end_time": flight[1]}
    seller = seed_seller_response(150_000, media_buy_id="mb_far")
    seller.planned_delivery.start_time.CopyFrom(ts(flight[0]))
    seller.planned_delivery.end_time.CopyFrom(ts(flight[1]))
    await buyer.complete(PLAN, await buyer.check(PLAN, payload), seller)
    first_week = report(PLAN, "mb_far", 1, 100 * M)
    first_week.delivery.reporting_period.start.FromJsonString(flight[0])
    first_week.delivery.reporting_period.end.FromJsonString("9990-01-08T00:00:00Z")
    stream = RawStream(api, buyer.key, "far-future-1")
    await stream.opened()
    stream.send(1, [first_week])
    [result] = (await stream.ack()).results
    [finding] = result.accepted.findings
    assert finding.explanation == "Spend is pacing 65% below plan."
    assert "projected_exhaustion" not in finding.details.fields
    stream.close()


async def test_pacing_past_64_bits_still_gets_its_finding(api: RunningServer) -> None:
    """The largest spend over a period that ends a microsecond into the flight paces at a
    percentage past any 64-bit integer: the report is accepted with its finding, exact."""
    buyer = await committed_plan(api, "sliver", PLAN, {"mb_1": 150_000})
    sliver = report(PLAN, "mb_1", 15, MAX_AMOUNT_MICROS)
    sliver.delivery.reporting_period.start.FromJsonString("2026-03-14T00:00:00Z")
    sliver.delivery.reporting_period.end.FromJsonString("2026-03-15T00:00:00.000001Z")
    stream = RawStream(api, buyer.key, "sliver-1")
    await stream.opened()
    stream.send(1, [sliver])
    [result] = (await stream.ack()).results
    [finding] = [f for f in result.accepted.findings if "overpace_pct" in f.details.fields]
    paced = pacing(
        committed_micros=150_000 * M,
        flight_start=ts("2026-03-15T00:00:00Z").ToDatetime(UTC),
        flight_end=ts("2026-06-15T00:00:00Z").ToDatetime(UTC),
        period_start=sliver.delivery.reporting_period.start.ToDatetime(UTC),
        period_end=sliver.delivery.reporting_period.end.ToDatetime(UTC),
        period_spend_micros=MAX_AMOUNT_MICROS,
        cumulative_spend_micros=MAX_AMOUNT_MICROS,
    )
    assert paced is not None
    assert paced.overpace_pct > 2**63
    assert finding.details.fields["overpace_pct"].number_value == float(paced.overpace_pct)
    stream.close()


FAULTY_SPEND = 13 * M


def _rules_with_a_fault(facts: CampaignFacts) -> ReportRules:
    """Findings rules with a fault, as a bug would be: reports of FAULTY_SPEND raise."""

    def findings(report: StreamReport, cumulative_micros: int) -> list[Finding]:
        if report.spend_micros == FAULTY_SPEND:
            raise ArithmeticError("a fault in the rules")
        return []

    return findings


@dataclass(frozen=True)
class _ApplyOne:
    """One batch's transaction, as the group committer sends it (it pickles, for SQLite's
    writer process)."""

    op: ApplyDeliveryBatches
    batch: StreamBatch

    def __call__(self, conn: sa.Connection) -> list[BatchApplied | ReckonError]:
        return self.op.apply(conn, [self.batch])


async def test_a_fault_in_the_findings_rules_fails_that_report_alone(api: RunningServer) -> None:
    """Raised, it would fail every batch of the transaction, each retried into the same
    fault; kept to its report, the rest of the batch commits and the report is INTERNAL."""
    buyer = await committed_plan(api, "faulty", PLAN, {"mb_1": 150_000})
    stream = RawStream(api, buyer.key, "faulty-1")
    opened = await stream.opened()
    stream.close()
    database = Database(api.database_url)
    try:
        async with database.read() as conn:
            org_id, principal_id = (
                await conn.execute(
                    sa.text("SELECT org_id, owner_id FROM plans WHERE plan_id = :p"), {"p": PLAN}
                )
            ).one()
        reports = batch_reports(
            pb.DeliveryBatch(
                reports=[
                    report(PLAN, "mb_1", day, spend)
                    for day, spend in [(15, M), (16, FAULTY_SPEND), (17, 2 * M)]
                ]
            )
        )
        batch = StreamBatch(org_id, principal_id, "faulty-1", 1, opened.next_seq, reports, utcnow())
        op = ApplyDeliveryBatches(_rules_with_a_fault, terms_from_document)
        [applied] = await (await database.send_batch(_ApplyOne(op, batch)))
    finally:
        await database.dispose()
    assert isinstance(applied, BatchApplied)
    first, faulty, third = applied.results
    assert isinstance(faulty, ReckonError)
    assert faulty.reason == Reason.INTERNAL
    assert set(faulty.metadata) == {"incident_id"}
    assert [type(r) for r in (first, third)] == [str, str]  # their outcome ids
    assert (await buyer.state(PLAN)).spend_micros == 3 * M
    assert await stored_next_seq(api.database_url, "faulty-1") == opened.next_seq + 1


async def test_reports_may_name_their_campaign_by_governance_context(api: RunningServer) -> None:
    buyer = await committed_plan(api, "by-context", PLAN, {})
    check = await buyer.check(PLAN, seed_payload(150_000))
    await buyer.complete(PLAN, check, seed_seller_response(150_000, media_buy_id="mb_1"))
    stream = RawStream(api, buyer.key, "by-context-1")
    await stream.opened()
    by_context = report(PLAN, "", 15, 1_000 * M)
    by_context.governance_context = check.governance_context
    unknown = report(PLAN, "", 16, M)
    unknown.governance_context = "gc_unknown"
    stream.send(1, [by_context, unknown, report(PLAN, "mb_1", 16, 500 * M)])
    ack = await stream.ack()
    assert [r.WhichOneof("result") for r in ack.results] == ["accepted", "error", "accepted"]
    assert ack.results[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "CAMPAIGN_NOT_FOUND" in str(ack.results[1].error.details[0].value)
    # Both names reach the one campaign.
    assert (await buyer.state(PLAN)).spend_micros == 1_500 * M
    stream.close()


async def test_a_newer_connection_fences_the_older_one(api: RunningServer) -> None:
    buyer = await committed_plan(api, "fenced", PLAN, {"mb_1": 150_000})
    old = RawStream(api, buyer.key, "shared-id")
    await old.opened()
    old.send(1, [report(PLAN, "mb_1", 15, M)])
    assert (await old.ack()).disposition == pb.BATCH_DISPOSITION_COMMITTED
    new = RawStream(api, buyer.key, "shared-id")
    assert (await new.opened()).next_seq == 2
    with pytest.raises(aio.AioRpcError) as raised:
        await old.ack()
    error = decode(raised.value)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STREAM_FENCED")
    new.send(2, [report(PLAN, "mb_1", 16, M)])
    assert (await new.ack()).disposition == pb.BATCH_DISPOSITION_COMMITTED
    new.close()


async def test_an_open_that_gets_back_after_a_newer_one_is_fenced_at_once(
    api: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each open raises the stream's generation in its transaction, but their callers may
    resume in either order: the newer owns the stream however late the older gets back."""
    buyer = await committed_plan(api, "overtaken", PLAN, {"mb_1": 150_000})
    database = api.server.delivery._db
    open_stream, write = delivery_store.open_stream, database.write
    held: set[asyncio.Task[Any] | None] = set()
    stored, resume = asyncio.Event(), asyncio.Event()

    async def first_open_held(conn: Any, *args: Any) -> tuple[int, int] | None:
        if not held:
            held.add(asyncio.current_task())
        return await open_stream(conn, *args)

    @contextlib.asynccontextmanager
    async def write_then_hold() -> AsyncIterator[Any]:
        async with write() as conn:
            yield conn
        if asyncio.current_task() in held:
            stored.set()
            await resume.wait()

    monkeypatch.setattr(delivery_store, "open_stream", first_open_held)
    monkeypatch.setattr(database, "write", write_then_hold)
    older = RawStream(api, buyer.key, "overtaken")
    await asyncio.wait_for(stored.wait(), 10)
    newer = RawStream(api, buyer.key, "overtaken")
    assert (await newer.opened()).next_seq == 1
    resume.set()
    assert (await older.opened()).next_seq == 1
    with pytest.raises(aio.AioRpcError) as raised:
        await older.ack()
    assert decode(raised.value).reason == "STREAM_FENCED"
    newer.send(1, [report(PLAN, "mb_1", 15, M)])
    assert (await newer.ack()).disposition == pb.BATCH_DISPOSITION_COMMITTED
    newer.close()


async def test_connections_racing_for_one_stream_apply_each_batch_once(
    api: RunningServer,
) -> None:
    """A producer retrying on many connections at once: each takes the stream from the one
    before, and whichever batches they send, each is applied exactly once."""
    buyer = await committed_plan(api, "racer", PLAN, {"mb_1": 150_000})
    # Opens alone, whichever order they come back in: all but the newest are fenced at once.
    opening = [RawStream(api, buyer.key, "raced") for _ in range(8)]
    await asyncio.gather(*(stream.opened() for stream in opening))
    ends = [asyncio.ensure_future(stream.call.code()) for stream in opening]
    still_open = set(ends)
    while len(still_open) > 1:
        ended, still_open = await asyncio.wait(
            still_open, timeout=10, return_when="FIRST_COMPLETED"
        )
        assert ended, f"{len(still_open)} connections open, all but one fenced"
    assert [end.result() for end in ends if end not in still_open] == [
        grpc.StatusCode.FAILED_PRECONDITION
    ] * 7
    for stream in opening:
        stream.close()
    await asyncio.gather(*still_open)

    batches = {seq: [report(PLAN, "mb_1", 14 + seq, seq * M)] for seq in range(1, 6)}

    async def race() -> tuple[list[int], str]:
        """The seqs this connection committed, and why it ended early ("" if it did not)."""
        stream = RawStream(api, buyer.key, "raced")
        committed = []
        try:
            first = (await stream.opened()).next_seq
            for seq in range(first, 6):
                stream.send(seq, batches[seq])
            for _ in range(first, 6):
                ack = await stream.ack()
                if ack.disposition == pb.BATCH_DISPOSITION_COMMITTED:
                    committed.append(ack.seq)
        except aio.AioRpcError as ended:
            if ended.details() == _CLIENT_WRITE_LOST_STATUS:
                return committed, _CLIENT_WRITE_LOST_STATUS
            return committed, decode(ended).reason
        finally:
            stream.close()
        return committed, ""

    races = await asyncio.gather(*(race() for _ in range(8)))
    assert {reason for _, reason in races} <= {"", "STREAM_FENCED", _CLIENT_WRITE_LOST_STATUS}
    raced = [seq for committed, _ in races for seq in committed]
    assert len(raced) == len(set(raced))
    last, ended = await race()
    assert (sorted(raced + last), ended) == (list(batches), "")
    [(outcomes, spend)] = await stored_rows(
        api.database_url, "SELECT count(*), sum(spend_micros) FROM delivery_periods"
    )
    assert (outcomes, spend) == (5, 15 * M)
    assert (await buyer.state(PLAN)).spend_micros == 15 * M
    assert await stored_next_seq(api.database_url, "raced") == 6
    await assert_tallies_count_the_trail(api.database_url)


_CLIENT_WRITE_LOST_STATUS = "Internal error from Core"
"""What grpc-python's asyncio client reports in place of the server's status when one of its
writes races that status (grpc/grpc#36066): the server fenced such a connection all the same.
"""


async def test_stream_ids_belong_to_their_producer(api: RunningServer) -> None:
    first = await committed_plan(api, "first", PLAN, {"mb_1": 150_000})
    second = await committed_plan(api, "second", "other-plan", {})
    mine = RawStream(api, first.key, "taken")
    await mine.opened()
    theirs = RawStream(api, second.key, "taken")
    with pytest.raises(aio.AioRpcError) as raised:
        await theirs.opened()
    assert decode(raised.value).reason == "INVALID_REQUEST"
    # Refused, the attempt took nothing from the stream's producer.
    mine.send(1, [report(PLAN, "mb_1", 15, M)])
    assert (await mine.ack()).results[0].HasField("accepted")
    mine.close()


async def test_only_a_plans_owner_streams_its_delivery(api: RunningServer) -> None:
    owner = await committed_plan(api, "owner", PLAN, {"mb_1": 150_000})
    other = await committed_plan(api, "other", "other-plan", {"mb_1": 150_000})
    stream = RawStream(api, other.key, "not-mine")
    await stream.opened()
    stream.send(1, [report(PLAN, "mb_1", 15, M)])
    [result] = (await stream.ack()).results
    assert result.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "PLAN_NOT_FOUND" in str(result.error.details[0].value)
    stream.close()
    assert (await owner.state(PLAN)).spend_micros == 0


async def test_the_first_message_must_open_the_stream(api: RunningServer) -> None:
    buyer = await committed_plan(api, "confused", PLAN, {})
    requests: asyncio.Queue[pb.StreamDeliveryRequest | None] = asyncio.Queue()
    requests.put_nowait(pb.StreamDeliveryRequest(batch=pb.DeliveryBatch(seq=1)))

    async def iterate():  # type: ignore[no-untyped-def]
        while (message := await requests.get()) is not None:
            yield message

    call = api.stubs.delivery.StreamDelivery(iterate(), metadata=bearer(buyer.key))
    with pytest.raises(aio.AioRpcError) as raised:
        await call.read()
    assert decode(raised.value).violations[0][0] == "open.stream_id"
    requests.put_nowait(None)


async def test_undecodable_bytes_mid_stream_end_it_invalid_body_after_earlier_acks(
    api: RunningServer,
) -> None:
    buyer = await committed_plan(api, "garbled", PLAN, {"mb_1": 150_000})
    batch = pb.DeliveryBatch(seq=1, reports=[report(PLAN, "mb_1", 15, M)])
    messages = [
        pb.StreamDeliveryRequest(open=pb.StreamOpen(stream_id="garbled-1")).SerializeToString(),
        pb.StreamDeliveryRequest(batch=batch).SerializeToString(),
        b"\xff\xff\xff\xff",
    ]

    async def iterate():  # type: ignore[no-untyped-def]
        for message in messages:
            yield message

    call = api.channel.stream_stream(
        "/reckon.v1.DeliveryService/StreamDelivery",
        request_serializer=None,
        response_deserializer=pb.StreamDeliveryResponse.FromString,
    )(iterate(), metadata=bearer(buyer.key))
    responses = [await call.read(), await call.read()]
    with pytest.raises(aio.AioRpcError) as raised:
        await call.read()
    error = decode(raised.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_BODY")
    assert [r.WhichOneof("kind") for r in responses] == ["opened", "ack"]
    assert responses[1].ack.disposition == pb.BATCH_DISPOSITION_COMMITTED
    assert await stored_next_seq(api.database_url, "garbled-1") == 2


async def held_back_stream(api: RunningServer, name: str) -> tuple[Buyer, RawStream, int]:
    """A buyer `name` with a committed plan, and its stream `name-1` flooded until held back
    (`flood_until_held_back`), with how many batches it committed."""
    buyer = await committed_plan(api, name, PLAN, {"mb_1": 150_000})
    stream = RawStream(api, buyer.key, f"{name}-1")
    await stream.opened()
    return buyer, stream, await flood_until_held_back(api, stream, f"{name}-1")


async def flood_until_held_back(api: RunningServer, stream: RawStream, stream_id: str) -> int:
    """Send 60 batches of 1,000 reports without reading an ack; once the stream has committed
    some and its commits stop advancing for a second (the server has stopped reading it), how
    many batches it committed."""
    big = [report(PLAN, "mb_1", 15, M) for _ in range(1000)]
    for seq in range(1, 61):
        stream.send(seq, big)

    async def settled() -> int:
        committed, previously = 0, 0
        while not committed or committed != previously:
            await asyncio.sleep(1)
            previously = committed
            committed = await stored_next_seq(api.database_url, stream_id) - 1
        return committed

    return await asyncio.wait_for(settled(), 30)


async def test_a_producer_that_never_reads_acks_is_held_back(database_url: str) -> None:
    api = await RunningServer.start(database_url, stream_window=4)
    try:
        # It stopped reading: what it committed is its window plus the acks transport
        # buffers hold, far below the 60 batches offered.
        _, stream, committed = await held_back_stream(api, "greedy")
        assert 1 <= committed <= 40, committed
        acks = [await stream.ack() for _ in range(60)]
        assert [a.seq for a in acks] == list(range(1, 61))
        stream.close()
    finally:
        await api.close()


async def _reopened_once_free(
    api: RunningServer, key: str, stream_id: str
) -> tuple[RawStream, int]:
    """The stream opened again, and its next_seq, once the server has room for it: it refuses
    OVERLOADED until the call that held the place has ended (within 10 s)."""

    async def reopen() -> tuple[RawStream, int]:
        while True:
            again = RawStream(api, key, stream_id)
            try:
                return again, (await again.opened()).next_seq
            except aio.AioRpcError as refused:
                if decode(refused).reason != "OVERLOADED":
                    raise
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(reopen(), 10)


async def _goes_on_from(resumed: RawStream, next_seq: int, buyer: Buyer) -> None:
    """A held-back stream, reopened at `next_seq`, commits its next batch; the plan's spend is
    the flooded day's, counted once, plus that batch's."""
    resumed.send(next_seq, [report(PLAN, "mb_1", 16, 2 * M)])
    assert (await resumed.ack()).disposition == pb.BATCH_DISPOSITION_COMMITTED
    assert (await buyer.state(PLAN)).spend_micros == 3 * M
    resumed.close()


async def test_a_producer_gone_while_held_back_frees_its_place_and_resumes(
    database_url: str,
) -> None:
    """A producer that stops reading acks fills its window, and the server stops reading from
    it; when it then goes away, its call ends, its place among the server's streams is free
    again, and the stream resumes from its durable cursor."""
    api = await RunningServer.start(database_url, stream_window=4, stream_max_open=1)
    try:
        buyer, stream, committed = await held_back_stream(api, "held-back")
        assert committed < 60, "the server kept reading"
        stream.call.cancel()

        again, next_seq = await _reopened_once_free(api, buyer.key, "held-back-1")
        await until(lambda: api.server.delivery.uncommitted_batches == 0)
        assert next_seq == await stored_next_seq(api.database_url, "held-back-1") > committed
        await _goes_on_from(again, next_seq, buyer)
    finally:
        await api.close()


async def test_a_producer_that_stops_taking_acks_is_ended_and_frees_its_place(
    database_url: str,
) -> None:
    """A live producer that stops reading acks does not keep its stream, nor its place among
    the server's streams: once no ack has gone out for the send timeout, the call ends
    CALLER_STALLED after the acks it had taken, and the stream resumes from its cursor."""
    api = await RunningServer.start(
        database_url, stream_window=4, stream_max_open=1, send_timeout_seconds=1
    )
    try:
        buyer, stalled, committed = await held_back_stream(api, "stalled")
        assert committed < 60, "the server kept reading"

        # The only place is free again, without the stalled caller going away.
        again = RawStream(api, buyer.key, "stalled-2")
        assert (await again.opened()).next_seq == 1
        again.close()
        await until(lambda: api.server.delivery.uncommitted_batches == 0)

        acked: list[int] = []

        async def read_acks() -> None:
            while True:
                acked.append((await stalled.ack()).seq)

        with pytest.raises(aio.AioRpcError) as raised:
            await read_acks()
        assert_caller_stalled(raised.value, "/reckon.v1.DeliveryService/StreamDelivery")
        # What was acked is a prefix of what was committed; nothing else was.
        assert acked == list(range(1, len(acked) + 1))
        assert len(acked) <= committed == await stored_next_seq(api.database_url, "stalled-1") - 1

        resumed = RawStream(api, buyer.key, "stalled-1")
        next_seq = (await resumed.opened()).next_seq
        assert next_seq == committed + 1
        await _goes_on_from(resumed, next_seq, buyer)
    finally:
        await api.close()


async def test_streams_stop_reading_while_the_server_has_no_room(database_url: str) -> None:
    api = await RunningServer.start(database_url, stream_server_inflight=2)
    try:
        buyer = await committed_plan(api, "crowd", PLAN, {"mb_1": 150_000})
        streams = [RawStream(api, buyer.key, f"crowd-{n}") for n in range(3)]
        for stream in streams:
            await stream.opened()
        ledger = api.server.delivery
        async with stream_commits_held(api.database_url):
            for day, stream in enumerate(streams, start=15):
                for seq in range(1, 11):
                    stream.send(seq, [report(PLAN, "mb_1", day, seq * M)])
            # Two batches hold the server's room; each stream holds the one it read last.
            await until(lambda: ledger.uncommitted_batches >= 5)
            await asyncio.sleep(1)
            assert ledger.uncommitted_batches == 5
        for stream in streams:
            acks = [await stream.ack() for _ in range(10)]
            assert [(a.seq, a.disposition) for a in acks] == [
                (seq, pb.BATCH_DISPOSITION_COMMITTED) for seq in range(1, 11)
            ]
            stream.close()
        assert ledger.uncommitted_batches == 0
        assert (await buyer.state(PLAN)).spend_micros == 30 * M
    finally:
        await api.close()


async def test_producers_that_go_away_cannot_pile_up_batches(database_url: str) -> None:
    api = await RunningServer.start(database_url, stream_server_inflight=4)
    try:
        buyer = await committed_plan(api, "restless", PLAN, {"mb_1": 150_000})
        ledger, committer = api.server.delivery, api.server.committer
        streams = [RawStream(api, buyer.key, f"restless-{n}") for n in range(6)]
        for stream in streams:
            await stream.opened()
        async with stream_commits_held(api.database_url):
            for n, stream in enumerate(streams):
                for seq in range(1, 9):
                    stream.send(seq, [report(PLAN, "mb_1", 15 + n, seq * M)])
                # The first takes the server's room and holds one more batch; each later one
                # holds the one batch it read.
                await until(lambda n=n: ledger.uncommitted_batches >= 5 + n)
                stream.call.cancel()
            await asyncio.sleep(0.5)
            # Batches of connections gone keep their room until their transactions end:
            # what waits for a transaction stays within the server's room.
            assert committer.queued <= 4
        await until(lambda: not ledger.uncommitted_batches)
        # Every batch the server read commits, as if its ack had been lost.
        cursors = [await stored_next_seq(api.database_url, f"restless-{n}") for n in range(6)]
        assert cursors == [6] + [2] * 5
        assert (await buyer.state(PLAN)).spend_micros == (5 + 5 * 1) * M
    finally:
        await api.close()


async def test_a_stopped_server_leaves_no_connection_to_postgresql_behind(
    postgres: PostgresServer,
) -> None:
    """Batches still committing when the server stops settle without storage being opened
    again after it was released."""
    url = await postgres.create_database()
    api = await RunningServer.start(url)
    buyer = await committed_plan(api, "late", PLAN, {"mb_1": 150_000})
    stream = RawStream(api, buyer.key, "late-1")
    await stream.opened()
    async with stream_commits_held(url):
        for seq in range(1, 4):
            stream.send(seq, [report(PLAN, "mb_1", 15, seq * M)])
        await until(lambda: api.server.delivery.uncommitted_batches == 3)
        stopping = asyncio.ensure_future(api.close())
        await asyncio.sleep(0.5)
    await stopping
    await asyncio.sleep(0.5)
    [(connections,)] = await stored_rows(
        url,
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    assert connections == 0


async def test_batches_far_apart_in_time_sharing_a_transaction_replace_their_periods(
    database_url: str,
) -> None:
    api = await RunningServer.start(database_url)
    try:
        buyer = await committed_plan(api, "far-apart", PLAN, {"mb_1": 150_000})
        early, late, plug = (RawStream(api, buyer.key, name) for name in ("early", "late", "plug"))
        for stream, day in ((early, 15), (late, 27), (plug, 20)):
            await stream.opened()
            stream.send(1, [report(PLAN, "mb_1", day, 10 * M)])
            assert (await stream.ack()).disposition == pb.BATCH_DISPOSITION_COMMITTED
        committer = api.server.committer
        committed = committer.batches
        async with stream_commits_held(api.database_url):
            # Transactions of the plug's batches fill the storage's pipeline, so that the
            # next one, put together after them, takes both batches that follow.
            depth = api.server.database.batch_pipeline_depth
            for seq in range(2, 2 + depth):
                plug.send(seq, [report(PLAN, "mb_1", 20, seq * M)])
                await until(lambda seq=seq: committer.in_flight >= seq - 1)
            early.send(2, [report(PLAN, "mb_1", 15, 12 * M)])
            late.send(2, [report(PLAN, "mb_1", 27, 13 * M)])
            await until(lambda: api.server.delivery.uncommitted_batches >= depth + 2)
        for stream in (plug, early, late):
            acks = [await stream.ack() for _ in range(depth if stream is plug else 1)]
            assert {a.disposition for a in acks} == {pb.BATCH_DISPOSITION_COMMITTED}
            stream.close()
        assert committer.batches == committed + depth + 1
        # Each re-sent period replaced its stored figures: 12 + 13, not 10 + 10 + 12 + 13.
        assert (await buyer.state(PLAN)).spend_micros == (12 + 13 + 1 + depth) * M
    finally:
        await api.close()


async def test_restated_periods_are_found_whichever_write_stored_them(api: RunningServer) -> None:
    """A report restates its stored period, replacing its figures, whether a streamed or a
    unary report stored it; one that starts before its campaign's latest period without
    naming a stored one adds a period; another plan's periods of the same days change
    nothing. (Streamed ingest reads back only the periods of reports that start no later
    than their campaign's latest.)"""
    other = await committed_plan(api, "restating-other", "other", {"mb_1": 150_000})
    other_stream = RawStream(api, other.key, "restating-other")
    await other_stream.opened()
    other_stream.send(1, [report("other", "mb_1", day, M) for day in range(14, 24)])
    assert (await other_stream.ack()).disposition == pb.BATCH_DISPOSITION_COMMITTED
    other_stream.close()
    buyer = await committed_plan(api, "restating", PLAN, {"mb_1": 150_000, "mb_2": 150_000})
    await buyer.deliver(PLAN, "mb_1", "2026-03-20T00:00:00Z", "2026-03-21T00:00:00Z", 10 * M)
    stream = RawStream(api, buyer.key, "restating")
    await stream.opened()
    for seq, reports in enumerate(
        (
            [
                report(PLAN, "mb_1", 20, 11 * M),
                report(PLAN, "mb_1", 15, 3 * M),
                report(PLAN, "mb_2", 20, 5 * M),
                report(PLAN, "mb_1", 22, 2 * M),
            ],
            [
                report(PLAN, "mb_1", 15, 4 * M),
                report(PLAN, "mb_2", 18, 6 * M),
                report(PLAN, "mb_1", 22, M),
            ],
        ),
        1,
    ):
        stream.send(seq, reports)
        ack = await stream.ack()
        assert ack.disposition == pb.BATCH_DISPOSITION_COMMITTED
        assert all(r.accepted.outcome_id for r in ack.results), ack
    stream.close()
    restated = await buyer.deliver(
        PLAN, "mb_2", "2026-03-20T00:00:00Z", "2026-03-21T00:00:00Z", 7 * M
    )
    assert restated.outcome_id
    assert (await buyer.state(PLAN)).spend_micros == (11 + 4 + 1 + 6 + 7) * M
    assert (await other.state("other")).spend_micros == 10 * M
    day = 86_400_000_000
    march_15 = 1_773_532_800_000_000
    periods = await stored_rows(
        api.database_url,
        "SELECT c.media_buy_id, p.period_start, p.spend_micros FROM delivery_periods p"
        " JOIN campaigns c USING (governance_context) WHERE p.plan_id = :plan ORDER BY 1, 2",
        plan=PLAN,
    )
    assert periods == [
        ("mb_1", march_15, 4 * M),
        ("mb_1", march_15 + 5 * day, 11 * M),
        ("mb_1", march_15 + 7 * day, M),
        ("mb_2", march_15 + 3 * day, 6 * M),
        ("mb_2", march_15 + 5 * day, 7 * M),
    ]
    campaigns = await stored_rows(
        api.database_url,
        "SELECT media_buy_id, spend_micros, latest_period_start FROM campaigns"
        " WHERE plan_id = :plan ORDER BY 1",
        plan=PLAN,
    )
    assert campaigns == [("mb_1", 16 * M, march_15 + 7 * day), ("mb_2", 13 * M, march_15 + 5 * day)]


async def test_a_transaction_reads_back_hundreds_of_restated_periods(api: RunningServer) -> None:
    """Restating more periods than one read names replaces every one of them."""
    buyer = await committed_plan(api, "restating-many", PLAN, {"mb_1": 150_000})
    minute = 60

    def minutes(count: int, spend: int) -> list[pb.PlanDelivery]:
        out = []
        for n in range(count):
            item = report(PLAN, "mb_1", 15, spend)
            period = item.delivery.reporting_period
            period.start.seconds += n * minute
            period.end.seconds = period.start.seconds + minute
            out.append(item)
        return out

    stream = RawStream(api, buyer.key, "restating-many")
    await stream.opened()
    # The second batch restates the first's 500 periods, in two reads of 256 keys.
    for seq, count, spend in ((1, 500, 2 * M), (2, 600, 3)):
        stream.send(seq, minutes(count, spend))
        assert (await stream.ack()).disposition == pb.BATCH_DISPOSITION_COMMITTED
    stream.close()
    assert (await buyer.state(PLAN)).spend_micros == 600 * 3
    [(count, spend)] = await stored_rows(
        api.database_url,
        "SELECT count(*), sum(spend_micros) FROM delivery_periods WHERE plan_id = :plan",
        plan=PLAN,
    )
    assert (count, spend) == (600, 600 * 3)


async def test_streams_past_the_servers_limit_are_refused_overloaded(database_url: str) -> None:
    api = await RunningServer.start(database_url, stream_max_open=2)
    try:
        buyer = await committed_plan(api, "many", PLAN, {"mb_1": 150_000})
        first, second = RawStream(api, buyer.key, "many-1"), RawStream(api, buyer.key, "many-2")
        await first.opened()
        await second.opened()
        with pytest.raises(aio.AioRpcError) as raised:
            await RawStream(api, buyer.key, "many-3").opened()
        error = decode(raised.value)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "OVERLOADED")
        assert "google.rpc.RetryInfo" in error.details
        # A stream that ends, by closing or by being fenced, makes room.
        second.close()
        await second.call.code()
        taken_over = RawStream(api, buyer.key, "many-1")
        await taken_over.opened()
        with pytest.raises(aio.AioRpcError):
            await first.ack()
        third = RawStream(api, buyer.key, "many-3")
        await third.opened()
        with pytest.raises(aio.AioRpcError) as raised:
            await RawStream(api, buyer.key, "many-4").opened()
        assert decode(raised.value).reason == "OVERLOADED"
        taken_over.close()
        third.send(1, [report(PLAN, "mb_1", 15, M)])
        assert (await third.ack()).disposition == pb.BATCH_DISPOSITION_COMMITTED
        third.close()
        await third.call.code()
        # Opens racing one another count each other; a refused one leaves no count behind.
        foreign = RawStream(api, await api.register("foreign"), "many-3")
        with pytest.raises(aio.AioRpcError):
            await foreign.opened()
        racing = [RawStream(api, buyer.key, f"racing-{n}") for n in range(5)]
        opened = await asyncio.gather(*(r.opened() for r in racing), return_exceptions=True)
        refused = [decode(o).reason for o in opened if isinstance(o, aio.AioRpcError)]
        assert refused == ["OVERLOADED"] * 3
        for stream in racing:
            stream.close()
    finally:
        await api.close()


async def test_a_producer_gone_while_its_open_is_announced_frees_its_place(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open is stored, then announced to other replicas: a producer that goes away
    in between leaves neither its place nor its ownership behind."""
    api = await RunningServer.start(database_url, stream_max_open=1)
    try:
        buyer = await committed_plan(api, "hasty", PLAN, {"mb_1": 150_000})
        notifier = api.server.delivery._notifier
        publish, announcing = notifier.publish, asyncio.Event()

        async def announce_never(topic: str, payload: str = "") -> None:
            if topic.startswith("stream:"):
                announcing.set()
                await asyncio.Event().wait()
            await publish(topic, payload)

        monkeypatch.setattr(notifier, "publish", announce_never)
        gone = RawStream(api, buyer.key, "hasty")
        opening = asyncio.ensure_future(gone.opened())
        await asyncio.wait_for(announcing.wait(), 10)
        gone.call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        monkeypatch.undo()

        stream, next_seq = await _reopened_once_free(api, buyer.key, "hasty")
        assert next_seq == 1
        stream.send(1, [report(PLAN, "mb_1", 15, M)])
        assert (await stream.ack()).disposition == pb.BATCH_DISPOSITION_COMMITTED
        stream.close()
    finally:
        await api.close()


async def test_an_idle_stream_ends_ok_after_its_acks_and_frees_its_place(
    database_url: str,
) -> None:
    api = await RunningServer.start(database_url, stream_idle_seconds=0.5, stream_max_open=1)
    try:
        buyer = await committed_plan(api, "idle", PLAN, {"mb_1": 150_000})
        # Silent from the start: not even an open message.
        silent = api.stubs.delivery.StreamDelivery(_never_sending(), metadata=bearer(buyer.key))
        assert await asyncio.wait_for(silent.code(), 10) == grpc.StatusCode.OK
        idle = RawStream(api, buyer.key, "idle-1")
        await idle.opened()
        idle.send(1, [report(PLAN, "mb_1", 15, M)])
        assert (await idle.ack()).disposition == pb.BATCH_DISPOSITION_COMMITTED
        assert await asyncio.wait_for(idle.call.code(), 10) == grpc.StatusCode.OK
        resumed = RawStream(api, buyer.key, "idle-1")
        assert (await resumed.opened()).next_seq == 2
        resumed.close()
        await resumed.call.code()
    finally:
        await api.close()


async def _never_sending() -> AsyncIterator[pb.StreamDeliveryRequest]:
    await asyncio.Event().wait()
    yield pb.StreamDeliveryRequest()


async def test_streams_that_go_away_leave_nothing_behind_on_the_server(
    api: RunningServer,
) -> None:
    """A long-lived server sees many producers come and go: each disconnect must release
    what its stream waited on, or every one of them leaves tasks behind until shutdown."""
    buyer = await committed_plan(api, "fleeting", PLAN, {"mb_1": 150_000})

    async def open_and_drop(n: int) -> None:
        stream = RawStream(api, buyer.key, f"fleeting-{n}")
        await stream.opened()
        stream.close()
        stream.call.cancel()

    await open_and_drop(0)
    before = await settled_task_count()
    for n in range(1, 21):
        await open_and_drop(n)
    assert await settled_task_count() <= before


async def test_a_backlog_commits_in_transactions_of_at_most_the_rows_set(
    database_url: str,
) -> None:
    """RECKON_GROUP_COMMIT_MAX_ROWS: eight batches of two reports read while commits are held
    commit one to a transaction with the cap at two, where they would otherwise share."""
    api = await RunningServer.start(database_url, group_commit_max_rows=2)
    try:
        buyer = await committed_plan(api, "capped", PLAN, {"mb_1": 150_000})
        stream = RawStream(api, buyer.key, "capped-1")
        await stream.opened()
        before = api.server.committer.batches
        async with stream_commits_held(api.database_url):
            for seq, day in enumerate(range(15, 31, 2), 1):
                stream.send(seq, [report(PLAN, "mb_1", day, M), report(PLAN, "mb_1", day + 1, M)])
            await until(lambda: api.server.delivery.uncommitted_batches == 8)
        acks = [await stream.ack() for _ in range(8)]
        assert [a.disposition for a in acks] == [pb.BATCH_DISPOSITION_COMMITTED] * 8
        assert api.server.committer.batches - before == 8
        assert (await buyer.state(PLAN)).spend_micros == 16 * M
        stream.close()
    finally:
        await api.close()

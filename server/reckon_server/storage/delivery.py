"""Streamed delivery as a group-commit op.

One transaction applies batches from any number of streams: it checks each batch against its
stream's durable cursor and fencing generation, resolves plans and campaigns for all reports
at once, upserts the absolute per-period totals (refusing a report that would take its plan's
delivered spend past the limit), computes each report's findings from the exact cumulative
spend at that point, records the outcomes and advances the cursors. A batch is acknowledged
only after this transaction commits, so an ack means durable, and a cursor that advances
with its rows means a batch is never applied twice.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from reckon_server.clock import epoch_micros, from_epoch_micros
from reckon_server.domain.documents import canonical_json
from reckon_server.domain.findings import Finding
from reckon_server.domain.money import MAX_PLAN_TOTAL_MICROS, past_plan_total
from reckon_server.errors import Reason, ReckonError, Resource, internal, not_found
from reckon_server.storage.governance import NEXT_TRAIL_AT, PLAN_SPEND, add_tallies
from reckon_server.storage.schema import (
    campaigns,
    delivery_periods,
    delivery_streams,
    plan_outcomes,
    plans,
)
from reckon_server.storage.sql import BulkInsert, BulkStatement, DriverQuery, dialect_insert

log = logging.getLogger(__name__)
ACTIVE = 1
# Rows are written whole, in their tables' column order. A period not stored yet is inserted
# (many rows to a statement, where an upsert goes one at a time), one restated is upserted.
_INSERT_PERIODS = BulkInsert(delivery_periods)
_UPSERT_PERIODS = BulkInsert(
    delivery_periods, conflict_key=("governance_context", "period_start", "period_end")
)
_UPDATE_CAMPAIGNS = BulkStatement(
    lambda _: (
        sa.update(campaigns)
        .where(campaigns.c.governance_context == sa.bindparam("context"))
        .values(spend_micros=sa.bindparam("spend"), latest_period_start=sa.bindparam("latest"))
    ),
    ("spend", "latest", "context"),
)
_INSERT_OUTCOMES = BulkInsert(plan_outcomes)


class StreamReport(NamedTuple):
    """One validated report of a batch: its figures and the plan and campaign it is for.

    A tuple with times in epoch microseconds, as they are stored: batches cross to the
    writer process pickled, and a tuple of plain values is what pickles cheaply.
    """

    plan_id: str
    governance_context: str
    media_buy_id: str
    start_us: int
    end_us: int
    spend_micros: int
    impressions: int
    cpm_micros: int | None
    viewability_rate: float | None
    completion_rate: float | None


# The reads and cursor writes of every transaction, run as the driver's SQL (see
# `DriverQuery`): parameters and rows in their stored form (times in epoch microseconds).
_LOCK_CURSOR = DriverQuery(
    sa.select(delivery_streams.c.generation, delivery_streams.c.next_seq)
    .where(
        delivery_streams.c.org_id == sa.bindparam("org"),
        delivery_streams.c.stream_id == sa.bindparam("stream"),
    )
    .with_for_update()
)
_ADVANCE_CURSOR = DriverQuery(
    sa.update(delivery_streams)
    .where(
        delivery_streams.c.org_id == sa.bindparam("org"),
        delivery_streams.c.stream_id == sa.bindparam("stream"),
        delivery_streams.c.generation == sa.bindparam("held_generation"),
    )
    .values(next_seq=sa.bindparam("advanced_to"), updated_at=sa.bindparam("now"))
)
_LOCK_PLAN = DriverQuery(
    sa.select(plans.c.owner_id, plans.c.status, plans.c.plan_hash)
    .where(plans.c.org_id == sa.bindparam("org"), plans.c.plan_id == sa.bindparam("plan"))
    .with_for_update()
)
_PLAN_DOCUMENT = sa.select(plans.c.document).where(
    plans.c.org_id == sa.bindparam("org"), plans.c.plan_id == sa.bindparam("plan")
)
"""Read through Core, which decodes it, and only for a plan hash not parsed yet."""
_PLAN_SPEND = DriverQuery(PLAN_SPEND)
_NEXT_TRAIL_AT = DriverQuery(NEXT_TRAIL_AT)
_STORED_PERIODS = DriverQuery(
    sa.select(
        delivery_periods.c.governance_context,
        delivery_periods.c.period_start,
        delivery_periods.c.period_end,
        delivery_periods.c.spend_micros,
    ).where(
        sa.tuple_(
            delivery_periods.c.period_start,
            delivery_periods.c.governance_context,
            delivery_periods.c.period_end,
        ).in_(sa.bindparam("keys", expanding=True))
    )
)
_KEYS_PER_READ = 256
"""Period keys a read of stored periods names: 768 binds, within what every SQLite allows."""
# Only what ingest reads of a campaign: every transaction reads each campaign it names, and
# the rest (its channels document, above all) would be read for nothing.
_CAMPAIGNS_BY_MEDIA_BUY, _CAMPAIGNS_BY_CONTEXT = (
    DriverQuery(
        sa.select(
            campaigns.c.governance_context,
            campaigns.c.media_buy_id,
            campaigns.c.purchase_type,
            campaigns.c.committed_micros,
            campaigns.c.settled,
            campaigns.c.spend_micros,
            campaigns.c.flight_start,
            campaigns.c.flight_end,
            campaigns.c.latest_period_start,
        ).where(
            campaigns.c.org_id == sa.bindparam("org"),
            campaigns.c.plan_id == sa.bindparam("plan"),
            name.in_(sa.bindparam("names", expanding=True)),
        )
    )
    for name in (campaigns.c.media_buy_id, campaigns.c.governance_context)
)


class _Campaign(NamedTuple):
    """What ingest reads of a campaign."""

    governance_context: str
    media_buy_id: str | None
    purchase_type: int
    committed_micros: int
    settled: bool
    spend_micros: int
    flight_start: datetime | None
    flight_end: datetime | None
    latest_period_start: int | None

    @classmethod
    def stored(cls, row: Sequence[Any]) -> _Campaign:
        context, media_buy_id, purchase_type, committed, settled, spend, start, end, latest = row
        return cls(
            context,
            media_buy_id,
            purchase_type,
            committed,
            bool(settled),
            spend,
            None if start is None else from_epoch_micros(start),
            None if end is None else from_epoch_micros(end),
            latest,
        )


@dataclass(frozen=True)
class StreamBatch:
    org_id: str
    principal_id: str
    stream_id: str
    generation: int
    seq: int
    reports: Sequence[StreamReport | ReckonError]
    """Reports that failed validation are carried as their error, in batch order."""
    now: datetime

    def __reduce__(self) -> tuple[Any, ...]:
        # Reports cross to the SQLite writer process as plain tuples: pickle calls back into
        # Python for every named tuple, which was most of what pickling a batch cost.
        reports = [tuple(r) if type(r) is StreamReport else r for r in self.reports]
        fields = (self.org_id, self.principal_id, self.stream_id, self.generation, self.seq)
        return (_unpickled_batch, ((*fields, self.now), reports))


def _unpickled_batch(
    fields: tuple[str, str, str, int, int, datetime], reports: list[tuple[Any, ...] | ReckonError]
) -> StreamBatch:
    org_id, principal_id, stream_id, generation, seq, now = fields
    # tuple.__new__, which `StreamReport._make` calls, without _make's Python frame.
    return StreamBatch(
        org_id,
        principal_id,
        stream_id,
        generation,
        seq,
        [tuple.__new__(StreamReport, r) if isinstance(r, tuple) else r for r in reports],
        now,
    )


@dataclass(frozen=True)
class CampaignFacts:
    """What the findings of a report need to know about its campaign and plan."""

    currency: str
    committed_micros: int
    settled: bool
    flight_start: datetime | None
    flight_end: datetime | None
    plan_flight_start: datetime
    plan_flight_end: datetime


@dataclass
class BatchApplied:
    """What a batch's transaction did, as it crosses back from the writer process pickled:
    plain ids and text already made for the rows, which pickle cheaply (finding objects cost
    more to pickle than to compute, and an (id, findings) pair per report four times a bare
    id)."""

    results: list[str | ReckonError]
    """Per report, in batch order: its outcome id, or why it was refused."""
    findings: dict[int, str] = field(default_factory=dict)
    """The findings of the reports that have any, by index in `results`, as stored in their
    outcomes' response documents."""
    touched_plans: set[str] = field(default_factory=set)


ReportRules = Callable[[StreamReport, int], list[Finding]]
"""(report, its campaign's cumulative spend after it) -> findings."""
RulesOf = Callable[[CampaignFacts], ReportRules]
"""The findings rules of one campaign's reports."""
TermsOf = Callable[[dict[str, Any]], Any]


def outcome_ids(now: datetime, count: int) -> list[str]:
    """`count` new outcome ids: `out_`, the time in milliseconds, then 48 random bits.

    Ids that grow with time land at the end of the primary-key index instead of at random
    pages all over it, which as the table grows is most of what an insert costs.
    """
    prefix = f"out_{epoch_micros(now) // 1000:012x}"
    random_hex = secrets.token_hex(6 * count)
    return [prefix + random_hex[i : i + 12] for i in range(0, 12 * count, 12)]


def fenced(stream_id: str) -> ReckonError:
    return ReckonError(
        Reason.STREAM_FENCED,
        "a newer connection took over this delivery stream",
        {"stream_id": stream_id[:128]},
        precondition=("STREAM_GENERATION", stream_id[:128]),
    )


def sequence_gap(expected: int, received: int) -> ReckonError:
    return ReckonError(
        Reason.SEQUENCE_GAP,
        f"batch seq {received} skips ahead; expected {expected}",
        {"expected_seq": str(expected), "received_seq": str(received)},
    )


async def open_stream(
    conn: AsyncConnection, org_id: str, principal_id: str, stream_id: str, now: datetime
) -> tuple[int, int] | None:
    """Take over a stream: its generation is raised (fencing every older connection) and its
    next sequence number returned. None when another principal owns the stream id."""
    statement = dialect_insert(conn.dialect.name, delivery_streams).values(
        org_id=org_id,
        stream_id=stream_id,
        principal_id=principal_id,
        generation=1,
        next_seq=1,
        updated_at=now,
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["org_id", "stream_id"],
            set_={"generation": delivery_streams.c.generation + 1, "updated_at": now},
            # Another principal's attempt is refused below and must not fence the owner.
            where=delivery_streams.c.principal_id == principal_id,
        )
    )
    # Any: compiled (see `native`), a value typed as a Row is checked to be a tuple, which a
    # Row is not.
    stored: Any = await conn.execute(
        sa.select(
            delivery_streams.c.principal_id,
            delivery_streams.c.generation,
            delivery_streams.c.next_seq,
        ).where(delivery_streams.c.org_id == org_id, delivery_streams.c.stream_id == stream_id)
    )
    principal, generation, next_seq = stored.one()
    if principal != principal_id:
        return None
    return int(generation), int(next_seq)


async def stream_generations(
    conn: AsyncConnection, streams: Collection[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """The stored generation of each of these (org, stream id)."""
    if not streams:
        return {}
    rows: Any = await conn.execute(  # Any: see open_stream
        sa.select(
            delivery_streams.c.org_id, delivery_streams.c.stream_id, delivery_streams.c.generation
        ).where(sa.tuple_(delivery_streams.c.org_id, delivery_streams.c.stream_id).in_(streams))
    )
    return {(row.org_id, row.stream_id): int(row.generation) for row in rows}


class ApplyDeliveryBatches:
    """The group-commit op for StreamDelivery batches."""

    pipelined = True

    def __init__(self, rules_of: RulesOf, terms_of: TermsOf) -> None:
        self._rules_of = rules_of
        self._terms_of = terms_of

    def __reduce__(self) -> tuple[Any, ...]:
        # Compiled (see `native`), a class is unpickled by calling it, with these arguments.
        return (ApplyDeliveryBatches, (self._rules_of, self._terms_of))

    def apply(
        self, conn: sa.Connection, batches: Sequence[StreamBatch]
    ) -> list[BatchApplied | ReckonError]:
        results: list[BatchApplied | ReckonError | None] = [None] * len(batches)
        cursors = self._cursors(conn, batches)
        accepted: list[int] = []
        for index, batch in enumerate(batches):
            cursor = cursors.get((batch.org_id, batch.stream_id))
            if cursor is None or cursor[0] != batch.generation:
                results[index] = fenced(batch.stream_id)
            elif batch.seq != cursor[1]:
                results[index] = sequence_gap(cursor[1], batch.seq)
            else:
                cursor[1] += 1
                accepted.append(index)
        applied = self._apply_reports(conn, [batches[i] for i in accepted])
        for index, outcome in zip(accepted, applied, strict=True):
            results[index] = outcome
        for (org_id, stream_id), (generation, next_seq) in cursors.items():
            _ADVANCE_CURSOR.rows(
                conn,
                org=org_id,
                stream=stream_id,
                held_generation=generation,
                advanced_to=next_seq,
                now=epoch_micros(batches[0].now),
            )
        return [r for r in results if r is not None]

    def _cursors(
        self, conn: sa.Connection, batches: Sequence[StreamBatch]
    ) -> dict[tuple[str, str], list[int]]:
        keys = sorted({(b.org_id, b.stream_id) for b in batches})
        cursors: dict[tuple[str, str], list[int]] = {}
        for org_id, stream_id in keys:
            for generation, next_seq in _LOCK_CURSOR.rows(conn, org=org_id, stream=stream_id):
                cursors[(org_id, stream_id)] = [int(generation), int(next_seq)]
        return cursors

    def _apply_reports(
        self, conn: sa.Connection, batches: Sequence[StreamBatch]
    ) -> list[BatchApplied]:
        # The one pass over every report before the main loop: which campaigns they name.
        named = {
            (b.org_id, r.plan_id, r.media_buy_id, r.governance_context)
            for b in batches
            for r in b.reports
            if isinstance(r, StreamReport)
        }
        plans: dict[tuple[str, str], _Plan] = {}
        # Each plan's outcomes of this transaction are timed one microsecond apart in report
        # order, from a block as long as the transaction's reports.
        latest_us = max((epoch_micros(b.now) for b in batches), default=0)
        count = sum(len(b.reports) for b in batches)
        for org_id, plan_id in sorted({(org_id, plan_id) for org_id, plan_id, _, _ in named}):
            for owner_id, status, plan_hash in _LOCK_PLAN.rows(conn, org=org_id, plan=plan_id):
                [(delivered,)] = _PLAN_SPEND.rows(conn, org=org_id, plan=plan_id)
                [(last,)] = _NEXT_TRAIL_AT.rows(
                    conn, org=org_id, plan=plan_id, now=latest_us, count=count
                )
                plans[(org_id, plan_id)] = _Plan(
                    owner_id,
                    status,
                    plan_hash,
                    _terms(self._terms_of, conn, org_id, plan_id, plan_hash),
                    int(delivered),
                    int(last) - count + 1,
                )
        campaign_rows = self._campaigns(conn, named, plans)
        lookups = _Lookups(plans, campaign_rows, self._rules_of)
        # Stored periods, so that each report's change to its campaign's spend is exact.
        periods = _stored_periods(conn, batches, campaign_rows)

        new_periods: list[tuple[Any, ...]] = []
        restated_periods: list[tuple[Any, ...]] = []
        outcome_rows: list[tuple[Any, ...]] = []
        applied: list[BatchApplied] = []
        # Any: compiled (see `native`), an int local is unboxed, and every row or key it then
        # goes into would box it again, as an object of its own.
        now_us: Any
        start_us: Any
        end_us: Any
        spend: Any
        impressions: Any
        for batch in batches:
            org_id, now_us = batch.org_id, epoch_micros(batch.now)
            new_ids = iter(outcome_ids(batch.now, len(batch.reports)))
            done = BatchApplied([])
            results = done.results
            # A batch's reports name few campaigns: each is resolved and checked once.
            targets: dict[tuple[str, str, str], _Target | ReckonError] = {}
            for report in batch.reports:
                # Each check names the type nearly every report has: compiled, an isinstance
                # that fails walks the object's type, one that matches compares a pointer.
                if not isinstance(report, StreamReport):
                    results.append(report)
                    continue
                # Unpacked once: this loop runs for every streamed report.
                (
                    plan_id,
                    named_context,
                    media_buy_id,
                    start_us,
                    end_us,
                    spend,
                    impressions,
                    cpm,
                    viewability,
                    completion,
                ) = report
                key = (plan_id, media_buy_id, named_context)
                target = targets.get(key)
                if target is None:
                    target = targets[key] = lookups.target(batch, report)
                    if isinstance(target, _Target):
                        done.touched_plans.add(plan_id)
                if not isinstance(target, _Target):
                    results.append(target)
                    continue
                context = target.governance_context
                period = (context, start_us, end_us)
                previous = periods.get(period)
                change = spend if previous is None else spend - previous
                plan = target.plan
                if plan.spend + change > MAX_PLAN_TOTAL_MICROS:
                    # One result per report so far: its count is this report's index.
                    path = f"reports[{len(results)}].delivery.spend_micros"
                    results.append(past_plan_total(path, "delivered spend"))
                    continue
                total = target.spend + change
                try:
                    findings = target.findings(report, total)
                    document = _findings_json(findings) if findings else None
                except Exception:
                    # A fault in the rules fails this report alone: raised, it would fail
                    # every batch of the transaction, each retried into the same fault.
                    where = f"reports[{len(results)}] of batch {batch.seq}"
                    failed = f"findings rules failed on {where} of stream {batch.stream_id!r}"
                    results.append(internal(log, failed))
                    continue
                plan.spend += change
                target.spend = total
                target.outcomes_added += 1
                target.findings_added += len(findings)
                periods[period] = spend
                outcome_id = next(new_ids)
                row = (
                    context,
                    start_us,
                    end_us,
                    org_id,
                    plan_id,
                    spend,
                    impressions,
                    cpm,
                    viewability,
                    completion,
                    outcome_id,
                    now_us,
                )
                if previous is None:
                    new_periods.append(row)
                    latest = target.latest_period_start
                    if latest is None or start_us > latest:
                        target.latest_period_start = start_us
                else:
                    restated_periods.append(row)
                outcome_rows.append(
                    (
                        outcome_id,
                        org_id,
                        plan_id,
                        None,
                        context,
                        target.purchase_type,
                        3,
                        2 if findings else 1,
                        None,
                        len(findings),
                        document or _NO_FINDINGS,
                        plan.plan_hash,
                        plan.trail_at,
                    )
                )
                plan.trail_at += 1
                if document:
                    done.findings[len(results)] = document
                results.append(outcome_id)
            applied.append(done)
        # A period inserted here and then restated is upserted after its insert.
        _INSERT_PERIODS.write(conn, new_periods)
        _UPSERT_PERIODS.write(conn, restated_periods)
        _INSERT_OUTCOMES.write(conn, outcome_rows)
        # A campaign is looked up only for a report that is then applied to it.
        _UPDATE_CAMPAIGNS.write(
            conn,
            [
                (target.spend, target.latest_period_start, context)
                for context, target in sorted(lookups.by_context.items())
            ],
        )
        add_tallies(
            conn,
            [
                (*target.tally_key, target.outcomes_added, target.findings_added)
                for target in lookups.by_context.values()
                if target.outcomes_added
            ],
        )
        return applied

    def _campaigns(
        self,
        conn: sa.Connection,
        named: set[tuple[str, str, str, str]],
        plans: dict[tuple[str, str], _Plan],
    ) -> dict[tuple[str, str, str], _Campaign]:
        """The campaigns named by (org, plan, media buy, governance context) that exist."""
        by_media: dict[tuple[str, str], set[str]] = {}
        by_context: dict[tuple[str, str], set[str]] = {}
        for org_id, plan_id, media_buy_id, context in named:
            if (org_id, plan_id) in plans:
                if media_buy_id:
                    by_media.setdefault((org_id, plan_id), set()).add(media_buy_id)
                else:
                    by_context.setdefault((org_id, plan_id), set()).add(context)
        found: dict[tuple[str, str, str], _Campaign] = {}
        for (org_id, plan_id), names in by_media.items():
            for row in _CAMPAIGNS_BY_MEDIA_BUY.rows(
                conn, org=org_id, plan=plan_id, names=sorted(names)
            ):
                campaign = _Campaign.stored(row)
                found[(org_id, plan_id, f"m:{campaign.media_buy_id}")] = campaign
        for (org_id, plan_id), names in by_context.items():
            for row in _CAMPAIGNS_BY_CONTEXT.rows(
                conn, org=org_id, plan=plan_id, names=sorted(names)
            ):
                campaign = _Campaign.stored(row)
                found[(org_id, plan_id, f"g:{campaign.governance_context}")] = campaign
        return found


@dataclass(slots=True)
class _Plan:
    """A plan that a transaction's reports name, as read under its lock (copied off its row,
    whose columns cost several times a plain attribute to read, on a path that runs for every
    report), and its running figures: its delivered spend and the trail time of its next
    outcome, up to the report at hand."""

    owner_id: str
    status: int
    plan_hash: str
    terms: Any
    spend: int
    trail_at: int


@dataclass(slots=True)
class _Target:
    """The campaign a report lands in: its rules, what its outcome rows copy, its delivered
    spend up to the report at hand, and the outcomes and findings this transaction adds to
    its tally."""

    governance_context: str
    plan: _Plan
    findings: ReportRules
    purchase_type: int
    spend: int
    latest_period_start: int | None
    tally_key: tuple[str, str, str, int]
    """Its plan's tally of outcomes of its governed action and purchase type."""
    outcomes_added: int = 0
    findings_added: int = 0


@dataclass
class _Lookups:
    """What one transaction read about the plans and campaigns its reports name."""

    plans: dict[tuple[str, str], _Plan]
    campaign_rows: dict[tuple[str, str, str], _Campaign]
    rules_of: RulesOf
    by_context: dict[str, _Target] = field(default_factory=dict)

    def target(self, batch: StreamBatch, report: StreamReport) -> _Target | ReckonError:
        """The campaign a report is for, or why the report is refused."""
        plan = self.plans.get((batch.org_id, report.plan_id))
        if plan is None or plan.owner_id != batch.principal_id:
            return not_found(Reason.PLAN_NOT_FOUND, "plan", report.plan_id, "plan_id")
        if plan.status != ACTIVE:
            return ReckonError(
                Reason.CAMPAIGN_SUSPENDED,
                f"plan {report.plan_id} is not active",
                {"plan_id": report.plan_id},
                precondition=("PLAN_STATUS", report.plan_id),
            )
        campaign = self.campaign_rows.get(_campaign_key(batch.org_id, report))
        if campaign is None:
            return _missing_campaign(report)
        context = campaign.governance_context
        target = self.by_context.get(context)
        if target is None:
            terms = plan.terms
            facts = CampaignFacts(
                terms.currency,
                campaign.committed_micros,
                campaign.settled,
                campaign.flight_start,
                campaign.flight_end,
                terms.flight_start,
                terms.flight_end,
            )
            target = self.by_context[context] = _Target(
                context,
                plan,
                self.rules_of(facts),
                campaign.purchase_type,
                int(campaign.spend_micros),
                campaign.latest_period_start,
                (batch.org_id, report.plan_id, context, campaign.purchase_type),
            )
        return target


def _terms(
    terms_of: TermsOf, conn: sa.Connection, org_id: str, plan_id: str, plan_hash: str
) -> Any:
    """The terms of a plan, read and parsed from its document once per plan hash (the hash
    is that of the document) while the process lives: every transaction reads its plans, and
    parsing a document took as long as the plan's three statements together."""
    key = (terms_of, plan_hash)
    terms = _terms_by_hash.get(key)
    if terms is None:
        if len(_terms_by_hash) >= _TERMS_KEPT:
            _terms_by_hash.clear()
        document = conn.execute(_PLAN_DOCUMENT, {"org": org_id, "plan": plan_id}).scalar_one()
        terms = _terms_by_hash[key] = terms_of(document)
    return terms


_TERMS_KEPT = 1024
_terms_by_hash: dict[tuple[TermsOf, str], Any] = {}


def _stored_periods(
    conn: sa.Connection,
    batches: Sequence[StreamBatch],
    campaign_rows: dict[tuple[str, str, str], _Campaign],
) -> dict[tuple[str, int, int], int]:
    """The spend of each stored period that a report of `batches` names, by (governance
    context, start, end).

    Only a report that starts no later than its campaign's latest stored period can name
    one, and a live stream's reports start later: a transaction of them reads nothing. The
    rest are looked up by their whole key, which costs what they number, however many other
    campaigns report over the same hours.
    """
    newest = max(
        (
            c.latest_period_start
            for c in campaign_rows.values()
            if c.latest_period_start is not None
        ),
        default=None,
    )
    if newest is None or all(
        r.start_us > newest for b in batches for r in b.reports if isinstance(r, StreamReport)
    ):
        return {}
    keys: set[tuple[int, str, int]] = set()
    for batch in batches:
        for report in batch.reports:
            if not isinstance(report, StreamReport):
                continue
            campaign = campaign_rows.get(_campaign_key(batch.org_id, report))
            if campaign is None or campaign.latest_period_start is None:
                continue
            if report.start_us <= campaign.latest_period_start:
                keys.add((report.start_us, campaign.governance_context, report.end_us))
    periods: dict[tuple[str, int, int], int] = {}
    ordered = sorted(keys)
    for first in range(0, len(ordered), _KEYS_PER_READ):
        chunk = ordered[first : first + _KEYS_PER_READ]
        for context, start, end, spend in _STORED_PERIODS.rows(conn, keys=chunk):
            periods[(context, int(start), int(end))] = int(spend)
    return periods


def _campaign_key(org_id: str, report: StreamReport) -> tuple[str, str, str]:
    if report.media_buy_id:
        return (org_id, report.plan_id, "m:" + report.media_buy_id)
    return (org_id, report.plan_id, "g:" + report.governance_context)


def _missing_campaign(report: StreamReport) -> ReckonError:
    if report.media_buy_id:
        return not_found(
            Reason.MEDIA_BUY_NOT_FOUND, "media buy", report.media_buy_id, "media_buy_id"
        )
    return ReckonError(
        Reason.CAMPAIGN_NOT_FOUND,
        f"no campaign with this governance_context in plan {report.plan_id!r}",
        {"plan_id": report.plan_id},
        resource=Resource("campaign", report.governance_context[:64]),
    )


_NO_FINDINGS = canonical_json({"findings": []})


def _findings_json(findings: Sequence[Finding]) -> str:
    """The findings document of one streamed report: orjson writes it in a tenth of the time
    `canonical_json` takes, on a path that runs for every report with a finding. The text is
    the same (sorted keys, no spaces) but for how an exponent is spelled (1e-7, not 1e-07);
    the document is stored to be read back, never hashed."""
    document = {"findings": [f.document() for f in findings]}
    try:
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        # An integer past 64 bits (the pacing of a sliver of budget against a huge spend),
        # which orjson refuses.
        return canonical_json(document)

"""Plans, campaigns, checks, outcomes and delivery periods."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from reckon_server.clock import epoch_micros, from_epoch_micros
from reckon_server.storage.schema import (
    campaigns,
    check_tallies,
    checks,
    delivery_periods,
    idempotency,
    outcome_tallies,
    plan_outcomes,
    plans,
)
from reckon_server.storage.sql import BulkStatement, dialect_insert, first_or_none, insert


@dataclass(frozen=True)
class StoredPlan:
    org_id: str
    plan_id: str
    owner_id: str
    status: int
    version: int
    currency: str
    total_micros: int
    committed_micros: int
    document: dict[str, Any]
    plan_hash: str
    updated_at: datetime


@dataclass(frozen=True)
class StoredCampaign:
    governance_context: str
    plan_id: str
    purchase_type: int
    status: int
    media_buy_id: str | None
    seller: str | None
    committed_micros: int
    settled: bool
    flight_start: datetime | None
    flight_end: datetime | None
    channels: list[str]
    created_at: datetime


@dataclass(frozen=True)
class StoredCheck:
    check_id: str
    plan_id: str
    governance_context: str
    purchase_type: int
    phase: int
    check_type: int
    decision: int
    amount_micros: int
    reserves: bool
    expires_at: datetime | None
    settled_by: str | None
    superseded: bool
    findings_count: int
    request: dict[str, Any]
    response: dict[str, Any]
    plan_hash: str
    created_at: datetime


def _plan(row: sa.Row[Any]) -> StoredPlan:
    return StoredPlan(
        row.org_id,
        row.plan_id,
        row.owner_id,
        row.status,
        row.version,
        row.currency,
        row.total_micros,
        row.committed_micros,
        row.document,
        row.plan_hash,
        row.updated_at,
    )


def _campaign(row: sa.Row[Any]) -> StoredCampaign:
    return StoredCampaign(
        row.governance_context,
        row.plan_id,
        row.purchase_type,
        row.status,
        row.media_buy_id,
        row.seller,
        row.committed_micros,
        row.settled,
        row.flight_start,
        row.flight_end,
        row.channels,
        row.created_at,
    )


def _check(row: sa.Row[Any]) -> StoredCheck:
    return StoredCheck(
        row.check_id,
        row.plan_id,
        row.governance_context,
        row.purchase_type,
        row.phase,
        row.check_type,
        row.decision,
        row.amount_micros,
        row.reserves,
        row.expires_at,
        row.settled_by,
        row.superseded,
        row.findings_count,
        row.request,
        row.response,
        row.plan_hash,
        row.created_at,
    )


async def lock_plan(conn: AsyncConnection, org_id: str, plan_id: str) -> StoredPlan | None:
    """The plan, row-locked for the rest of the transaction (PostgreSQL; SQLite's writer is
    already exclusive): every budget change of a plan is serialised here."""
    return await first_or_none(
        conn,
        sa.select(plans)
        .where(plans.c.org_id == org_id, plans.c.plan_id == plan_id)
        .with_for_update(),
        _plan,
    )


NEXT_TRAIL_AT = sa.text(
    "UPDATE plans SET trail_at = "
    "CASE WHEN trail_at < :now THEN :now ELSE trail_at + 1 END + :count - 1 "
    "WHERE org_id = :org AND plan_id = :plan RETURNING trail_at"
)
"""Times (epoch microseconds) for `count` checks and outcomes a transaction adds to a plan's
trail, run with the plan locked: from now on, unless that is not after the plan's latest
entry. Returns the last of the `count` times; they are one microsecond apart.

Watchers and audit pages read a trail after the (time, id) of its last entry they saw. Times
taken before the plan's lock, or by replicas whose clocks differ, can commit out of order, and
an entry that becomes visible behind that position is never seen. Times taken under the lock
and never before the last ones follow the order in which the plan's transactions commit."""


async def trail_end(conn: AsyncConnection, org_id: str, plan_id: str) -> datetime:
    """A time after every check and outcome of the plan committed so far: later ones are
    timed after the plan's `trail_at` (see `NEXT_TRAIL_AT`), whatever a replica's clock."""
    trail_at = await conn.scalar(
        sa.select(plans.c.trail_at).where(plans.c.org_id == org_id, plans.c.plan_id == plan_id)
    )
    return from_epoch_micros((trail_at or 0) + 1)


async def trail_time(conn: AsyncConnection, org_id: str, plan_id: str, now: datetime) -> datetime:
    """The time of one entry a transaction adds to a plan's trail (see `NEXT_TRAIL_AT`)."""
    at = await conn.execute(
        NEXT_TRAIL_AT, {"org": org_id, "plan": plan_id, "now": epoch_micros(now), "count": 1}
    )
    return from_epoch_micros(int(at.scalar_one()))


async def get_plan(conn: AsyncConnection, org_id: str, plan_id: str) -> StoredPlan | None:
    return await first_or_none(
        conn,
        sa.select(plans).where(plans.c.org_id == org_id, plans.c.plan_id == plan_id),
        _plan,
    )


async def insert_plan(conn: AsyncConnection, plan: StoredPlan, now: datetime) -> None:
    await conn.execute(
        sa.insert(plans).values(
            org_id=plan.org_id,
            plan_id=plan.plan_id,
            owner_id=plan.owner_id,
            status=plan.status,
            version=plan.version,
            currency=plan.currency,
            total_micros=plan.total_micros,
            committed_micros=0,
            document=plan.document,
            plan_hash=plan.plan_hash,
            created_at=now,
            updated_at=now,
        )
    )


async def update_plan(conn: AsyncConnection, org_id: str, plan_id: str, **values: Any) -> None:
    await conn.execute(
        sa.update(plans)
        .where(plans.c.org_id == org_id, plans.c.plan_id == plan_id)
        .values(**values)
    )


async def campaign(
    conn: AsyncConnection, org_id: str, plan_id: str, governance_context: str
) -> StoredCampaign | None:
    return await first_or_none(
        conn,
        sa.select(campaigns).where(
            campaigns.c.governance_context == governance_context,
            campaigns.c.org_id == org_id,
            campaigns.c.plan_id == plan_id,
        ),
        _campaign,
    )


async def campaign_by_media_buy(
    conn: AsyncConnection, org_id: str, plan_id: str, media_buy_id: str
) -> StoredCampaign | None:
    return await first_or_none(
        conn,
        sa.select(campaigns).where(
            campaigns.c.org_id == org_id,
            campaigns.c.plan_id == plan_id,
            campaigns.c.media_buy_id == media_buy_id,
        ),
        _campaign,
    )


async def campaign_plan(conn: AsyncConnection, org_id: str, governance_context: str) -> str | None:
    found = await conn.scalar(
        sa.select(campaigns.c.plan_id).where(
            campaigns.c.org_id == org_id, campaigns.c.governance_context == governance_context
        )
    )
    return None if found is None else str(found)


async def plan_campaigns(conn: AsyncConnection, org_id: str, plan_id: str) -> list[StoredCampaign]:
    rows = await conn.execute(
        sa.select(campaigns)
        .where(campaigns.c.org_id == org_id, campaigns.c.plan_id == plan_id)
        .order_by(campaigns.c.created_at, campaigns.c.governance_context)
    )
    return [_campaign(r) for r in rows]


async def insert_campaign(conn: AsyncConnection, org_id: str, campaign_row: StoredCampaign) -> None:
    await conn.execute(
        sa.insert(campaigns).values(
            governance_context=campaign_row.governance_context,
            org_id=org_id,
            plan_id=campaign_row.plan_id,
            purchase_type=campaign_row.purchase_type,
            status=campaign_row.status,
            media_buy_id=campaign_row.media_buy_id,
            seller=campaign_row.seller,
            committed_micros=campaign_row.committed_micros,
            settled=campaign_row.settled,
            flight_start=campaign_row.flight_start,
            flight_end=campaign_row.flight_end,
            channels=campaign_row.channels,
            created_at=campaign_row.created_at,
        )
    )


async def update_campaign(conn: AsyncConnection, governance_context: str, **values: Any) -> None:
    await conn.execute(
        sa.update(campaigns)
        .where(campaigns.c.governance_context == governance_context)
        .values(**values)
    )


def _active(now: datetime) -> Any:
    """Checks whose amount is reserved right now."""
    return sa.and_(
        checks.c.reserves.is_(True),
        checks.c.settled_by.is_(None),
        checks.c.superseded.is_(False),
        checks.c.expires_at > now,
    )


async def reservations(
    conn: AsyncConnection, org_id: str, plan_id: str, now: datetime
) -> dict[str, int]:
    """Reserved micros per campaign (governance_context)."""
    rows = await conn.execute(
        sa.select(checks.c.governance_context, sa.func.sum(checks.c.amount_micros))
        .where(checks.c.org_id == org_id, checks.c.plan_id == plan_id, _active(now))
        .group_by(checks.c.governance_context)
    )
    return {context: int(total or 0) for context, total in rows}


async def insert_check(
    conn: AsyncConnection, org_id: str, principal_id: str, stored: StoredCheck
) -> None:
    await conn.execute(
        sa.insert(checks).values(
            check_id=stored.check_id,
            org_id=org_id,
            plan_id=stored.plan_id,
            governance_context=stored.governance_context,
            principal_id=principal_id,
            purchase_type=stored.purchase_type,
            phase=stored.phase,
            check_type=stored.check_type,
            decision=stored.decision,
            amount_micros=stored.amount_micros,
            reserves=stored.reserves,
            expires_at=stored.expires_at,
            settled_by=None,
            superseded=False,
            findings_count=stored.findings_count,
            request=stored.request,
            response=stored.response,
            plan_hash=stored.plan_hash,
            created_at=stored.created_at,
        )
    )
    tally = (
        org_id,
        stored.plan_id,
        stored.governance_context,
        stored.purchase_type,
        stored.decision,
        1,
        stored.findings_count,
    )
    await conn.run_sync(_ADD_TO_CHECK_TALLIES.write, [tally])


async def supersede_checks(
    conn: AsyncConnection, governance_context: str, keep_check_id: str | None
) -> None:
    """End the reservations of a campaign's other unsettled checks."""
    query = sa.update(checks).where(
        checks.c.governance_context == governance_context, checks.c.settled_by.is_(None)
    )
    if keep_check_id is not None:
        query = query.where(checks.c.check_id != keep_check_id)
    await conn.execute(query.values(superseded=True))


async def get_check(
    conn: AsyncConnection, org_id: str, plan_id: str, check_id: str
) -> StoredCheck | None:
    return await first_or_none(
        conn,
        sa.select(checks).where(
            checks.c.check_id == check_id,
            checks.c.org_id == org_id,
            checks.c.plan_id == plan_id,
        ),
        _check,
    )


async def latest_approved_check(
    conn: AsyncConnection, governance_context: str
) -> StoredCheck | None:
    return await first_or_none(
        conn,
        sa.select(checks)
        .where(checks.c.governance_context == governance_context, checks.c.decision == 1)
        .order_by(checks.c.created_at.desc())
        .limit(1),
        _check,
    )


async def settle_check(conn: AsyncConnection, check_id: str, outcome_id: str) -> bool:
    """Settle a check once; False when it was already settled."""
    result = await conn.execute(
        sa.update(checks)
        .where(checks.c.check_id == check_id, checks.c.settled_by.is_(None))
        .values(settled_by=outcome_id)
    )
    return result.rowcount == 1


async def insert_outcome(conn: AsyncConnection, **values: Any) -> None:
    await conn.execute(sa.insert(plan_outcomes).values(**values))
    tally = (*(values[c] for c in _TALLY_KEY), 1, values["findings_count"])
    await conn.run_sync(add_tallies, [tally])


def add_tallies(conn: sa.Connection, tallies: Sequence[tuple[Any, ...]]) -> None:
    """Add outcomes to their plans' tallies, in the transaction that inserts them: rows of
    (org, plan, governance context, purchase type, outcomes, findings). Every such
    transaction holds the plan's row lock, so on PostgreSQL writers of one plan's tallies
    take turns rather than wait on each other in a cycle."""
    _ADD_TO_TALLIES.write(conn, tallies)


_TALLY_KEY = ("org_id", "plan_id", "governance_context", "purchase_type")


def _adding_to(tallies: sa.Table) -> BulkStatement:
    """An upsert of whole rows of `tallies` that adds their counts to those already stored
    under the same key (the primary key)."""
    columns = tuple(tallies.columns.keys())
    key = [c.name for c in tallies.primary_key]

    def build(dialect_name: str) -> sa.ClauseElement:
        statement = dialect_insert(dialect_name, tallies).values(
            {c: sa.bindparam(c) for c in columns}
        )
        return statement.on_conflict_do_update(
            index_elements=key,
            set_={c.name: c + statement.excluded[c.name] for c in tallies.c if c.name not in key},
        )

    return BulkStatement(build, columns)


_ADD_TO_TALLIES = _adding_to(outcome_tallies)
_ADD_TO_CHECK_TALLIES = _adding_to(check_tallies)


@dataclass(frozen=True)
class AuditScope:
    """Which checks and outcomes of a plan an audit log covers: empty sets mean all."""

    governance_contexts: frozenset[str] = frozenset()
    purchase_types: frozenset[int] = frozenset()

    def keeps(self, governance_context: str, purchase_type: int) -> bool:
        return (
            not self.governance_contexts or governance_context in self.governance_contexts
        ) and (not self.purchase_types or purchase_type in self.purchase_types)

    def where(self, table: sa.Table, org_id: str, plan_id: str) -> list[sa.ColumnElement[bool]]:
        clauses = [table.c.org_id == org_id, table.c.plan_id == plan_id]
        if self.governance_contexts:
            clauses.append(table.c.governance_context.in_(sorted(self.governance_contexts)))
        if self.purchase_types:
            clauses.append(table.c.purchase_type.in_(sorted(self.purchase_types)))
        return clauses


@dataclass(frozen=True)
class AuditCounts:
    """How many checks and outcomes of a plan are within an audit scope, and their findings."""

    checks_by_decision: dict[int, int]
    outcomes: int
    findings: int

    @property
    def checks(self) -> int:
        return sum(self.checks_by_decision.values())


async def audit_counts(
    conn: AsyncConnection, org_id: str, plan_id: str, scope: AuditScope
) -> AuditCounts:
    by_decision: dict[int, int] = {}
    check_findings = 0
    for decision, count, found in await conn.execute(
        sa.select(
            check_tallies.c.decision,
            sa.func.sum(check_tallies.c.checks),
            sa.func.sum(check_tallies.c.findings),
        )
        .where(*scope.where(check_tallies, org_id, plan_id))
        .group_by(check_tallies.c.decision)
    ):
        by_decision[int(decision)] = int(count)
        check_findings += int(found)
    outcome_count, outcome_findings = (
        await conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(outcome_tallies.c.outcomes), 0),
                sa.func.coalesce(sa.func.sum(outcome_tallies.c.findings), 0),
            ).where(*scope.where(outcome_tallies, org_id, plan_id))
        )
    ).one()
    return AuditCounts(by_decision, int(outcome_count), check_findings + int(outcome_findings))


EntryPosition = tuple[datetime, str]
"""Where an audit trail continues: after the entry with this (timestamp, id)."""


TrailEntry = tuple[datetime, str, StoredCheck | sa.Row[Any]]
"""An audit-trail entry: its timestamp, its id, and the check or the outcome row."""


async def trail_after(
    conn: AsyncConnection,
    org_id: str,
    plan_id: str,
    scope: AuditScope,
    *,
    after: EntryPosition | None,
    limit: int,
) -> list[TrailEntry]:
    """Up to `limit` checks and outcomes of the plan after `after`, by (timestamp, id)."""
    check_rows = await conn.execute(
        _page(checks, checks.c.check_id, scope.where(checks, org_id, plan_id), after, limit)
    )
    outcome_rows = await conn.execute(
        _page(
            plan_outcomes,
            plan_outcomes.c.outcome_id,
            scope.where(plan_outcomes, org_id, plan_id),
            after,
            limit,
        )
    )
    entries: list[TrailEntry] = [(c.created_at, c.check_id, c) for c in map(_check, check_rows)]
    entries += [(o.created_at, o.outcome_id, o) for o in outcome_rows]
    entries.sort(key=lambda entry: entry[:2])
    return entries[:limit]


def _page(
    table: sa.Table,
    entry_id: sa.ColumnElement[str],
    where: list[sa.ColumnElement[bool]],
    after: EntryPosition | None,
    limit: int,
) -> sa.Select[Any]:
    if after is not None:
        at, last_id = after
        # The first term alone bounds an index range; the second breaks ties on equal times.
        where = [
            *where,
            table.c.created_at >= at,
            sa.or_(table.c.created_at > at, entry_id > last_id),
        ]
    return sa.select(table).where(*where).order_by(table.c.created_at, entry_id).limit(limit)


PLAN_SPEND = sa.select(sa.func.coalesce(sa.func.sum(campaigns.c.spend_micros), 0)).where(
    campaigns.c.org_id == sa.bindparam("org"), campaigns.c.plan_id == sa.bindparam("plan")
)
"""A plan's delivered spend: the sum of its campaigns'."""


async def record_delivery(
    conn: AsyncConnection,
    *,
    org_id: str,
    plan_id: str,
    governance_context: str,
    period_start: datetime,
    period_end: datetime,
    spend_micros: int,
    impressions: int,
    cpm_micros: int | None,
    viewability_rate: float | None,
    completion_rate: float | None,
    outcome_id: str,
    now: datetime,
    plan_spend_limit: int,
) -> int | None:
    """Store a period's absolute totals (replacing an earlier report of the same period) and
    return the campaign's cumulative spend; None, storing nothing, when the plan's delivered
    spend would then be past `plan_spend_limit`."""
    start, end = epoch_micros(period_start), epoch_micros(period_end)
    previous = await conn.scalar(
        sa.select(delivery_periods.c.spend_micros).where(
            delivery_periods.c.governance_context == governance_context,
            delivery_periods.c.period_start == start,
            delivery_periods.c.period_end == end,
        )
    )
    plan_spend = (await conn.execute(PLAN_SPEND, {"org": org_id, "plan": plan_id})).scalar_one()
    if plan_spend - (previous or 0) + spend_micros > plan_spend_limit:
        return None
    values = {
        "governance_context": governance_context,
        "period_start": start,
        "period_end": end,
        "org_id": org_id,
        "plan_id": plan_id,
        "spend_micros": spend_micros,
        "impressions": impressions,
        "cpm_micros": cpm_micros,
        "viewability_rate": viewability_rate,
        "completion_rate": completion_rate,
        "outcome_id": outcome_id,
        "updated_at": epoch_micros(now),
    }
    statement = insert(conn, delivery_periods).values(values)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["governance_context", "period_start", "period_end"],
            set_={
                k: statement.excluded[k]
                for k in values
                if k not in ("governance_context", "period_start", "period_end")
            },
        )
    )
    latest = campaigns.c.latest_period_start
    await conn.execute(
        sa.update(campaigns)
        .where(campaigns.c.governance_context == governance_context)
        .values(
            spend_micros=campaigns.c.spend_micros + spend_micros - (previous or 0),
            latest_period_start=sa.case(
                (sa.or_(latest.is_(None), latest < start), start), else_=latest
            ),
        )
    )
    total = await conn.scalar(
        sa.select(campaigns.c.spend_micros).where(
            campaigns.c.governance_context == governance_context
        )
    )
    return int(total or 0)


async def spend_by_campaign(conn: AsyncConnection, org_id: str, plan_id: str) -> dict[str, int]:
    rows = await conn.execute(
        sa.select(campaigns.c.governance_context, campaigns.c.spend_micros).where(
            campaigns.c.org_id == org_id, campaigns.c.plan_id == plan_id
        )
    )
    return {context: int(total) for context, total in rows}


async def check_counts(conn: AsyncConnection, org_id: str, plan_id: str) -> dict[str, int]:
    rows = await conn.execute(
        sa.select(check_tallies.c.governance_context, sa.func.sum(check_tallies.c.checks))
        .where(check_tallies.c.org_id == org_id, check_tallies.c.plan_id == plan_id)
        .group_by(check_tallies.c.governance_context)
    )
    return {context: int(count) for context, count in rows}


async def stored_response(
    conn: AsyncConnection, principal_id: str, rpc: str, key: str
) -> tuple[str, bytes] | None:
    row = (
        await conn.execute(
            sa.select(idempotency.c.request_hash, idempotency.c.response).where(
                idempotency.c.principal_id == principal_id,
                idempotency.c.rpc == rpc,
                idempotency.c.idempotency_key == key,
            )
        )
    ).first()
    return None if row is None else (row.request_hash, bytes(row.response))


async def store_response(
    conn: AsyncConnection,
    *,
    principal_id: str,
    rpc: str,
    key: str,
    request_hash: str,
    response: bytes,
    now: datetime,
) -> None:
    await conn.execute(
        sa.insert(idempotency).values(
            principal_id=principal_id,
            rpc=rpc,
            idempotency_key=key,
            request_hash=request_hash,
            response=response,
            created_at=now,
        )
    )

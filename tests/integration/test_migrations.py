"""Schema migrations on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from reckon_server.clock import epoch_micros, utcnow
from reckon_server.storage import migrate
from reckon_server.storage.database import Database
from reckon_server.storage.schema import (
    Base,
    campaigns,
    check_tallies,
    checks,
    delivery_periods,
    orgs,
    outcome_tallies,
    plan_outcomes,
    plans,
    principals,
)

T = TypeVar("T")


async def test_upgrade_creates_the_whole_schema_and_is_idempotent(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert await migrate.current_revision(database) is None
        assert await migrate.upgrade(database) == migrate.head_revision()
        assert await migrate.upgrade(database) == migrate.head_revision()
        assert await migrate.current_revision(database) == migrate.head_revision()
        async with database.read() as conn:
            tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
            columns = {
                name: await conn.run_sync(
                    lambda c, n=name: {col["name"] for col in sa.inspect(c).get_columns(n)}
                )
                for name in Base.metadata.tables
            }
    finally:
        await database.dispose()
    assert set(Base.metadata.tables) <= tables
    for name, table in Base.metadata.tables.items():
        assert {c.name for c in table.columns} == columns[name], name


OUTCOME = {
    "org_id": "org",
    "plan_id": "p",
    "check_id": None,
    "governance_context": "gc_a",
    "purchase_type": 1,
    "outcome": 3,
    "status": 1,
    "committed_micros": None,
    "findings_count": 0,
    "response": {"findings": []},
    "plan_hash": "0" * 64,
    "created_at": utcnow(),
}


CHECK = {
    "org_id": "org",
    "governance_context": "gc_a",
    "principal_id": "agent",
    "purchase_type": 1,
    "phase": 1,
    "check_type": 1,
    "decision": 1,
    "amount_micros": 0,
    "reserves": False,
    "expires_at": None,
    "settled_by": None,
    "superseded": False,
    "findings_count": 0,
    "request": {},
    "response": {},
    "plan_hash": "0" * 64,
}


async def stored_tallies(conn: AsyncConnection, tallies: sa.Table) -> set[tuple[object, ...]]:
    """Every row of a tally table, without its org (all are of org "org")."""
    return set(await conn.execute(sa.select(*(c for c in tallies.c if c.name != "org_id"))))


async def upgraded_over(
    database_url: str,
    revision: str,
    store: Callable[[AsyncConnection], Awaitable[object]],
    read: Callable[[AsyncConnection], Awaitable[T]],
) -> T:
    """What `read` finds once rows that `store` wrote on the schema of `revision` have been
    upgraded to the head revision."""
    database = Database(database_url)
    try:
        assert await migrate.upgrade(database, revision) == revision
        async with database.write() as conn:
            await store(conn)
        assert await migrate.upgrade(database) == migrate.head_revision()
        async with database.read() as conn:
            return await read(conn)
    finally:
        await database.dispose()


async def test_outcome_tallies_start_from_the_outcomes_already_stored(database_url: str) -> None:
    stored = [
        {**OUTCOME, "outcome_id": "out_1"},
        {**OUTCOME, "outcome_id": "out_2", "findings_count": 2},
        {**OUTCOME, "outcome_id": "out_3", "governance_context": "gc_b"},
        {**OUTCOME, "outcome_id": "out_4", "purchase_type": 2, "findings_count": 1},
        {**OUTCOME, "outcome_id": "out_5", "plan_id": "q"},
    ]

    async def store(conn: AsyncConnection) -> None:
        await conn.execute(sa.insert(plan_outcomes), stored)

    tallies = await upgraded_over(
        database_url, "0005", store, lambda conn: stored_tallies(conn, outcome_tallies)
    )
    assert tallies == {
        ("p", "gc_a", 1, 2, 2),
        ("p", "gc_b", 1, 1, 0),
        ("p", "gc_a", 2, 1, 1),
        ("q", "gc_a", 1, 1, 0),
    }


async def store_plans(conn: AsyncConnection, *plan_ids: str) -> None:
    """Plans of one agent of org "org", stored as an earlier revision's schema holds them."""
    now = utcnow()
    await conn.execute(sa.insert(orgs), {"org_id": "org", "name": "org", "created_at": now})
    await conn.execute(
        sa.insert(principals),
        {"principal_id": "agent", "org_id": "org", "name": "a", "role": 1, "created_at": now},
    )
    await conn.execute(
        sa.insert(plans).values(
            org_id="org",
            owner_id="agent",
            status=1,
            version=1,
            currency="USD",
            total_micros=1,
            committed_micros=0,
            document={},
            plan_hash="0" * 64,
            created_at=now,
            updated_at=now,
        ),
        [{"plan_id": p} for p in plan_ids],
    )


async def test_plans_trail_clocks_start_at_their_latest_entries(database_url: str) -> None:
    """A plan's trail clock starts at its latest check or outcome, so that entries added after
    the upgrade follow those already stored."""
    start = utcnow()
    at = [start + timedelta(seconds=n) for n in range(4)]

    async def store(conn: AsyncConnection) -> None:
        await store_plans(conn, "checked", "both", "new")
        await conn.execute(
            sa.insert(checks).values(**CHECK),
            [
                {"check_id": "chk_1", "plan_id": "checked", "created_at": at[2]},
                {"check_id": "chk_2", "plan_id": "checked", "created_at": at[1]},
                {"check_id": "chk_3", "plan_id": "both", "created_at": at[3]},
            ],
        )
        await conn.execute(
            sa.insert(plan_outcomes).values(**OUTCOME),
            [
                {"outcome_id": "out_1", "plan_id": "both", "created_at": at[1]},
                {"outcome_id": "out_2", "plan_id": "gone", "created_at": at[0]},
            ],
        )

    async def clocks_of(conn: AsyncConnection) -> dict[str, int]:
        return dict((await conn.execute(sa.select(plans.c.plan_id, plans.c.trail_at))).all())

    clocks = await upgraded_over(database_url, "0006", store, clocks_of)
    assert clocks == {"checked": epoch_micros(at[2]), "both": epoch_micros(at[3]), "new": 0}


async def test_check_tallies_start_from_the_checks_already_stored(database_url: str) -> None:
    stored = [
        {**CHECK, "check_id": "chk_1"},
        {**CHECK, "check_id": "chk_2", "findings_count": 2},
        {**CHECK, "check_id": "chk_3", "decision": 2, "findings_count": 1},
        {**CHECK, "check_id": "chk_4", "governance_context": "gc_b"},
        {**CHECK, "check_id": "chk_5", "purchase_type": 2},
        {**CHECK, "check_id": "chk_6", "plan_id": "q"},
    ]

    async def store(conn: AsyncConnection) -> None:
        await store_plans(conn, "p", "q")
        await conn.execute(sa.insert(checks).values(plan_id="p", created_at=utcnow()), stored)

    tallies = await upgraded_over(
        database_url, "0007", store, lambda conn: stored_tallies(conn, check_tallies)
    )
    assert tallies == {
        ("p", "gc_a", 1, 1, 2, 2),
        ("p", "gc_a", 1, 2, 1, 1),
        ("p", "gc_b", 1, 1, 1, 0),
        ("p", "gc_a", 2, 1, 1, 0),
        ("q", "gc_a", 1, 1, 1, 0),
    }


PERIOD = {
    "org_id": "org",
    "plan_id": "p",
    "period_end": 120,
    "spend_micros": 5_000_000,
    "impressions": 1_000,
    "cpm_micros": 5_000_000,
    "viewability_rate": 0.5,
    "completion_rate": None,
    "updated_at": 7,
}


async def periods_and_key(conn: AsyncConnection) -> tuple[list[dict[str, object]], list[str]]:
    """Every stored delivery period, by outcome id, and the table's primary key."""
    rows = await conn.execute(sa.select(delivery_periods).order_by("outcome_id"))
    key = await conn.run_sync(lambda c: sa.inspect(c).get_pk_constraint("delivery_periods"))
    return [dict(row._mapping) for row in rows], key["constrained_columns"]


async def test_delivery_periods_keep_their_rows_keyed_by_time_first(database_url: str) -> None:
    stored = [
        {**PERIOD, "governance_context": "gc_b", "period_start": 0, "period_end": 60},
        {**PERIOD, "governance_context": "gc_a", "period_start": 60, "period_end": 120},
        {**PERIOD, "governance_context": "gc_a", "period_start": 0, "period_end": 60},
    ]
    for n, row in enumerate(stored):
        row["outcome_id"] = f"out_{n}"

    async def store(conn: AsyncConnection) -> None:
        await conn.execute(sa.insert(delivery_periods), stored)

    rows, key = await upgraded_over(database_url, "0008", store, periods_and_key)
    assert rows == stored
    assert key == ["period_start", "governance_context", "period_end"]


async def test_delivery_periods_keep_their_rows_keyed_by_campaign_again(database_url: str) -> None:
    """Downgrading 0009 gives the campaign-first key back, with every row."""
    stored = [
        {**PERIOD, "governance_context": "gc_b", "period_start": 0, "outcome_id": "out_0"},
        {**PERIOD, "governance_context": "gc_a", "period_start": 60, "outcome_id": "out_1"},
    ]
    database = Database(database_url)
    try:
        await migrate.upgrade(database)
        async with database.write() as conn:
            await conn.execute(sa.insert(delivery_periods), stored)
        assert await migrate.downgrade(database, "0008") == "0008"
        async with database.read() as conn:
            rows, key = await periods_and_key(conn)
    finally:
        await database.dispose()
    assert rows == stored
    assert key == ["governance_context", "period_start", "period_end"]


async def test_campaigns_latest_periods_start_from_the_periods_already_stored(
    database_url: str,
) -> None:
    async def store(conn: AsyncConnection) -> None:
        await store_plans(conn, "p")
        await conn.execute(
            sa.insert(campaigns).values(
                org_id="org",
                plan_id="p",
                purchase_type=1,
                status=1,
                committed_micros=0,
                settled=False,
                channels=[],
                created_at=utcnow(),
            ),
            [{"governance_context": context} for context in ("gc_a", "gc_b", "gc_c")],
        )
        await conn.execute(
            sa.insert(delivery_periods),
            [
                {**PERIOD, "governance_context": "gc_a", "period_start": 60, "outcome_id": "o1"},
                {**PERIOD, "governance_context": "gc_a", "period_start": 0, "outcome_id": "o2"},
                {**PERIOD, "governance_context": "gc_b", "period_start": 0, "outcome_id": "o3"},
            ],
        )

    async def latest(conn: AsyncConnection) -> list[tuple[object, ...]]:
        query = sa.select(campaigns.c.governance_context, campaigns.c.latest_period_start)
        return [tuple(row) for row in await conn.execute(query.order_by("governance_context"))]

    assert await upgraded_over(database_url, "0009", store, latest) == [
        ("gc_a", 60),
        ("gc_b", 0),
        ("gc_c", None),
    ]


async def schema_of(conn: AsyncConnection) -> dict[str, object]:
    """Each table's columns, primary key and indexes, as the database reports them."""

    def inspect(sync_conn: sa.Connection) -> dict[str, object]:
        inspector = sa.inspect(sync_conn)
        return {
            table: (
                {(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)},
                inspector.get_pk_constraint(table)["constrained_columns"],
                {
                    (i["name"], tuple(i["column_names"]), i["unique"])
                    for i in inspector.get_indexes(table)
                },
            )
            for table in inspector.get_table_names()
        }

    return await conn.run_sync(inspect)


async def test_every_migration_downgrades_to_the_schema_before_it(database_url: str) -> None:
    """From each revision, a step down gives back the schema of the revision before, and a
    step up again the revision's own."""
    database = Database(database_url)
    try:
        await migrate.upgrade(database, "0001")
        assert await migrate.downgrade(database, "base") is None
        async with database.read() as conn:
            before = await schema_of(conn)
        assert set(before) == {"alembic_version"}
        previous = "base"
        for number in range(1, int(migrate.head_revision()) + 1):
            revision = f"{number:04d}"
            await migrate.upgrade(database, revision)
            async with database.read() as conn:
                after = await schema_of(conn)
            reached = await migrate.downgrade(database, previous)
            assert reached == (None if previous == "base" else previous)
            async with database.read() as conn:
                assert await schema_of(conn) == before, revision
            await migrate.upgrade(database, revision)
            async with database.read() as conn:
                assert await schema_of(conn) == after, revision
            before, previous = after, revision
    finally:
        await database.dispose()

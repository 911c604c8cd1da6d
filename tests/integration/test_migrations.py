"""Schema migrations on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from reckon_server.clock import utcnow
from reckon_server.storage import migrate
from reckon_server.storage.database import Database
from reckon_server.storage.schema import Base, outcome_tallies, plan_outcomes


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


async def test_outcome_tallies_start_from_the_outcomes_already_stored(database_url: str) -> None:
    database = Database(database_url)
    outcome = {
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
    stored = [
        {**outcome, "outcome_id": "out_1"},
        {**outcome, "outcome_id": "out_2", "findings_count": 2},
        {**outcome, "outcome_id": "out_3", "governance_context": "gc_b"},
        {**outcome, "outcome_id": "out_4", "purchase_type": 2, "findings_count": 1},
        {**outcome, "outcome_id": "out_5", "plan_id": "q"},
    ]
    try:
        assert await migrate.upgrade(database, "0005") == "0005"
        async with database.write() as conn:
            await conn.execute(sa.insert(plan_outcomes), stored)
        assert await migrate.upgrade(database) == migrate.head_revision()
        async with database.read() as conn:
            tallies = set(
                await conn.execute(
                    sa.select(
                        outcome_tallies.c.plan_id,
                        outcome_tallies.c.governance_context,
                        outcome_tallies.c.purchase_type,
                        outcome_tallies.c.outcomes,
                        outcome_tallies.c.findings,
                    )
                )
            )
    finally:
        await database.dispose()
    assert tallies == {
        ("p", "gc_a", 1, 2, 2),
        ("p", "gc_b", 1, 1, 0),
        ("p", "gc_a", 2, 1, 1),
        ("q", "gc_a", 1, 1, 0),
    }

"""Schema migrations on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from reckon_server.storage import migrate
from reckon_server.storage.database import Database
from reckon_server.storage.schema import Base


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

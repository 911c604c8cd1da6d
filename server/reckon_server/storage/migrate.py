"""Schema migrations, applied at server start and by `reckon db upgrade`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from reckon_server.storage.database import Database

_MIGRATIONS = Path(__file__).with_name("migrations")
# Arbitrary constant: replicas starting together take turns migrating a PostgreSQL database.
_PG_MIGRATION_LOCK = 0x7265636B6F6E


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


async def upgrade(database: Database, revision: str = "head") -> str:
    """Bring the schema to `revision` (the newest by default); returns that revision."""
    await _migrate(database, command.upgrade, revision)
    return head_revision() if revision == "head" else revision


async def downgrade(database: Database, revision: str) -> str | None:
    """Undo the migrations after `revision` ("base" undoes them all), so that a server version
    of that revision runs again; returns the revision the schema is then at."""
    try:
        await _migrate(database, command.downgrade, revision)
    except CommandError as err:  # an unknown revision, or one the schema is not past
        raise ValueError(f"cannot downgrade to {revision!r}: {err}") from err
    return await current_revision(database)


async def current_revision(database: Database) -> str | None:
    async with database.read() as conn:
        return await conn.run_sync(
            lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
        )


async def _migrate(database: Database, step: Callable[[Config, str], None], revision: str) -> None:
    async with database.engine.begin() as conn:
        if not database.is_sqlite:
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK}
            )
        await conn.run_sync(_run, step, revision)


def _run(connection: sa.Connection, step: Callable[[Config, str], None], revision: str) -> None:
    config = _config()
    config.attributes["connection"] = connection
    step(config, revision)

"""Fixtures of the storage tier."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from reckon_server.storage import migrate
from reckon_server.storage.database import Database


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A migrated database on each backend, disposed after the test."""
    db = Database(database_url)
    await migrate.upgrade(db)
    yield db
    await db.dispose()

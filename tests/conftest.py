"""Fixtures shared by every tier: storage backends and a running server per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.api import RunningServer
from tests.support.postgres import PostgresServer, start_postgres

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'reckon.db'}"
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return await postgres.create_database()


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[RunningServer]:
    """A real server on port 0 over a fresh database, with an admin key and stubs."""
    running = await RunningServer.start(database_url)
    yield running
    await running.close()
